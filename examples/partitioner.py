"""A partitioned group: the members of a group share out work by a hash ring of themselves.

    python examples/partitioner.py [URL]

Each member joins with ``join_partitioned_group`` and asks its partitioner which objects are
its own. The ring follows the group's membership when ``run_watchers()`` runs. Without a URL
it uses file:// in a temporary directory.
"""


from tooz import coordination
from example_url import example_url

GROUP = b"pollers"
OBJECTS = ["instance-%d" % i for i in range(300)]


def mine(partitioner):
    return [obj for obj in OBJECTS if partitioner.belongs_to_self(obj)]


def main(url):
    one = coordination.get_coordinator(url, b"poller-1")
    two = coordination.get_coordinator(url, b"poller-2")
    one.start(start_heart=True)
    two.start(start_heart=True)

    part_one = one.join_partitioned_group(GROUP)
    print("poller-1 alone owns %d of %d objects" % (len(mine(part_one)), len(OBJECTS)))

    # poller-2 joins with twice the weight; poller-1 sees it at its next run_watchers().
    part_two = two.join_partitioned_group(GROUP, weight=2)
    one.run_watchers()
    print("poller-1 owns %d, poller-2 owns %d" % (len(mine(part_one)), len(mine(part_two))))
    print("every object has exactly one owner:",
          all(part_one.belongs_to_self(o) != part_two.belongs_to_self(o) for o in OBJECTS))
    print("instance-3 belongs to:", part_one.members_for_object("instance-3"))

    # poller-2 leaves; at poller-1's next look everything is its own again.
    two.leave_partitioned_group(part_two)
    one.run_watchers()
    print("after poller-2 left, poller-1 owns %d of %d" % (len(mine(part_one)), len(OBJECTS)))

    one.leave_partitioned_group(part_one)
    one.stop()
    two.stop()


if __name__ == "__main__":
    with example_url() as url:
        main(url)
