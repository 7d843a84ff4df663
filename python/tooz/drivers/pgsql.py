"""``postgresql://``: locks as PostgreSQL advisory locks (deprecated upstream, still offered).

URL: ``postgresql://[user[:password]@]host[:port][/dbname]``; options ``host``, ``port`` and
``dbname`` override the URL, as upstream. Like libpq (which upstream's psycopg2 uses), the
``PGHOST``/``PGPORT``/``PGUSER``/``PGPASSWORD``/``PGDATABASE``/``PGSSLMODE`` variables fill in
what neither gives, and ``sslmode`` (default ``prefer``), ``sslrootcert``, ``sslcert``,
``sslkey`` set up TLS. No Python database driver is used: the Rust core speaks to the server.

A lock is the session-level advisory lock on the two integers upstream derives from the
name (the first two bytes of its md5), held on a connection of its own, so processes on
upstream tooz and on this one exclude each other. Groups are not offered (``NotImplemented``).
"""

import logging
import warnings

from tooz import coordination
from tooz.drivers import _native

LOG = logging.getLogger(__name__)


class PostgresLock(_native.SessionLock):
    """A PostgreSQL advisory lock keyed by two bytes of md5(name), on its own connection."""

    LOG = LOG


class PostgresDriver(_native.LocksOnly, _native.NativeDriver, coordination.CoordinationDriver):
    """PostgreSQL advisory locks. Deprecated (as upstream): prefer another backend."""

    CHARACTERISTICS = (
        coordination.Characteristics.NON_TIMEOUT_BASED,
        coordination.Characteristics.DISTRIBUTED_ACROSS_THREADS,
        coordination.Characteristics.DISTRIBUTED_ACROSS_PROCESSES,
        coordination.Characteristics.DISTRIBUTED_ACROSS_HOSTS,
    )
    SCHEME = "postgresql"
    LOCK_CLASS = PostgresLock

    def __init__(self, member_id, parsed_url, options):
        warnings.warn("the postgresql:// backend is deprecated and will go in a future release",
                      category=DeprecationWarning, stacklevel=2)
        super().__init__(member_id, parsed_url, options)
