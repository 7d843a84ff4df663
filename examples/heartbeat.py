"""Heartbeats: how a coordinator tells the backend it is alive.

    python examples/heartbeat.py [URL]

Backends whose memberships and locks lapse (file, redis, memcached, etcd3) need a beat more
often than their timeouts. ``start(start_heart=True)`` runs one in the background; a service
may instead call ``heartbeat()`` itself, which returns the seconds until the next is due.
Without a URL it uses file:// in a temporary directory.
"""

import time

from tooz import coordination
from example_url import example_url


def main(url):
    # Beating by hand: each call answers how long the backend lets us wait before the next.
    manual = coordination.get_coordinator(url, b"beats-by-hand")
    manual.start()
    print("needs heartbeats:", manual.requires_beating)
    for _ in range(3):
        print("heartbeat(): next one due within", manual.heartbeat(), "s")
    manual.stop()

    # Beating in the background: a task of the Rust core, not a Python thread.
    background = coordination.get_coordinator(url, b"beats-by-itself")
    background.start(start_heart=True)
    if background.requires_beating:
        deadline = time.monotonic() + 5
        while background.heart.beats < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        # It beats again at half the time its last beat said it had.
        print("background heart alive:", background.heart.is_alive(),
              "- beats so far:", background.heart.beats)
    background.stop()
    print("heart alive after stop():", background.heart.is_alive())


if __name__ == "__main__":
    with example_url() as url:
        main(url)
