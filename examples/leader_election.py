"""Leader election: one member of a group leads, another takes over when it stands down.

    python examples/leader_election.py [URL]

Each candidate registers a callback with ``watch_elected_as_leader``; ``run_watchers()`` runs
for election and calls it when this member wins. Without a URL it uses file:// in a temporary
directory.
"""


import tooz
from tooz import coordination
from example_url import example_url

GROUP = b"schedulers"


def show_leader(coordinator):
    try:
        print("leader:", coordinator.get_leader(GROUP).get().decode())
    except tooz.NotImplemented:  # redis: the elected callbacks are all there is
        pass


def main(url):
    candidates = []
    for name in (b"scheduler-a", b"scheduler-b"):
        candidate = coordination.get_coordinator(url, name)
        candidate.start(start_heart=True)
        candidate.join_group_create(GROUP)

        def elected(event):
            print("%s: elected leader of %s" % (event.member_id.decode(), event.group_id.decode()))

        candidate.watch_elected_as_leader(GROUP, elected)
        candidates.append((candidate, elected))

    (first, first_callback), (second, _) = candidates
    first.run_watchers()   # a stands first and wins
    second.run_watchers()  # b stands too, and waits its turn
    show_leader(second)

    first.unwatch_elected_as_leader(GROUP, first_callback)
    try:
        first.stand_down_group_leader(GROUP)
        print("scheduler-a stood down")
    except tooz.NotImplemented:  # redis, memcached: a leader steps aside by stopping
        first.stop()
        print("scheduler-a stopped")
    second.run_watchers()  # b's next look finds the place free and takes it
    show_leader(second)

    for candidate, _ in candidates:
        if candidate.is_started:
            candidate.stop()


if __name__ == "__main__":
    with example_url() as url:
        main(url)
