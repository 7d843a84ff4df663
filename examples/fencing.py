"""Fencing tokens and lost locks: keep a holder that lost its lock from writing anyway.

    python examples/fencing.py [URL]

A holder can lose a lock without knowing it at once (a long pause, its lease lapsing, its
session ending). Two things protect the data: ``lock.fencing_token``, a number greater than
every token given before for the same lock, which the store checks on every write; and
``lock.on_lost(callback)``, called when the holding is found lost. Without a URL it uses
file:// in a temporary directory (whose locks the kernel holds: they cannot be lost behind
their holder's back, so there host-1 lets go to let host-2 in).
"""

import threading

import tooz
from tooz import coordination
from example_url import example_url

NAME = b"ledger"


class FencedStore:
    """Stands for the storage the lock protects: it refuses a write whose token is lower than
    the highest it has seen."""

    def __init__(self):
        self.highest = 0
        self.value = None

    def write(self, value, token):
        if token < self.highest:
            return False
        self.highest, self.value = token, value
        return True


def main(url):
    one = coordination.get_coordinator(url, b"host-1")
    two = coordination.get_coordinator(url, b"host-2")
    one.start(start_heart=True)
    two.start(start_heart=True)
    lock_one, lock_two = one.get_lock(NAME), two.get_lock(NAME)

    told = threading.Event()

    def lost(lock):  # runs on a thread of the core, not the caller's
        print("host-1 told: its holding of %r was lost" % lock.name)
        told.set()

    lock_one.on_lost(lost)

    lock_one.acquire()
    first = lock_one.fencing_token
    if first is None:
        print("this backend gives no fencing tokens (ipc, postgresql, mysql)")
        lock_one.release()
        one.stop()
        two.stop()
        return
    store = FencedStore()
    print("host-1 holds the lock with token", first, "- write accepted:", store.write("from host-1", first))

    # host-1 stalls here. Meanwhile its lock goes to host-2: broken by an operator where the
    # backend allows it, as a lapsed lease would be; otherwise host-1 lets it go.
    try:
        lock_two.break_()
        print("host-2 broke host-1's lock; host-1 still owner:", lock_one.is_still_owner())
        print("on_lost called:", told.wait(5))
    except tooz.NotImplemented:
        lock_one.release()
        print("host-1 let the lock go")

    lock_two.acquire()
    second = lock_two.fencing_token
    print("host-2 holds it with token", second, "- write accepted:", store.write("from host-2", second))

    # host-1 wakes up and writes with the token it had: refused, the store has seen a later one.
    print("host-1's late write with token", first, "accepted:", store.write("late, from host-1", first))
    print("the store holds:", store.value)

    lock_two.release()
    one.stop()
    two.stop()


if __name__ == "__main__":
    with example_url() as url:
        main(url)
