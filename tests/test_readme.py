"""README.rst as a newcomer meets it in a fresh clone: short, rendered as PyPI renders it, its
links leading somewhere, and every command in it working as written.

Commands are run from the root of the work tree with ``bash``. The set-up and test commands
are what CI runs (``.ci/run``), and the install commands change the environment they run in
(``scripts/wheels.sh`` builds the wheel with the same command and installs it into fresh
virtualenvs); those are checked to be the ones CI and the wheel checks run, not run here.
``.venv/bin/python`` is the interpreter running this test (in CI they are the same), so the
test also runs under a virtualenv made elsewhere."""

import os
import pathlib
import re
import subprocess
import sys

import docutils.core
import docutils.nodes
import docutils.utils
import docutils.writers.html5_polyglot
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.rst"
MAX_LINES = 200

# Commands not run here, and where each is exercised instead.
RUN_BY_CI = {"bash scripts/setup.sh", "bash scripts/test.sh"}
INSTALLS = re.compile(r"^(pip (un)?install |PATH=\"\$PWD/\.venv/bin:(/usr/bin:)?\$PATH\" (CARGO=\S+ RUSTC=\S+ )?maturin build )")


def text():
    return README.read_text()


def blocks(language):
    """The code blocks of ``language`` in the README, in order, as text."""
    found = []
    lines = text().splitlines()
    for i, line in enumerate(lines):
        if line.strip() == ".. code-block:: %s" % language:
            body = []
            for following in lines[i + 1:]:
                if following.strip() and not following.startswith("   "):
                    break
                body.append(following[3:])
            found.append("\n".join(body).strip("\n"))
    return found


def commands():
    """Every shell command of the README, its trailing comment taken off."""
    out = []
    for block in blocks("sh"):
        for line in block.splitlines():
            command = re.sub(r"\s+#\s.*$", "", line).strip()
            if command:
                out.append(command)
    return out


def test_fits_the_limit():
    assert len(text().splitlines()) <= MAX_LINES


def test_renders_as_on_pypi():
    """PyPI renders the description with docutils alone (no Sphinx roles or directives), with
    file inclusion and raw HTML off, and refuses it on any warning."""
    settings = {"halt_level": 2, "report_level": 2, "raw_enabled": False, "file_insertion_enabled": False,
                "warning_stream": False}
    try:
        docutils.core.publish_parts(text(), writer=docutils.writers.html5_polyglot.Writer(),
                                    settings_overrides=settings)
    except docutils.utils.SystemMessage as e:
        pytest.fail("README.rst does not render: %s" % e)


def section_ids(path):
    """The ids docutils gives the section titles of an .rst file (what ``#fragment`` names)."""
    lines = path.read_text().splitlines()
    titles = [lines[i] for i in range(len(lines) - 1)
              if lines[i].strip() and re.fullmatch(r"([=\-~^\"'])\1{2,}", lines[i + 1].strip())
              and len(lines[i + 1].strip()) >= len(lines[i].strip())]
    return {docutils.nodes.make_id(title) for title in titles}


def test_links_lead_to_files_and_sections_of_the_tree():
    targets = re.findall(r"^\.\. _[^:]+: (\S+)$", text(), flags=re.M)
    local = [t for t in targets if "://" not in t]
    assert local, "the README links into the docs"
    for target in local:
        path, _, fragment = target.partition("#")
        assert (ROOT / path).is_file(), target
        if fragment:
            assert fragment in section_ids(ROOT / path), target


def test_commands_not_run_here_are_run_elsewhere():
    ci = (ROOT / ".ci" / "run").read_text()
    wheels = (ROOT / "scripts" / "wheels.sh").read_text() + (ROOT / "scripts" / "wheel_aarch64.sh").read_text()
    for command in commands():
        if command in RUN_BY_CI:
            assert command in ci, command
        elif command.startswith("PATH="):
            build = command[command.index("maturin build"):].split(" --out")[0]
            assert build.startswith("maturin build --release --zig") and build in wheels, command
    assert RUN_BY_CI <= set(commands())


def runnable():
    return [c for c in commands() if c not in RUN_BY_CI and not INSTALLS.match(c)]


def test_there_is_a_command_to_run_after_the_set_up():
    assert any(c.startswith(".venv/bin/python examples/") for c in runnable())


@pytest.mark.parametrize("command", runnable())
def test_command_works_as_written(command, tmp_path):
    if not (ROOT / ".venv" / "bin" / "python").exists():
        command = command.replace(".venv/bin/python", sys.executable)
    env = dict(os.environ, TMPDIR=str(tmp_path))
    out = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip(), "it shows something"


def test_first_program_runs(tmp_path):
    program = blocks("python")[0]
    out = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, env=dict(os.environ, TMPDIR=str(tmp_path)),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "holding the lock" in out.stdout and "members: {b'host-1'}" in out.stdout, out.stdout
    assert list(tmp_path.iterdir()) == []
