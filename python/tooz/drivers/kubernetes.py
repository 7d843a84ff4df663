"""``kubernetes://``: not supported by this tooz.

Upstream's driver (deprecated there) takes locks as Kubernetes Lease objects through the
``sherlock`` library. This package has no Kubernetes client in its Rust core and no API
server to test one against, so the scheme is registered only to fail clearly: asking for
it raises :class:`tooz.ToozError` saying so. Use another backend.
"""

import warnings

import tooz
from tooz import coordination


class SherlockDriver(coordination.CoordinationDriverCachedRunWatchers):
    """Refuses to be built: the kubernetes backend is not supported here."""

    CHARACTERISTICS = (
        coordination.Characteristics.NON_TIMEOUT_BASED,
        coordination.Characteristics.DISTRIBUTED_ACROSS_THREADS,
        coordination.Characteristics.DISTRIBUTED_ACROSS_PROCESSES,
        coordination.Characteristics.DISTRIBUTED_ACROSS_HOSTS,
    )

    def __init__(self, member_id, parsed_url, options):
        warnings.warn("the kubernetes:// backend is deprecated", category=DeprecationWarning, stacklevel=2)
        raise tooz.ToozError(
            "the kubernetes backend is not supported by this tooz: it has no Kubernetes client "
            "(upstream's driver uses the sherlock library), and it could not be tested against a "
            "Kubernetes API server; use another backend (etcd3, redis, zookeeper, ...)")
