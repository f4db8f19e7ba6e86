//! The Lua scripts that make each step of the protocol atomic on the server. Every step that
//! reads or acknowledges a partition's entries checks its lease first, so a member that lost
//! the lease (it paused past its time to live) can neither take entries nor acknowledge them.

use redis::Script;
use std::sync::OnceLock;

macro_rules! script {
    ($name:ident, $source:expr) => {
        pub(crate) fn $name() -> &'static Script {
            static SCRIPT: OnceLock<Script> = OnceLock::new();
            SCRIPT.get_or_init(|| Script::new($source))
        }
    };
}

// KEYS: lease, epoch counter. ARGV: member, time to live (ms).
// Returns the new epoch, or 0 while someone holds the lease.
script!(
    take,
    r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local epoch = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '/' .. epoch, 'PX', ARGV[2])
return epoch
"
);

// KEYS: lease. ARGV: token, time to live (ms). Returns 1 if renewed, 0 if the lease is gone.
script!(
    renew,
    r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"
);

// KEYS: lease. ARGV: token. Returns 1 if released, 0 if it was not ours any more.
script!(
    release,
    r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"
);

// KEYS: lease, stream. ARGV: token, group, consumer, count, id (an id replays the pending
// list after it, '>' reads new entries). Returns nil without the lease, else the group's last
// delivered id (only when no entry came, '' otherwise: what a blocking XREAD waits after) and
// the entries.
script!(
    read,
    r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
local reply = redis.call('XREADGROUP', 'GROUP', ARGV[2], ARGV[3], 'COUNT', ARGV[4],
    'STREAMS', KEYS[2], ARGV[5])
local entries = reply and reply[1][2] or {}
local last = ''
if #entries == 0 then
    for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[2])) do
        local fields = {}
        for i = 1, #group, 2 do fields[group[i]] = group[i + 1] end
        if fields['name'] == ARGV[2] then last = fields['last-delivered-id'] end
    end
end
return {last, entries}
"
);

// KEYS: lease, stream, acked counter. ARGV: token, group, ids...
// Returns how many were acknowledged, or -1 without the lease.
script!(
    ack,
    r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local acked = redis.call('XACK', KEYS[2], ARGV[2], unpack(ARGV, 3))
redis.call('INCRBY', KEYS[3], acked)
return acked
"
);

// KEYS: lease, stream, acked counter, dead stream.
// ARGV: token, group, id, key, payload, error, attempts, partition.
// Acknowledges the entry and appends it to the dead letters, or returns -1 without the lease.
// The dead letters' type is checked first: a script's writes are not undone by a later error.
script!(
    dead,
    r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local kind = redis.call('TYPE', KEYS[4])['ok']
if kind ~= 'stream' and kind ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[4] .. ' holds a ' .. kind .. ', not a stream')
end
local acked = redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])
if acked == 1 then
    redis.call('XADD', KEYS[4], '*', 'key', ARGV[4], 'payload', ARGV[5], 'error', ARGV[6],
        'attempts', ARGV[7], 'partition', ARGV[8], 'id', ARGV[3])
    redis.call('INCRBY', KEYS[3], 1)
end
return acked
"
);

// KEYS: members. ARGV: member, time to live (ms), '1' to leave.
// Drops the members whose time ran out, renews (or removes) this one, returns the live ones.
script!(
    heartbeat,
    r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[3] == '1' then
    redis.call('ZREM', KEYS[1], ARGV[1])
else
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
end
return redis.call('ZRANGE', KEYS[1], 0, -1)
"
);

// KEYS: stream. ARGV: group.
// Trims the entries that can never be read again: those before the oldest pending one, or
// before the last delivered when none is pending. Both only grow, so a floor computed a moment
// ago is still safe; returns how many were trimmed.
script!(
    trim,
    r"
local last = nil
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local fields = {}
    for i = 1, #group, 2 do fields[group[i]] = group[i + 1] end
    if fields['name'] == ARGV[1] then last = fields['last-delivered-id'] end
end
if not last then return 0 end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1])
local floor = last
if pending[1] > 0 then floor = pending[2] end
return redis.call('XTRIM', KEYS[1], 'MINID', '~', floor)
"
);
