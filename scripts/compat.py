"""Upstream tooz's own test suite, run against this package on every backend.

The tests are the ones shipped in upstream tooz 9.1.0's wheel (``tooz/tests``, taken from
``.venv-upstream``, where scripts/setup.sh installed that wheel). They are copied to a temporary
directory and grafted onto the *installed* ``tooz`` package as ``tooz.tests`` (our package ships
no tests), then run with pytest once per backend with ``TOOZ_TEST_URL`` pointing at a real server
started here on a free loopback port. One line per backend: ``passed / failed / skipped``.

    .venv/bin/python scripts/compat.py                       # every backend, against ours
    .venv/bin/python scripts/compat.py redis zookeeper       # some of them
    .venv/bin/python scripts/compat.py --python .venv-upstream/bin/python   # upstream against itself

Exit status is non-zero if any test failed or errored.
"""

import argparse
import concurrent.futures
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import servers  # noqa: E402  (tests/servers.py: the launchers the test suite uses)

# Tests that cannot pass for a reason that is not a behaviour difference, by node id.
DESELECTED = {
    # Patches hashlib.md5 and expects the ring to call it; our ring hashes md5 in Rust, and
    # gives bit-identical rings (tests/test_hashring.py checks them against upstream's).
    "tooz/tests/test_hashring.py::HashRingTestCase::test_hash2int_returns_int":
        "mocks hashlib.md5, which the Rust ring does not call",
    # Upstream's PostgreSQL and MySQL driver tests that replace the Python database client
    # (psycopg2 / PyMySQL) with mocks: ours speaks to the server from Rust and imports neither,
    # so there is nothing to patch. The behaviours are covered against real servers by
    # tests/test_sql.py (connect failures, a failing acquire/release, the TLS options).
    "tooz/tests/drivers/test_postgresql.py::TestPostgreSQLFailures::test_connect_failure":
        "mocks psycopg2.connect (ours does not use psycopg2)",
    "tooz/tests/drivers/test_postgresql.py::TestPostgreSQLFailures::test_connect_failure_operational":
        "mocks psycopg2.connect (ours does not use psycopg2)",
    "tooz/tests/drivers/test_postgresql.py::TestPostgreSQLFailures::test_failure_acquire_lock":
        "mocks psycopg2.connect (ours does not use psycopg2)",
    "tooz/tests/drivers/test_postgresql.py::TestPostgreSQLFailures::test_failure_release_lock":
        "mocks psycopg2.connect (ours does not use psycopg2)",
    "tooz/tests/drivers/test_mysql.py::TestMySQLDriver::test_parsing_tls_settings":
        "mocks pymysql.Connect (ours does not use PyMySQL)",
    "tooz/tests/drivers/test_mysql.py::TestMySQLDriver::test_parsing_timeout_settings":
        "mocks pymysql.Connect (ours does not use PyMySQL)",
    "tooz/tests/drivers/test_mysql.py::TestMySQLDriver::test_parsing_blocking_settings":
        "mocks pymysql.Connect (ours does not use PyMySQL)",
}

# backend -> test files (relative to the copied tests) run with its TOOZ_TEST_URL.
COORDINATION = ["tooz/tests/test_coordination.py", "tooz/tests/test_partitioner.py"]
SUITES = {
    "file": COORDINATION + ["tooz/tests/drivers/test_file.py"],
    "ipc": COORDINATION,
    "redis": COORDINATION,
    "memcached": COORDINATION,
    "zookeeper": COORDINATION,
    "etcd3": COORDINATION,
    "postgresql": COORDINATION + ["tooz/tests/drivers/test_postgresql.py"],
    "mysql": COORDINATION + ["tooz/tests/drivers/test_mysql.py"],
    "unit": ["tooz/tests/test_hashring.py",
             "tooz/tests/test_utils.py", "tooz/tests/test_retry.py"],
}

