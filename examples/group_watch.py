"""Watching a group: callbacks for members that join and leave.

    python examples/group_watch.py [URL]

A watcher registers callbacks, then calls ``run_watchers()`` now and then (a service does it
from its periodic loop); each call looks at the group and runs the callbacks for what changed
since the last one. Without a URL it uses file:// in a temporary directory.
"""


from tooz import coordination
from example_url import example_url

GROUP = b"api-workers"


def main(url):
    watcher = coordination.get_coordinator(url, b"watcher")
    watcher.start(start_heart=True)
    watcher.join_group_create(GROUP)

    def joined(event):
        print("joined:", event.member_id.decode())

    def left(event):
        print("left:", event.member_id.decode())

    watcher.watch_join_group(GROUP, joined)
    watcher.watch_leave_group(GROUP, left)
    watcher.run_watchers()  # the first look: the members already there are the baseline

    workers = []
    for name in (b"worker-1", b"worker-2"):
        worker = coordination.get_coordinator(url, name)
        worker.start(start_heart=True)
        worker.join_group(GROUP).get()
        workers.append(worker)
    print("run_watchers() after two joins:")
    watcher.run_watchers()

    workers[0].leave_group(GROUP).get()
    workers[0].stop()
    print("run_watchers() after one left:")
    watcher.run_watchers()

    print("run_watchers() with nothing new:")
    watcher.run_watchers()
    print("(nothing)")

    watcher.unwatch_join_group(GROUP, joined)
    watcher.unwatch_leave_group(GROUP, left)
    workers[1].stop()
    watcher.stop()


if __name__ == "__main__":
    with example_url() as url:
        main(url)
