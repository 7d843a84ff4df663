from typing import Any, Dict, Iterable, List, Optional, Set

import tooz

Node = Any
Weight = int
DEFAULT_PARTITION_NUMBER: int
DEFAULT_HASH_FUNCTION: str

class UnknownNode(tooz.ToozError):
    node: Node
    def __init__(self, node: Node) -> None: ...

class HashRing:
    DEFAULT_PARTITION_NUMBER: int
    DEFAULT_HASH_FUNCTION: str
    nodes: Dict[Node, Weight]
    _ring: Dict[int, Node]
    _partitions: List[int]
    _partition_number: int
    _hash_function: str
    def __init__(self, nodes: Iterable[Node], partitions: int = 32, hash_function: str = "md5") -> None: ...
    def add_node(self, node: Node, weight: Weight = 1) -> None: ...
    def add_nodes(self, nodes: Iterable[Node], weight: Weight = 1) -> None: ...
    def remove_node(self, node: Node) -> None: ...
    def get_nodes(self, data: bytes, ignore_nodes: Optional[Iterable[Node]] = None, replicas: int = 1) -> Set[Node]: ...
    def __getitem__(self, key: bytes) -> Set[Node]: ...
    def __len__(self) -> int: ...