# Grafts the copied tests onto the installed package as ``tooz.tests`` without shadowing it.
# It is a ``sitecustomize`` (found through PYTHONPATH) rather than a pytest plugin, so that the
# processes the tests spawn (multiprocessing) can import ``tooz.tests`` too.
GRAFT = '''
import importlib.abc
import importlib.machinery
import os
import sys

_ROOT = os.path.dirname(os.path.abspath(__file__))


class _UpstreamTests(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tooz.tests" or name.startswith("tooz.tests."):
            parent = os.path.join(_ROOT, *name.split(".")[:-1])
            return importlib.machinery.PathFinder.find_spec(name, [parent])
        return None


sys.meta_path.insert(0, _UpstreamTests())
'''


def upstream_tests_dir():
    found = glob.glob(os.path.join(ROOT, ".venv-upstream", "lib", "python3*", "site-packages", "tooz", "tests"))
    if not found:
        sys.exit("upstream tooz's tests not found: run scripts/setup.sh first (it makes .venv-upstream)")
    return found[0]


def start_server(backend):
    """(url, server or None) for ``backend``."""
    if backend in ("file", "unit"):
        return None, None
    if backend == "ipc":
        return "ipc://", None
    if backend == "redis":
        server = servers.redis().start()
        return "redis://127.0.0.1:%d" % server.port, server
    if backend == "memcached":
        server = servers.memcached().start()
        return "memcached://127.0.0.1:%d" % server.port, server
    if backend == "etcd3":
        server = servers.etcd().start()
        return server.url, server
    if backend == "zookeeper":
        server = servers.zookeeper().start()
        return "zookeeper://127.0.0.1:%d" % server.port, server
    if backend == "postgresql":
        server = servers.postgres().start()
        return server.url, server
    if backend == "mysql":
        server = servers.mariadb().start()
        return server.url, server
    raise ValueError("unknown backend %r" % backend)


def run_backend(backend, python, workdir):
    url, server = start_server(backend)
    scratch = tempfile.mkdtemp(prefix="tooz-compat-%s-" % backend)
    try:
        if backend == "file":
            url = "file://" + scratch
        env = dict(os.environ, PYTHONPATH=workdir, PYTHONDONTWRITEBYTECODE="1")
        env.pop("TOOZ_TEST_URL", None)
        if url:
            env["TOOZ_TEST_URL"] = url
        argv = [python, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                "-rfE", "--tb=short", "-o", "addopts=", "--rootdir", workdir]
        for node in DESELECTED:
            argv += ["--deselect", node]
        argv += SUITES[backend]
        proc = subprocess.run(argv, cwd=workdir, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=1200)
        return backend, proc.returncode, proc.stdout
    finally:
        if server is not None:
            server.close()
        shutil.rmtree(scratch, ignore_errors=True)


def counts(output):
    summary = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
    found = {}
    for n, what in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary[-1] if summary else ""):
        found["error" if what.startswith("error") else what] = int(n)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backends", nargs="*", default=list(SUITES), help="default: all (%s)" % ", ".join(SUITES))
    parser.add_argument("--python", default=sys.executable, type=os.path.abspath,
                        help="interpreter whose tooz is tested (default: this one)")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="backends run at once")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every run's pytest output")
    args = parser.parse_args()
    unknown = set(args.backends) - set(SUITES)
    if unknown:
        parser.error("unknown backend(s): %s" % ", ".join(sorted(unknown)))

    workdir = tempfile.mkdtemp(prefix="tooz-compat-")
    try:
        shutil.copytree(upstream_tests_dir(), os.path.join(workdir, "tooz", "tests"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        with open(os.path.join(workdir, "sitecustomize.py"), "w") as f:
            f.write(GRAFT)
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda b: run_backend(b, args.python, workdir), args.backends))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print("upstream tooz 9.1.0 test suite against %s" % args.python)
    bad = False
    for backend, rc, output in results:
        c = counts(output)
        failed = c.get("failed", 0) + c.get("error", 0)
        if args.verbose or failed or rc not in (0, 5):
            print(output)
        bad |= bool(failed) or rc not in (0, 5)
        print("%-10s %3d passed / %d failed / %d skipped" % (backend, c.get("passed", 0), failed, c.get("skipped", 0)))
    for node, why in DESELECTED.items():
        print("deselected %s: %s" % (node, why))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
