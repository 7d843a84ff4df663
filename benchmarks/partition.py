"""A lock holder cut off from its backend by a real network partition: what it learns, and
when, on ours and on upstream tooz 9.1.0. Needs root (network namespaces):

    .venv/bin/python benchmarks/partition.py [--backends redis,memcached,etcd3,zookeeper]
        [--impls ours,upstream] [--blips 3] [--cut 12]

The scenario of tests/test_partitions.py, with the harness of tests/partition.py: the holder
runs inside a network namespace whose veth link is taken down (packets vanish, no RST/FIN),
the other in the root namespace, both on the implementation measured (``.venv``'s python for
ours, ``.venv-upstream``'s for upstream), against one server per backend started here
(lock_timeout=3; ZooKeeper timeout=4). The holder's coordinator beats (start_heart=True).

* blips: ``--blips`` cuts of 1.2 s, spread over the heartbeat cycle (the first 0.3 s, the
  last 1.7 s after an acquire made right after a heartbeat); kept = the other never got the
  lock in the cut and the 3.5 s after it, the holder never thought it lost it, and its
  ``release()`` after the heal said True.
* a ``--cut`` s cut, 0.3 s after such an acquire, while the other tries the lock every 50 ms:
  ``told`` is when the holder learnt it had lost the lock (``on_lost`` fired, or
  ``lock.acquired`` turned False: upstream has no ``on_lost``, so only its ``acquired`` tells),
  ``other got`` when the other first had it, both in seconds after the cut, on the machine's
  monotonic clock; ``overlap`` how long both believed they held it (0 when the holder was
  told first; ``>= n`` when it was never told within 10 s of the heal).

Prints a reStructuredText table.
"""

import argparse
import os
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import partition  # noqa: E402

UPSTREAM = os.environ.get("TOOZ_UPSTREAM_PYTHON", os.path.join(ROOT, ".venv-upstream", "bin", "python"))
OURS = os.path.join(ROOT, ".venv", "bin", "python")
OPTIONS = {
    "redis": {"lock_timeout": 3},
    "memcached": {"lock_timeout": 3},
    "etcd3": {"lock_timeout": 3},
    "zookeeper": {"timeout": 4},
}
BLIP = 1.2
AFTER_BLIP = 3.5
TOLD_WAIT = 10.0


def new_id(prefix):
    return ("%s-%s" % (prefix, uuid.uuid4().hex)).encode()


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def agent(netns, python, url, name, label):
    a = partition.Agent(netns, python=python, label=label)
    a.call("c = coordination.get_coordinator(%r, %r)" % (url, new_id(label)))
    a.call("c.start(start_heart=True)", timeout=30)
    a.call("lock = c.get_lock(%r)" % name)
    return a


def pair(netns, server, backend, python):
    name = new_id("l")
    holder = agent(netns, python, server.url_for(netns.host_addr, **OPTIONS[backend]), name, "holder")
    holder.call("watch(lock, c)")
    other = agent(None, python, server.url_for(server.local_host, **OPTIONS[backend]), name, "other")
    return holder, other


def told_at(holder, since):
    """When the holder learnt of the loss: on_lost, or ``acquired`` turning False."""
    times = [e["t"] for e in holder.events("lost", since)]
    unset = partition.first_sample(holder, since, False)
    if unset is not None:
        times.append(unset["t"])
    return min(times) if times else None


def blip(netns, server, backend, python, at):
    holder, other = pair(netns, server, backend, python)
    try:
        acq = holder.call("acquire_after_beat(c, lock)")
        if not acq["ok"]:
            return False, "no first acquire"
        cut, healed, polled = partition.cut_and_poll(netns, other, acq["t1"] + at, BLIP, AFTER_BLIP)
        asked = time.monotonic()
        try:
            released, _ = holder.call("timed(lambda: lock.release())", timeout=90)
        except partition.AgentTimeout:
            released = "no answer"
        told = told_at(holder, acq["t1"])
        kept = polled["got"] is None and (told is None or told >= asked) and released is True
        why = "" if kept else "other got %s, told %s, release %r" % (
            polled["got"] and "%+.2f" % (polled["got"][0] - cut), told and "%+.2f" % (told - cut), released)
        return kept, why
    finally:
        if netns.is_cut:
            netns.heal()
        holder.close()
        other.close()


def long_cut(netns, server, backend, python, seconds):
    holder, other = pair(netns, server, backend, python)
    try:
        acq = holder.call("acquire_after_beat(c, lock)")
        if not acq["ok"]:
            return None
        cut, healed, polled = partition.cut_and_poll(netns, other, acq["t1"] + 0.3, seconds, 0.0)
        deadline = healed + TOLD_WAIT
        while told_at(holder, acq["t1"]) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        told = told_at(holder, acq["t1"])
        got = polled["got"][0] if polled["got"] else None
        if got is None:
            overlap = None
        elif told is None:
            overlap = ">= %.2f" % (deadline - got)
        else:
            overlap = "%.2f" % max(0.0, told - got)
        return {
            "told": "never" if told is None else "%.2f" % (told - cut),
            "got": "never" if got is None else "%.2f" % (got - cut),
            "overlap": "-" if overlap is None else overlap,
        }
    finally:
        if netns.is_cut:
            netns.heal()
        holder.close()
        other.close()


def rst_table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    rule = "  ".join("=" * w for w in widths)
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([rule, line(header), rule] + [line(r) for r in rows] + [rule])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="redis,memcached,etcd3,zookeeper")
    parser.add_argument("--impls", default="ours,upstream")
    parser.add_argument("--blips", type=int, default=3)
    parser.add_argument("--cut", type=float, default=12.0)
    args = parser.parse_args()
    reason = partition.unavailable()
    if reason:
        sys.exit("benchmarks/partition.py: %s" % reason)
    pythons = {"ours": OURS, "upstream": UPSTREAM}
    impls = args.impls.split(",")
    for impl in impls:
        if not os.path.exists(pythons[impl]):
            sys.exit("no interpreter for %s at %s" % (impl, pythons[impl]))
    n = args.blips
    offsets = [0.3 + i * (1.4 / (n - 1)) for i in range(n)] if n > 1 else [0.3] * n
    rows = []
    with partition.Netns() as netns:
        for backend in args.backends.split(","):
            server = partition.SERVERS[backend](netns).start()
            try:
                for impl in impls:
                    python = pythons[impl]
                    kept = 0
                    for at in offsets:
                        ok, why = blip(netns, server, backend, python, at)
                        kept += ok
                        log("%s %s blip at %.1f s: %s %s" % (backend, impl, at, "kept" if ok else "LOST", why))
                    cut = long_cut(netns, server, backend, python, args.cut)
                    log("%s %s %.0f s cut: %s" % (backend, impl, args.cut, cut))
                    cut = cut or {"told": "?", "got": "?", "overlap": "?"}
                    rows.append([backend, impl, "%d/%d" % (kept, n), cut["told"], cut["got"], cut["overlap"]])
            finally:
                server.close()
    print()
    print(rst_table(["backend", "tooz", "blips kept", "told (s)", "other got (s)", "overlap (s)"], rows))


if __name__ == "__main__":
    main()
