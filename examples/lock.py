"""Locks: one holder at a time across every process that shares the backend.

    python examples/lock.py [URL]

Two coordinators stand for two processes (or hosts) wanting the same lock. Without a URL it
uses file:// in a temporary directory.
"""

import threading
import time

from tooz import coordination
from example_url import example_url

NAME = b"nightly-report"


def main(url):
    one = coordination.get_coordinator(url, b"host-1")
    two = coordination.get_coordinator(url, b"host-2")
    one.start(start_heart=True)
    two.start(start_heart=True)
    lock_one, lock_two = one.get_lock(NAME), two.get_lock(NAME)

    # As a context manager: acquired (waiting as long as it takes) and released on exit.
    with lock_one:
        print("host-1 holds the lock")
        print("host-2 tries without waiting:", lock_two.acquire(blocking=False))
        print("host-2 waits at most 0.2 s:", lock_two.acquire(blocking=0.2))
    print("host-1 released it; host-2 tries again:", lock_two.acquire(blocking=False))
    print("host-2 releases:", lock_two.release())

    # A waiting acquire returns as soon as the holder lets go.
    lock_one.acquire()
    threading.Timer(0.3, lock_one.release).start()
    began = time.monotonic()
    lock_two.acquire()
    print("host-2 waited %.1f s for host-1's release" % (time.monotonic() - began))
    lock_two.release()

    # release() says whether this lock object held it.
    print("release of a lock not held:", lock_two.release())

    one.stop()
    two.stop()


if __name__ == "__main__":
    with example_url() as url:
        main(url)
