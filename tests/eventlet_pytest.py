"""Runs pytest in a process that called ``eventlet.monkey_patch()`` before anything else, as
cinder-volume and other eventlet services do: the capability tests then exercise the green
paths of the core (every wait in the hub, records and callbacks delivered by a greenthread).

    .venv/bin/python tests/eventlet_pytest.py [pytest arguments]

``tests/conftest.py`` refuses to run a session started this way that is not patched.
"""

import eventlet

eventlet.monkey_patch()

import os  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

if __name__ == "__main__":
    os.environ["TOOZ_TEST_EVENTLET"] = "1"
    sys.exit(pytest.main(sys.argv[1:]))
