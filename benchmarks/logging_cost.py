"""What logging costs: redis lock acquire+release with no logging configured, and with a
DEBUG handler on the root logger, interleaved in fresh processes.

    .venv/bin/python benchmarks/logging_cost.py [--rounds 3] [--ops 3000]

The core logs state changes only (an outage, a recovery, a re-join), never per call, so the
two rates should agree within noise.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r'''
import json, logging, sys, time, uuid
url, ops, handler = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
if handler:
    logging.basicConfig(level=logging.DEBUG, stream=open("/dev/null", "w"))
from tooz import coordination
c = coordination.get_coordinator(url, uuid.uuid4().hex.encode())
c.start(start_heart=True)
lock = c.get_lock(uuid.uuid4().hex.encode())
began = time.perf_counter()
for _ in range(ops):
    lock.acquire()
    lock.release()
print(json.dumps({"rate": ops / (time.perf_counter() - began)}))
c.stop()
'''


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ops", type=int, default=3000)
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import servers

    server = servers.redis().start()
    try:
        url = "redis://127.0.0.1:%d" % server.port
        rates = {"0": [], "1": []}
        for _ in range(args.rounds):
            for handler in ("0", "1"):
                out = subprocess.run([sys.executable, "-c", WORKER, url, str(args.ops), handler],
                                     capture_output=True, text=True, check=True)
                rates[handler].append(json.loads(out.stdout)["rate"])
        off, on = statistics.median(rates["0"]), statistics.median(rates["1"])
        print("| redis lock acquire+release | no logging | DEBUG handler | with ÷ without |")
        print("|---|---|---|---|")
        print("| ops/s (median of %d) | %.0f | %.0f | %.3f |" % (args.rounds, off, on, on / off))
    finally:
        server.close()


if __name__ == "__main__":
    main()
