"""Consistent hash ring, placing every key on exactly the node upstream tooz places it on.

The ring and its hashing live in Rust (``tooz._tooz.HashRing``); nodes are kept as the Python
objects given (``bytes`` and ``str`` nodes stay distinct, as upstream).
"""

import typing

import tooz
from tooz import _tooz

Node = typing.Any
Weight = int

DEFAULT_PARTITION_NUMBER = 2 ** 5
DEFAULT_HASH_FUNCTION = "md5"


class UnknownNode(tooz.ToozError):
    """The node is not on the ring."""

    def __init__(self, node):
        super().__init__("Unknown node `%s'" % node)
        self.node = node


class HashRing(_tooz.HashRing):
    """Map data onto nodes.

    ``HashRing(nodes, partitions=32, hash_function='md5')``: each node of weight ``w`` owns
    ``partitions * w`` points of the ring. ``get_nodes(data, ignore_nodes=None, replicas=1)``
    returns the set of nodes ``data`` (bytes) maps onto; ``ring[data]`` is the same with one
    replica; ``len(ring)`` is the number of points. ``add_node(node, weight=1)``,
    ``add_nodes(nodes, weight=1)`` and ``remove_node(node)`` (``UnknownNode`` if absent) change
    the ring; ``nodes`` is the ``{node: weight}`` mapping.
    """

    DEFAULT_PARTITION_NUMBER = DEFAULT_PARTITION_NUMBER
    DEFAULT_HASH_FUNCTION = DEFAULT_HASH_FUNCTION

    # The Rust __new__ makes an empty ring whatever the arguments (a subclass may take its
    # own and hand ours on from its __init__); __init__ builds it.
    def __init__(self, nodes, partitions=DEFAULT_PARTITION_NUMBER, hash_function=DEFAULT_HASH_FUNCTION):
        self._setup(nodes, partitions, hash_function)
