"""Compares the public surface of every tooz module, ours against upstream tooz's.

    .venv/bin/python scripts/api_diff.py [--show]

Dumps, under this package (``.venv``) and under upstream tooz (``.venv-upstream``), every
public name of ``tooz``, ``tooz.coordination``, ``tooz.locking``, ``tooz.hashring``,
``tooz.partitioner``, ``tooz.utils`` and ``tooz.drivers.*``: what kind of thing it is, a
function's parameters (names, kinds and defaults; annotations are left out), a class's bases
and its public attributes and methods (own and inherited), a constant's value. Then it prints
every difference and fails on each one that ``scripts/api_allow.txt`` does not list. That file
holds one pattern per line (``fnmatch`` over the difference's key), then ``#`` and the reason.
``--show`` prints every difference, allowed or not.
"""

import fnmatch
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = os.path.join(ROOT, ".venv", "bin", "python")
UPSTREAM = os.environ.get("TOOZ_UPSTREAM_PYTHON", os.path.join(ROOT, ".venv-upstream", "bin", "python"))
ALLOW = os.path.join(ROOT, "scripts", "api_allow.txt")

# Run under each interpreter: prints {key: description} as JSON.
DUMPER = r'''
import enum, importlib, inspect, json, sys, typing, warnings
warnings.simplefilter("ignore")

MODULES = ["tooz", "tooz.coordination", "tooz.locking", "tooz.hashring", "tooz.partitioner", "tooz.utils",
           "tooz.drivers.file", "tooz.drivers.ipc", "tooz.drivers.redis", "tooz.drivers.memcached",
           "tooz.drivers.zookeeper", "tooz.drivers.etcd3gw", "tooz.drivers.pgsql", "tooz.drivers.mysql",
           "tooz.drivers.kubernetes"]
# Dunders that a service's code calls or a subclass overrides.
DUNDERS = {"__init__", "__call__", "__enter__", "__exit__", "__getitem__", "__len__", "__iter__", "__contains__"}
CONSTANTS = (bool, int, float, str, bytes, type(None))


def params(f):
    try:
        sig = inspect.signature(f)
    except (TypeError, ValueError):
        return "(?)"
    out = []
    for p in sig.parameters.values():
        s = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
        if p.kind == p.KEYWORD_ONLY:
            s = "kw:" + s
        if p.default is not p.empty:
            s += "=" + value(p.default)
        out.append(s)
    return "(" + ", ".join(out) + ")"


def value(v):
    if isinstance(v, CONSTANTS):
        return repr(v)
    if isinstance(v, (tuple, list)) and all(isinstance(i, CONSTANTS) for i in v):
        return type(v).__name__ + repr(tuple(v))
    if isinstance(v, (set, frozenset)) and all(isinstance(i, CONSTANTS) for i in v):
        return type(v).__name__ + repr(sorted(v, key=repr))
    if isinstance(v, enum.Enum):
        return "%s.%s" % (type(v).__name__, v.name)
    return "<%s>" % type(v).__name__


def qual(c):
    return "%s.%s" % (c.__module__, c.__qualname__)


def typing_artifact(v):
    # TypeVars, ParamSpecs, typing's special forms, `from __future__ import annotations`,
    # TYPE_CHECKING: annotation machinery, not API.
    return type(v).__module__ in ("typing", "typing_extensions", "__future__") or v is typing.TYPE_CHECKING


def defined_in_builtins(owner, name):
    for klass in owner.__mro__:
        if name in vars(klass):
            return klass.__module__ == "builtins"
    return False


def describe_member(owner, name):
    raw = inspect.getattr_static(owner, name)
    if isinstance(raw, staticmethod):
        return "staticmethod" + params(raw.__func__)
    if isinstance(raw, classmethod):
        return "classmethod" + params(raw.__func__)
    if isinstance(raw, property):
        return "property"
    if inspect.isclass(raw):
        return "class"
    if callable(raw):
        return "method" + params(raw)
    return "attr " + value(raw)


dump = {}
for name in MODULES:
    try:
        mod = importlib.import_module(name)
    except Exception as e:
        dump[name] = "import fails: %s" % type(e).__name__
        continue
    dump[name] = "module"
    for attr in sorted(vars(mod)):
        if attr.startswith("_"):
            continue
        obj = getattr(mod, attr)
        key = "%s.%s" % (name, attr)
        if inspect.ismodule(obj) or typing_artifact(obj):
            continue
        home = getattr(obj, "__module__", None)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and not (home or "").startswith("tooz"):
            continue  # imported from another library (typing, enum, ...)
        if inspect.isclass(obj):
            if home != name:
                dump[key] = "alias of " + qual(obj)
                continue
            dump[key] = "class(%s)" % ", ".join(qual(b) for b in obj.__bases__)
            for m in sorted(dir(obj)):
                if (m.startswith("_") and m not in DUNDERS) or defined_in_builtins(obj, m):
                    continue
                try:
                    dump[key + "." + m] = describe_member(obj, m)
                except AttributeError:
                    pass
        elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
            dump[key] = ("function" if home == name else "alias of %s.%s" % (home, obj.__name__)) + params(obj)
        elif isinstance(obj, type(sys)) or callable(obj):
            dump[key] = "callable " + type(obj).__name__
        else:
            dump[key] = "value " + value(obj)
print(json.dumps(dump))
'''


def dump(python):
    out = subprocess.run([python, "-c", DUMPER], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONNOUSERSITE="1"))
    if out.returncode != 0:
        raise SystemExit("dumping the API under %s failed:\n%s" % (python, out.stderr[-3000:]))
    return json.loads(out.stdout)


def allow_list():
    patterns = []
    with open(ALLOW) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            pattern, sep, reason = line.partition("#")
            if not sep or not reason.strip():
                raise SystemExit("%s:%d: an entry needs a reason after '#'" % (ALLOW, n))
            patterns.append((pattern.strip(), n))
    return patterns


def main():
    show = "--show" in sys.argv[1:]
    ours, upstream = dump(OURS), dump(UPSTREAM)
    patterns = allow_list()
    used = set()
    failures = 0
    for key in sorted(set(ours) | set(upstream)):
        a, b = upstream.get(key), ours.get(key)
        if a == b:
            continue
        line = "%s: upstream %s, ours %s" % (key, a or "(missing)", b or "(missing)")
        hit = next((n for p, n in patterns if fnmatch.fnmatchcase(key, p)), None)
        if hit is None:
            failures += 1
            print("DIFFERS " + line)
        else:
            used.add(hit)
            if show:
                print("allowed " + line)
    for pattern, n in patterns:
        if n not in used:
            print("note: allow-list entry %d (%s) matches no difference any more" % (n, pattern))
    compared = len(set(ours) | set(upstream))
    if failures:
        print("%d of %d public names differ from upstream without an allow-list entry" % (failures, compared))
        return 1
    print("API compared with upstream: %d names, every difference allowed (%s)" % (compared, os.path.relpath(ALLOW, ROOT)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
