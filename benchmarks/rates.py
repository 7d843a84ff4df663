"""What the benchmarks' worker scripts share: one run in a fresh interpreter, one rate back."""

import json
import subprocess


def measure(python, worker, args, seconds):
    """Runs ``worker`` (a script) under ``python`` with ``args``; the ``rate`` of the JSON line
    it prints last."""
    out = subprocess.run([python, "-W", "ignore", "-c", worker, *map(str, args)], capture_output=True, text=True,
                         timeout=seconds * 20 + 60)
    if out.returncode != 0:
        raise RuntimeError("%s %s failed: %s" % (python, " ".join(map(str, args)), out.stderr[-2000:]))
    return json.loads(out.stdout.strip().splitlines()[-1])["rate"]
