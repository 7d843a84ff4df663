//! The Lua scripts of the redis driver: each group or lock step that must read and write
//! atomically is one script, run by `EVALSHA` (the multiplexed connection) or `EVAL` with its
//! source (a connection of our own whose server has not cached it, see `link.rs`).

use redis::Script;

const CREATE_GROUP: &str = r#"
if redis.call("exists", KEYS[1]) == 1 then return 0 end
redis.call("sadd", KEYS[2], ARGV[1])
redis.call("hset", KEYS[1], ARGV[2], ARGV[3])
return 1"#;

const DELETE_GROUP: &str = r#"
if redis.call("exists", KEYS[1]) == 0 then return -1 end
if redis.call("sismember", KEYS[2], ARGV[1]) == 0 then return -2 end
if redis.call("hlen", KEYS[1]) > 1 then return -3 end
if redis.call("srem", KEYS[2], ARGV[1]) == 0 then return -4 end
redis.call("del", KEYS[1])
return 1"#;

/// Join without overwriting an existing member's capabilities (upstream overwrites them
/// before reporting MemberAlreadyExist).
const JOIN_GROUP: &str = r#"
if redis.call("exists", KEYS[1]) == 0 then return -1 end
if redis.call("hsetnx", KEYS[1], ARGV[1], ARGV[2]) == 0 then return -2 end
return 1"#;

const LEAVE_GROUP: &str = r#"
if redis.call("exists", KEYS[1]) == 0 then return -1 end
if redis.call("hdel", KEYS[1], ARGV[1]) == 0 then return -2 end
return 1"#;

const UPDATE_CAPABILITIES: &str = r#"
if redis.call("exists", KEYS[1]) == 0 then return -1 end
if redis.call("hexists", KEYS[1], ARGV[1]) == 0 then return -2 end
redis.call("hset", KEYS[1], ARGV[1], ARGV[2])
return 1"#;

/// The remaining TTL (`PTTL`, ms; -2: none, -1: no expiry) of the beat key of each member
/// ARGV[2..] (beat keys are ARGV[1] .. member); members without one are removed from the
/// group KEYS[1]. One batched liveness check (`liveness.rs` says whom to check).
const CHECK_MEMBERS: &str = r#"
local out = {}
for i = 2, #ARGV do
  local t = redis.call("pttl", ARGV[1] .. ARGV[i])
  if t == -2 then redis.call("hdel", KEYS[1], ARGV[i]) end
  out[#out + 1] = t
end
return out"#;

/// Deletes the lock key if it holds ARGV[1]: 0 if it did not, 1 if it did, 2 if it did and
/// live waiters are registered in KEYS[2]. (`replicate_commands`: servers before 5.0 refuse a
/// write after `TIME` without it; later ones always replicate effects.)
const RELEASE_LOCK: &str = r#"
if redis.call("get", KEYS[1]) ~= ARGV[1] then return 0 end
redis.call("del", KEYS[1])
if redis.call("exists", KEYS[2]) == 0 then return 1 end
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call("time")
redis.call("zremrangebyscore", KEYS[2], "-inf", t[1] * 1000 + math.floor(t[2] / 1000))
if redis.call("zcard", KEYS[2]) > 0 then return 2 end
return 1"#;

/// SET NX PX (upstream's acquire, same key and value) and, when it took, the next fencing
/// token from the lock's counter key, in one round trip. When it did not: minus the counter
/// (which tells a waiter whether the lock changed hands since its last try), after
/// registering the token as a waiter for ARGV[3] ms in KEYS[3] (unless ARGV[3] is 0).
const ACQUIRE_LOCK: &str = r#"
if redis.call("set", KEYS[1], ARGV[1], "NX", "PX", ARGV[2]) then
  if ARGV[3] ~= "0" then redis.call("zrem", KEYS[3], ARGV[1]) end
  return redis.call("incr", KEYS[2])
end
if ARGV[3] ~= "0" then
  if redis.replicate_commands then redis.replicate_commands() end
  local t = redis.call("time")
  redis.call("zadd", KEYS[3], t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[3]), ARGV[1])
  redis.call("pexpire", KEYS[3], ARGV[3])
end
return -tonumber(redis.call("get", KEYS[2]) or "0")"#;

/// How long a waiter's entry in `<key>:waiters` lives: beyond its slowest poll.
pub(super) const WAITER_MS: &[u8] = b"250";

const EXTEND_LOCK: &str = r#"
if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("pexpire", KEYS[1], ARGV[2]) end
return 0"#;

/// Every lock key in KEYS that still holds its token (ARGV[i + 1]) gets a TTL of ARGV[1] ms;
/// returns the (1-based) positions of those that did not hold it: one round trip for all the
/// locks a heartbeat extends. (One `MGET` reads them all: half the server's calls of a `GET`
/// per key; the caller keeps KEYS within what `unpack` takes.)
const EXTEND_LOCKS: &str = r#"
local values = redis.call("mget", unpack(KEYS))
local call, keys, argv, ms = redis.call, KEYS, ARGV, ARGV[1]
local lost = {}
for i = 1, #keys do
  if values[i] == argv[i + 1] then
    call("pexpire", keys[i], ms)
  else
    lost[#lost + 1] = i
  end
end
return lost"#;

pub(super) struct Scripts {
    pub(super) create_group: Lua,
    pub(super) delete_group: Lua,
    pub(super) join_group: Lua,
    pub(super) leave_group: Lua,
    pub(super) update_capabilities: Lua,
    pub(super) check_members: Lua,
    pub(super) release_lock: Lua,
    pub(super) extend_lock: Lua,
    pub(super) extend_locks: Lua,
    pub(super) acquire_lock: Lua,
}

/// A Lua script, and its source for `EVAL` when the server has not cached it (a call on a
/// connection of our own, see `link.rs`).
pub(super) struct Lua {
    pub(super) script: Script,
    pub(super) source: &'static str,
}

impl Lua {
    fn new(source: &'static str) -> Lua {
        Lua { script: Script::new(source), source }
    }
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            create_group: Lua::new(CREATE_GROUP),
            delete_group: Lua::new(DELETE_GROUP),
            join_group: Lua::new(JOIN_GROUP),
            leave_group: Lua::new(LEAVE_GROUP),
            update_capabilities: Lua::new(UPDATE_CAPABILITIES),
            check_members: Lua::new(CHECK_MEMBERS),
            release_lock: Lua::new(RELEASE_LOCK),
            extend_lock: Lua::new(EXTEND_LOCK),
            extend_locks: Lua::new(EXTEND_LOCKS),
            acquire_lock: Lua::new(ACQUIRE_LOCK),
        }
    }
}
