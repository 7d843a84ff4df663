"""Spread objects over the members of a group with a consistent hash ring."""

from tooz import hashring


class Partitioner:
    """Objects of ``group_id`` mapped onto its members, weighted by their ``weight`` capability.

    The ring follows membership through the coordinator's watchers: changes are applied when
    the coordinator's ``run_watchers()`` runs.
    """

    DEFAULT_PARTITION_NUMBER = hashring.DEFAULT_PARTITION_NUMBER

    def __init__(self, coordinator, group_id, partitions=hashring.DEFAULT_PARTITION_NUMBER):
        members = coordinator.get_members(group_id)
        self.partitions = partitions
        self.group_id = group_id
        self._coord = coordinator
        caps = [(m, self._coord.get_member_capabilities(self.group_id, m)) for m in members.get()]
        self._coord.watch_join_group(self.group_id, self._on_member_join)
        self._coord.watch_leave_group(self.group_id, self._on_member_leave)
        self.ring = hashring.HashRing([], partitions=self.partitions)
        for member_id, cap in caps:
            self.ring.add_node(member_id, self._weight(cap.get()))

    @staticmethod
    def _weight(capabilities):
        if isinstance(capabilities, dict):
            return capabilities.get("weight", 1)
        return 1

    def _on_member_join(self, event):
        capabilities = self._coord.get_member_capabilities(self.group_id, event.member_id).get()
        self.ring.add_node(event.member_id, self._weight(capabilities))

    def _on_member_leave(self, event):
        self.ring.remove_node(event.member_id)

    @staticmethod
    def _hash_object(obj):
        if hasattr(obj, "__tooz_hash__"):
            return obj.__tooz_hash__()
        return str(obj).encode("utf8")

    def members_for_object(self, obj, ignore_members=None, replicas=1):
        """The members ``obj`` belongs to."""
        return self.ring.get_nodes(self._hash_object(obj), ignore_nodes=ignore_members, replicas=replicas)

    def belongs_to_member(self, obj, member_id, ignore_members=None, replicas=1):
        """Whether ``obj`` belongs to ``member_id``."""
        return member_id in self.members_for_object(obj, ignore_members=ignore_members, replicas=replicas)

    def belongs_to_self(self, obj, ignore_members=None, replicas=1):
        """Whether ``obj`` belongs to this coordinator's member."""
        return self.belongs_to_member(obj, self._coord._member_id, ignore_members=ignore_members,
                                      replicas=replicas)

    def stop(self):
        """Stop following the group's membership."""
        self._coord.unwatch_join_group(self.group_id, self._on_member_join)
        self._coord.unwatch_leave_group(self.group_id, self._on_member_leave)
