#!/usr/bin/env bash
# The one benchmark command: builds and installs ours, makes the upstream tooz 9.1.0 virtualenv
# (both through the idempotent set-up script), then runs every workload under both, interleaved,
# against servers it starts on loopback. Arguments go to run.py (e.g. --rounds 5 --backends redis);
# without arguments the scaling table (scale.py: group reads as groups grow) follows, then the
# eventlet table (green.py: locks from 1, 16 and 256 greenthreads).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python benchmarks/run.py "$@"
if [ "$#" -eq 0 ]; then
  .venv/bin/python benchmarks/scale.py
  .venv/bin/python benchmarks/green.py
fi
