"""The example programs of ``examples/``, run as a reader runs them: each as a program of its own
with no argument (file:// in a temporary directory), which must exit 0, print nothing on
stderr, and print what it says it shows. Every example is also the subject of a tutorial page."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TUTORIAL = ROOT / "docs" / "tutorial"

# What each example must print: the lines that show its point.
SHOWS = {
    "coordinator.py": ["started: True", "started after stop(): False"],
    "heartbeat.py": ["next one due within 10.0 s", "background heart alive: True", "heart alive after stop(): False"],
    "group_membership.py": ["beta: the group exists already", "members: [b'worker-alpha', b'worker-beta']",
                            "beta's capabilities now: {'cores': 4}", "members after beta left: [b'worker-alpha']",
                            "groups after delete: []"],
    "group_watch.py": ["joined: worker-1", "joined: worker-2", "left: worker-1"],
    "leader_election.py": ["scheduler-a: elected leader", "leader: scheduler-a", "scheduler-b: elected leader",
                           "leader: scheduler-b"],
    "lock.py": ["host-2 tries without waiting: False", "host-2 waits at most 0.2 s: False",
                "host-1 released it; host-2 tries again: True", "release of a lock not held: False"],
    "fencing.py": ["host-1 holds the lock with token 1", "host-2 holds it with token 2 - write accepted: True",
                   "host-1's late write with token 1 accepted: False", "the store holds: from host-2"],
    "hashring.py": ["all of them to node-d: True", "removing it twice: Unknown node"],
    "partitioner.py": ["poller-1 alone owns 300 of 300", "every object has exactly one owner: True",
                       "after poller-2 left, poller-1 owns 300 of 300"],
    "aio_coordinator.py": ["MemberJoinedGroup: async-2", "async-2's wait cancelled",
                           "released; async-2 tries again: True", "after async-1 stood down, leader: async-2"],
}


# Not an example: where the examples run (a URL argument, or file:// in a temporary directory).
HELPER = "example_url.py"


def example_names():
    return sorted(p.name for p in EXAMPLES.glob("*.py") if p.name != HELPER)


def test_every_capability_has_an_example():
    assert example_names() == sorted(SHOWS)


@pytest.mark.parametrize("name", example_names())
def test_example_runs_and_shows_its_point(name, tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path))
    out = subprocess.run([sys.executable, str(EXAMPLES / name)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    for line in SHOWS[name]:
        assert line in out.stdout, (line, out.stdout)
    assert list(tmp_path.iterdir()) == [], "the example left files behind"


@pytest.mark.parametrize("name", example_names())
def test_example_is_in_the_tutorial(name):
    include = ".. literalinclude:: ../../examples/%s" % name
    assert any(include in page.read_text() for page in TUTORIAL.glob("*.rst")), name
