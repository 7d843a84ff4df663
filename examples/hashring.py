"""A consistent hash ring: which node each key belongs to, and how little moves on a change.

    python examples/hashring.py

No backend: the ring is local, and places every key where upstream tooz's ring places it, so
processes on either package agree.
"""

from tooz import hashring

KEYS = [("volume-%d" % i).encode() for i in range(1000)]


def placement(ring):
    return {key: ring.get_nodes(key) for key in KEYS}


def main():
    ring = hashring.HashRing({"node-a", "node-b", "node-c"})
    home = ring.get_nodes(b"volume-7")
    print("volume-7 goes to:", home)
    print("volume-7 with a replica:", sorted(ring.get_nodes(b"volume-7", replicas=2)))
    print("volume-7 while %s is out:" % next(iter(home)), ring.get_nodes(b"volume-7", ignore_nodes=home))

    before = placement(ring)
    ring.add_node("node-d")
    after = placement(ring)
    moved = [key for key in KEYS if before[key] != after[key]]
    print("adding node-d moved %d of %d keys, all of them to node-d: %s"
          % (len(moved), len(KEYS), all(after[key] == {"node-d"} for key in moved)))

    # A node of weight 2 owns twice the points of a node of weight 1, so it gets more keys.
    points = len(ring)
    ring.add_node("node-big", weight=2)
    print("points on the ring: %d, with node-big: %d" % (points, len(ring)))
    counts = {}
    for nodes in placement(ring).values():
        for node in nodes:
            counts[node] = counts.get(node, 0) + 1
    print("keys per node:", dict(sorted(counts.items())))

    ring.remove_node("node-big")
    try:
        ring.remove_node("node-big")
    except hashring.UnknownNode as e:
        print("removing it twice:", e)


if __name__ == "__main__":
    main()
