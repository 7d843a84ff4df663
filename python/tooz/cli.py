"""``tooz``: look at and use coordination from a shell.

    tooz lock URL NAME [--timeout S] [--member-id ID] -- COMMAND [ARGS...]
    tooz groups URL
    tooz members URL GROUP [--json]
    tooz leader URL GROUP
    tooz watch URL GROUP [--interval S]

URL is a tooz backend URL (``redis://host:6379``, ``file:///var/lib/app/tooz``, ...). Errors
are one line on stderr and a non-zero exit status: 1 for a lock not acquired in time or a
missing group/leader, 2 for bad usage or input, 3 for a backend that cannot be reached.
"""

import argparse
import logging
import json
import os
import signal
import socket
import subprocess
import sys
import time

import tooz
from tooz import coordination

EXIT_NOT_ACQUIRED = 1
EXIT_USAGE = 2
EXIT_BACKEND = 3


class _Exit(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def _text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def _jsonable(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {_text(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _id(text):
    return text.encode("utf-8")


def _connect(url, member_id=None, start_heart=False):
    member = _id(member_id) if member_id else ("tooz-cli-%s-%d" % (socket.gethostname(), os.getpid())).encode()
    try:
        coord = coordination.get_coordinator(url, member)
    except (coordination.ToozInvalidArgument, ValueError, coordination.NoMatches) as e:
        raise _Exit(EXIT_USAGE, "bad backend URL: %s" % e)
    except (tooz.ToozError, RuntimeError, LookupError, TypeError) as e:
        raise _Exit(EXIT_USAGE, "cannot use backend URL: %s" % e)
    try:
        coord.start(start_heart=start_heart)
    except tooz.ToozError as e:
        raise _Exit(EXIT_BACKEND, "cannot reach the backend: %s" % e)
    return coord


def _stop(coord):
    try:
        coord.stop()
    except tooz.ToozError:
        pass


class _Signals:
    """SIGINT/SIGTERM/SIGHUP raise KeyboardInterrupt (remembering which) while installed."""

    def __init__(self):
        self.received = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signum
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def cmd_lock(args):
    if not args.command:
        raise _Exit(EXIT_USAGE, "no command given (tooz lock URL NAME -- COMMAND [ARGS...])")
    coord = _connect(args.url, args.member_id, start_heart=True)
    child = None
    lock = None
    with _Signals() as signals:
        try:
            lock = coord.get_lock(_id(args.name))
            blocking = True if args.timeout is None else args.timeout
            if not lock.acquire(blocking=blocking):
                raise _Exit(EXIT_NOT_ACQUIRED, "lock %r not acquired within %ss" % (args.name, args.timeout))
            try:
                child = subprocess.Popen(args.command)
            except OSError as e:
                raise _Exit(127, "cannot run %s: %s" % (args.command[0], e))
            while True:
                try:
                    status = child.wait()
                    return 128 - status if status < 0 else status
                except KeyboardInterrupt:
                    # Pass the signal on; release once the command is gone.
                    sig = signals.received or signal.SIGINT
                    if child.poll() is None:
                        child.send_signal(sig)
                    try:
                        child.wait(10)
                    except subprocess.TimeoutExpired:
                        child.kill()
                        child.wait()
                    return 128 + sig
        except KeyboardInterrupt:
            return 128 + (signals.received or signal.SIGINT)
        except tooz.ToozError as e:
            raise _Exit(EXIT_BACKEND, "lock %r: %s" % (args.name, e))
        finally:
            if lock is not None and lock.acquired:
                try:
                    lock.release()
                except tooz.ToozError:
                    pass
            _stop(coord)


def cmd_groups(args):
    coord = _connect(args.url)
    try:
        for group in sorted(coord.get_groups().get(), key=_text):
            print(_text(group))
    except tooz.NotImplemented:
        raise _Exit(EXIT_USAGE, "this backend has no groups")
    finally:
        _stop(coord)
    return 0


def cmd_members(args):
    coord = _connect(args.url)
    try:
        group = _id(args.group)
        try:
            members = coord.get_members_with_capabilities(group).get()
        except tooz.NotImplemented:
            members = {m: None for m in coord.get_members(group).get()}
        if args.json:
            print(json.dumps({_text(m): _jsonable(c) for m, c in members.items()}, sort_keys=True))
        else:
            for member in sorted(members, key=_text):
                caps = members[member]
                print(_text(member) if caps in (None, b"", {}) else "%s %s" % (_text(member), json.dumps(_jsonable(caps))))
    except coordination.GroupNotCreated:
        raise _Exit(EXIT_NOT_ACQUIRED, "group %r does not exist" % args.group)
    except tooz.NotImplemented:
        raise _Exit(EXIT_USAGE, "this backend has no group members")
    finally:
        _stop(coord)
    return 0


def cmd_leader(args):
    coord = _connect(args.url)
    try:
        leader = coord.get_leader(_id(args.group)).get()
    except tooz.NotImplemented:
        raise _Exit(EXIT_USAGE, "this backend cannot tell who leads a group")
    finally:
        _stop(coord)
    if leader is None:
        raise _Exit(EXIT_NOT_ACQUIRED, "group %r has no leader" % args.group)
    print(_text(leader))
    return 0


def cmd_watch(args):
    coord = _connect(args.url)
    group = _id(args.group)

    def say(kind, member):
        print("%s %s %s" % (time.strftime("%Y-%m-%dT%H:%M:%S"), kind, _text(member)), flush=True)

    with _Signals():
        try:
            try:
                coord.watch_join_group(group, lambda e: say("joined", e.member_id))
                coord.watch_leave_group(group, lambda e: say("left", e.member_id))
            except tooz.NotImplemented:
                raise _Exit(EXIT_USAGE, "this backend has no group members to watch")
            leader = None
            can_lead = True
            while True:
                coord.run_watchers()
                if can_lead:
                    try:
                        now = coord.get_leader(group).get()
                    except tooz.NotImplemented:
                        can_lead = False
                    else:
                        if now != leader and now is not None:
                            say("leader", now)
                        leader = now
                time.sleep(args.interval)
        except KeyboardInterrupt:
            return 0
        except coordination.GroupNotCreated:
            raise _Exit(EXIT_NOT_ACQUIRED, "group %r does not exist" % args.group)
        except tooz.ToozError as e:
            raise _Exit(EXIT_BACKEND, str(e))
        finally:
            _stop(coord)


def _parser():
    parser = argparse.ArgumentParser(prog="tooz", description="Distributed locks, groups and leaders from a shell.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also print the core's log records (connection loss, failover, lost locks) to stderr")
    sub = parser.add_subparsers(dest="action", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("lock", help="run a command while holding a lock",
                       usage="tooz lock [-h] [--timeout S] [--member-id ID] URL NAME -- COMMAND [ARGS...]",
                       description="Run COMMAND while holding lock NAME (released when it ends, fails or is "
                                   "interrupted); exits with COMMAND's status, or 1 if the lock was not acquired "
                                   "within --timeout.")
    p.add_argument("url")
    p.add_argument("name")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for the lock (default: forever)")
    p.add_argument("--member-id", default=None, help="member id of this process (default: tooz-cli-HOST-PID)")
    p.set_defaults(run=cmd_lock)

    p = sub.add_parser("groups", help="list the groups", description="List the groups, one per line.")
    p.add_argument("url")
    p.set_defaults(run=cmd_groups)

    p = sub.add_parser("members", help="list a group's members",
                       description="List GROUP's members with their capabilities.")
    p.add_argument("url")
    p.add_argument("group")
    p.add_argument("--json", action="store_true", help="one JSON object: member -> capabilities")
    p.set_defaults(run=cmd_members)

    p = sub.add_parser("leader", help="print a group's leader", description="Print GROUP's leader.")
    p.add_argument("url")
    p.add_argument("group")
    p.set_defaults(run=cmd_leader)

    p = sub.add_parser("watch", help="print a group's changes as they happen",
                       description="Print joins, leaves and leader changes of GROUP until interrupted.")
    p.add_argument("url")
    p.add_argument("group")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between looks (default 0.5)")
    p.set_defaults(run=cmd_watch)
    return parser


def _log_to_stderr(verbose):
    """Failures are reported by the command itself, in one line: the core's own records of
    them (``connection lost … will reconnect``) go to stderr only with ``--verbose``."""
    logger = logging.getLogger("tooz")
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    else:
        logger.addHandler(logging.NullHandler())


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" is the command of `tooz lock`, options included.
    command = []
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1:]
    args = _parser().parse_args(argv)
    args.command = command
    _log_to_stderr(args.verbose)
    try:
        return args.run(args)
    except _Exit as e:
        print("tooz: %s" % e, file=sys.stderr)
        return e.code
    except tooz.ToozError as e:
        print("tooz: %s" % e, file=sys.stderr)
        return EXIT_BACKEND


if __name__ == "__main__":
    sys.exit(main())
