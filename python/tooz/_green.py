"""What the core needs of eventlet in a monkey-patched process (see src/py/green.rs).

Imported only once the process is seen patched; nothing here runs otherwise.
"""

import os


class _Elapsed(Exception):
    """The time limit of a wait passed (raised by the hub, caught here)."""


def wait_readable(fd, timeout=None):
    """Waits in the hub until ``fd`` (an eventfd of the core) is readable: True, or False
    when ``timeout`` seconds passed first. Other greenthreads run meanwhile; an exception
    thrown into this greenthread (``eventlet.Timeout``, ``kill()``) comes out of here."""
    from eventlet.hubs import trampoline

    try:
        trampoline(fd, read=True, timeout=timeout, timeout_exc=_Elapsed)
    except _Elapsed:
        return False
    return True


def _deliver_forever(fd, deliver, ended, pid):
    from eventlet.hubs import trampoline

    try:
        while True:
            trampoline(fd, read=True)
            if os.getpid() != pid:
                # Inherited by a forked child that kept its parent's hub: the eventfd is the
                # parent's (the child starts a deliverer of its own); leave its wake-ups to it.
                return
            try:
                os.read(fd, 8)  # resets the eventfd; a signal fired during deliver() re-arms it
            except BlockingIOError:
                pass
            deliver()
    finally:
        if os.getpid() == pid:
            ended()  # the next green call starts another


def start_deliverer(fd, deliver, ended):
    """Starts the greenthread that hands the core's log records and callbacks to Python."""
    import eventlet

    eventlet.spawn_n(_deliver_forever, fd, deliver, ended, os.getpid())
