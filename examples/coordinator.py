"""A coordinator: the handle on a backend that every other capability goes through.

    python examples/coordinator.py [URL]

Without a URL it uses file:// in a temporary directory.
"""


from tooz import coordination
from example_url import example_url


def main(url):
    # The member id names this process to the others; it must be unique among them.
    coordinator = coordination.get_coordinator(url, b"host-1")
    print("driver:", type(coordinator).__name__)
    print("needs heartbeats:", coordinator.requires_beating)

    coordinator.start()
    print("started:", coordinator.is_started)

    # Every call goes through the started coordinator; here, the groups it can see.
    print("groups on the backend:", coordinator.get_groups().get())

    coordinator.stop()
    print("started after stop():", coordinator.is_started)


if __name__ == "__main__":
    with example_url() as url:
        main(url)
