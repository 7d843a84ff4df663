"""``mysql://``: locks as MySQL / MariaDB user-level locks (``GET_LOCK`` / ``RELEASE_LOCK``).

URL: ``mysql://user:password@host[:port]/dbname`` (port 3306). Options, as upstream:

==================  ==========================================================
``unix_socket``     connect through this socket instead of host:port
``ssl_ca``          CA file; ``ssl_capath``: a directory of CA files
``ssl_cert``        client certificate (``ssl_key``: its key, else in the cert file)
``ssl_verify_mode`` ``none``/``optional``/``required`` (default: required when a
                    CA is given, else none)
``ssl_check_hostname``  check the server's name (default true; only with a CA;
                    ``false`` has no effect yet, see docs/drivers.rst)
``ssl_cipher``      accepted and ignored: rustls uses its own safe cipher suites
==================  ==========================================================

Any ``ssl_*`` option makes TLS required. No Python database driver is used: the Rust core
speaks to the server. A lock is ``GET_LOCK`` on the same binary name upstream sends, held on
a connection of its own, so processes on upstream tooz and on this one exclude each other.
Groups are not offered (``NotImplemented``).
"""

import logging

from tooz import coordination
from tooz.drivers import _native

LOG = logging.getLogger(__name__)


class MySQLLock(_native.SessionLock):
    """A MySQL/MariaDB named lock (``GET_LOCK``), on its own connection."""

    LOG = LOG
    MYSQL_DEFAULT_PORT = 3306


class MySQLDriver(_native.LocksOnly, _native.NativeDriver, coordination.CoordinationDriver):
    """MySQL / MariaDB named locks."""

    CHARACTERISTICS = (
        coordination.Characteristics.NON_TIMEOUT_BASED,
        coordination.Characteristics.DISTRIBUTED_ACROSS_THREADS,
        coordination.Characteristics.DISTRIBUTED_ACROSS_PROCESSES,
        coordination.Characteristics.DISTRIBUTED_ACROSS_HOSTS,
    )
    SCHEME = "mysql"
    LOCK_CLASS = MySQLLock

    def __init__(self, member_id, parsed_url, options):
        super().__init__(member_id, parsed_url, options)
        if self._options_given(options, "ssl_cipher"):
            LOG.warning("option ssl_cipher is ignored: the TLS library (rustls) offers only its "
                        "own safe cipher suites")

    @staticmethod
    def _options_given(options, name):
        value = options.get(name)
        return bool(value[-1] if isinstance(value, (list, tuple)) and value else value)
