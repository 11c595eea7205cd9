"""The Lua scripts of the Redis store, one per op that reads and writes.

Each script is the Lua twin of a step in :mod:`sbc.state.algorithms` or of a method of
:class:`sbc.state.memory.MemoryStore`, and must stay so: the contract suite runs both stores with
the same explicit times and asserts identical results.  Rules the scripts follow:

* ``ARGV[1]`` is the caller's ``now`` (Python ``repr``: Lua's ``tonumber`` reads it back exactly).
  No script reads the server clock (``TIME``): every node decides with the time its caller gave.
* Numbers go back to Python as ``%.17g`` text (a Lua number returned as a number would be
  truncated to an integer by Redis).
* Every key a script touches is in ``KEYS`` and shares one hash tag, so a script runs on Redis
  Cluster (no CROSSSLOT).  Bans and their index share the fixed tag ``{bans}``.
* Redis TTLs are garbage collection only: each record stores its own logical expiry, and the TTL
  is that expiry plus ``GC_SLACK`` seconds, relative to ``now`` (``PEXPIRE``, never
  ``PEXPIREAT``: the server clock is not the callers' clock), so a node whose clock runs a few
  seconds behind another's never finds a record collected early.
"""

from __future__ import annotations

GC_SLACK = 5.0  # seconds kept beyond a record's logical expiry (clock skew between nodes)

_PRELUDE = """
local function fmt(x) return string.format('%.17g', x) end
local function gc(key, expires_at, now)
  local ms = math.ceil((expires_at - now + """ + repr(GC_SLACK) + """) * 1000)
  if expires_at ~= expires_at or ms >= 1e15 then
    redis.call('PERSIST', key)
  elseif ms > 0 then
    redis.call('PEXPIRE', key, string.format('%d', ms))
  else
    redis.call('DEL', key)
  end
end
local now = tonumber(ARGV[1])
"""

# The three counters store their logical expiry in field 'x' and, like the memory store, treat
# a record whose expiry has passed as absent, write their state back after every hit (refused
# or not), and delete it instead when its new expiry is already past (a full bucket).
_COUNTER_PRELUDE = _PRELUDE + """
local function load(key, ...)
  local s = redis.call('HMGET', key, 'x', ...)
  local x = tonumber(s[1])
  if (not x) or x <= now then return nil end
  return s
end
local function save(key, expires_at, ...)
  if expires_at <= now then
    redis.call('DEL', key)
  else
    redis.call('HSET', key, 'x', fmt(expires_at), ...)
    gc(key, expires_at, now)
  end
end
"""

# KEYS: record.  ARGV: now, window, limit, cost.  -> {allowed, index, count}
FIXED_WINDOW = _COUNTER_PRELUDE + """
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local index = math.floor(now / window)
local count = 0
local s = load(KEYS[1], 'i', 'c')
if s and tonumber(s[2]) == index then count = tonumber(s[3]) end
local allowed = 0
if count + cost <= limit then
  allowed = 1
  count = count + cost
end
save(KEYS[1], index * window + window, 'i', fmt(index), 'c', fmt(count))
return {allowed, fmt(index), fmt(count)}
"""

# KEYS: record.  ARGV: now, window, limit, cost.  -> {allowed, index, current, previous}
SLIDING_WINDOW = _COUNTER_PRELUDE + """
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local index = math.floor(now / window)
local current, previous = 0, 0
local s = load(KEYS[1], 'i', 'c', 'p')
if s then
  local stored = tonumber(s[2])
  if stored == index then
    current = tonumber(s[3])
    previous = tonumber(s[4])
  elseif stored == index - 1 then
    previous = tonumber(s[3])
  end
end
local start = index * window
local weight = (window - (now - start)) / window
local allowed = 0
if previous * weight + current + cost <= limit then
  allowed = 1
  current = current + cost
end
save(KEYS[1], index * window + 2 * window,
  'i', fmt(index), 'c', fmt(current), 'p', fmt(previous))
return {allowed, fmt(index), fmt(current), fmt(previous)}
"""

# KEYS: record.  ARGV: now, rate, burst, cost.  -> {allowed, tokens, stamp}
TOKEN_BUCKET = _COUNTER_PRELUDE + """
local rate = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local tokens, stamp = burst, now
local s = load(KEYS[1], 't', 's')
if s then
  tokens = tonumber(s[2])
  stamp = tonumber(s[3])
  if now > stamp then
    tokens = math.min(burst, tokens + (now - stamp) * rate)
    stamp = now
  end
end
local allowed = 0
if tokens >= cost then
  allowed = 1
  tokens = tokens - cost
end
save(KEYS[1], stamp + (burst - tokens) / rate, 't', fmt(tokens), 's', fmt(stamp))
return {allowed, fmt(tokens), fmt(stamp)}
"""

# KEYS: members (zset: member -> last seen), expiry (string).  ARGV: now, member, window, limit.
# -> {allowed, count, new, oldest}.  The twin of algorithms.distinct_step: the set is absent
# past its logical expiry (its newest member's last sighting + window), members last seen a
# window ago or more are dropped, then the oldest beyond ``limit`` (a lowered limit).
DISTINCT = _PRELUDE + """
local window = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local x = tonumber(redis.call('GET', KEYS[2]))
if (not x) or x <= now then redis.call('DEL', KEYS[1]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', fmt(now - window))
local held = redis.call('ZCARD', KEYS[1])
if held > limit then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, held - limit - 1)
  held = limit
end
local allowed, new, count = 1, 0, held
local seen = redis.call('ZSCORE', KEYS[1], ARGV[2])
if seen then
  if now > tonumber(seen) then redis.call('ZADD', KEYS[1], fmt(now), ARGV[2]) end
elseif held < limit then
  redis.call('ZADD', KEYS[1], fmt(now), ARGV[2])
  new, count = 1, held + 1
else
  allowed, new, count = 0, 1, held + 1
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if not first[2] then
  redis.call('DEL', KEYS[1], KEYS[2])
  return {allowed, count, new, '0'}
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local expires_at = tonumber(last[2]) + window
redis.call('SET', KEYS[2], fmt(expires_at))
gc(KEYS[1], expires_at, now)
gc(KEYS[2], expires_at, now)
return {allowed, count, new, first[2]}
"""

_BAN_FIELDS = "'u', 'l', 'r', 'e', 's', 'f'"  # until, level, reason, evidence, set at, forget at

# KEYS: record, index.  ARGV: now, duration, factor, max_duration, decay, reason, evidence,
# channel, key.  -> {created, until, level, reason, evidence, set_at, forget_at}
SET_BAN = _PRELUDE + """
local r = redis.call('HMGET', KEYS[1], """ + _BAN_FIELDS + """)
local until_ = tonumber(r[1])
if until_ and until_ > now then
  return {0, r[1], r[2], r[3], r[4], r[5], r[6]}
end
local duration = tonumber(ARGV[2])
local factor = tonumber(ARGV[3])
local max_duration = tonumber(ARGV[4])
local decay = tonumber(ARGV[5])
local prior = 0
local forget = tonumber(r[6])
if forget and forget > now then prior = tonumber(r[2]) end
local level = prior + 1
local seconds = duration * factor ^ (level - 1)
if max_duration > 0 and seconds > max_duration then seconds = max_duration end
until_ = now + seconds
forget = until_ + decay
redis.call('HSET', KEYS[1], 'u', fmt(until_), 'l', level, 'r', ARGV[6], 'e', ARGV[7],
  's', ARGV[1], 'f', fmt(forget))
gc(KEYS[1], forget, now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
redis.call('ZADD', KEYS[2], fmt(until_), ARGV[9])
redis.call('PUBLISH', ARGV[8],
  cjson.encode({k = ARGV[9], u = fmt(until_), l = level, r = ARGV[6]}))
return {1, fmt(until_), level, ARGV[6], ARGV[7], ARGV[1], fmt(forget)}
"""

# KEYS: record, index.  ARGV: now, forget (0|1), channel, key.
# -> the record before: {until, level, reason, evidence, set_at, forget_at}
CLEAR_BAN = _PRELUDE + """
local r = redis.call('HMGET', KEYS[1], """ + _BAN_FIELDS + """)
if ARGV[2] == '1' then
  redis.call('DEL', KEYS[1])
elseif r[1] and tonumber(r[1]) > now then
  redis.call('HSET', KEYS[1], 'u', ARGV[1])
end
redis.call('ZREM', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[3], cjson.encode({k = ARGV[4], u = '0', l = 0, r = ''}))
return r
"""

# KEYS: record.  ARGV: now, until ('inf' for ever), reason.
SET_TRUST = _PRELUDE + """
redis.call('HSET', KEYS[1], 'u', ARGV[2], 'r', ARGV[3])
gc(KEYS[1], tonumber(ARGV[2]), now)
return 1
"""

_LEASE_PRELUDE = _PRELUDE + """
local function prune(key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[1])
end
local function collect(key)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if last[2] then gc(key, tonumber(last[2]), now) end
end
"""

# KEYS: leases.  ARGV: now, lease_id, limit, ttl.  -> {ok, count, expires_at}
LEASE_ACQUIRE = _LEASE_PRELUDE + """
prune(KEYS[1])
local held = redis.call('ZSCORE', KEYS[1], ARGV[2])
local count = redis.call('ZCARD', KEYS[1])
if (not held) and count >= tonumber(ARGV[3]) then
  return {0, count, '0'}
end
local expires_at = now + tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], fmt(expires_at), ARGV[2])
if not held then count = count + 1 end
collect(KEYS[1])
return {1, count, fmt(expires_at)}
"""

# KEYS: leases.  ARGV: now, lease_id, ttl.  -> {ok, count, expires_at}
LEASE_RENEW = _LEASE_PRELUDE + """
prune(KEYS[1])
local count = redis.call('ZCARD', KEYS[1])
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  return {0, count, '0'}
end
local expires_at = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], fmt(expires_at), ARGV[2])
collect(KEYS[1])
return {1, count, fmt(expires_at)}
"""

# KEYS: leases.  ARGV: now, lease_id.  -> {released, count}
LEASE_RELEASE = _LEASE_PRELUDE + """
prune(KEYS[1])
local released = redis.call('ZREM', KEYS[1], ARGV[2])
collect(KEYS[1])
return {released, redis.call('ZCARD', KEYS[1])}
"""

# KEYS: leases.  ARGV: now.  -> count
LEASE_COUNT = _LEASE_PRELUDE + """
prune(KEYS[1])
collect(KEYS[1])
return redis.call('ZCARD', KEYS[1])
"""

# KEYS: stats hash (field '' holds the logical expiry).  ARGV: now, field, amount, ttl.
STAT_INCR = _PRELUDE + """
local expires = tonumber(redis.call('HGET', KEYS[1], ''))
if (not expires) or expires <= now then redis.call('DEL', KEYS[1]) end
local value = redis.call('HINCRBY', KEYS[1], ARGV[2], ARGV[3])
local expires_at = now + tonumber(ARGV[4])
redis.call('HSET', KEYS[1], '', fmt(expires_at))
gc(KEYS[1], expires_at, now)
return value
"""

_BINDINGS_PRELUDE = _PRELUDE + """
-- Each field is a binding id; its value is '<expires_at>|<value>'.
local function live(key)
  local all = redis.call('HGETALL', key)
  local out = {}
  local latest = nil
  for i = 1, #all, 2 do
    local v = all[i + 1]
    local sep = string.find(v, '|', 1, true)
    local expires_at = tonumber(string.sub(v, 1, sep - 1))
    if expires_at <= now then
      redis.call('HDEL', key, all[i])
    else
      out[#out + 1] = all[i]
      out[#out + 1] = v
      if (not latest) or expires_at > latest then latest = expires_at end
    end
  end
  if latest then gc(key, latest, now) end
  return out
end
"""

# KEYS: bindings.  ARGV: now, binding_id, value, ttl.  -> flat {id, 'exp|value', ...}
BINDING_PUT = _BINDINGS_PRELUDE + """
redis.call('HSET', KEYS[1], ARGV[2], fmt(now + tonumber(ARGV[4])) .. '|' .. ARGV[3])
return live(KEYS[1])
"""

# KEYS: bindings.  ARGV: now.
BINDING_GET = _BINDINGS_PRELUDE + """
return live(KEYS[1])
"""

# KEYS: bindings.  ARGV: now, binding_id ('' for all).
BINDING_DELETE = _BINDINGS_PRELUDE + """
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('HDEL', KEYS[1], ARGV[2])
end
return live(KEYS[1])
"""

# KEYS: list, expiry.  ARGV: now, data, cap, ttl.  -> length
APPEND_EVENT = _PRELUDE + """
local expires = tonumber(redis.call('GET', KEYS[2]))
if (not expires) or expires <= now then redis.call('DEL', KEYS[1]) end
redis.call('LPUSH', KEYS[1], ARGV[1] .. '|' .. ARGV[2])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[3]) - 1)
local expires_at = now + tonumber(ARGV[4])
redis.call('SET', KEYS[2], fmt(expires_at))
gc(KEYS[1], expires_at, now)
gc(KEYS[2], expires_at, now)
return redis.call('LLEN', KEYS[1])
"""

# KEYS: list, expiry.  ARGV: now, n.  -> {length, 'at|data', ...} newest first
RECENT_EVENTS = _PRELUDE + """
local expires = tonumber(redis.call('GET', KEYS[2]))
if (not expires) or expires <= now then return {0} end
local out = {redis.call('LLEN', KEYS[1])}
for _, item in ipairs(redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)) do
  out[#out + 1] = item
end
return out
"""

ALL = {
    "fixed_window": FIXED_WINDOW,
    "sliding_window": SLIDING_WINDOW,
    "token_bucket": TOKEN_BUCKET,
    "distinct": DISTINCT,
    "set_ban": SET_BAN,
    "clear_ban": CLEAR_BAN,
    "set_trust": SET_TRUST,
    "lease_acquire": LEASE_ACQUIRE,
    "lease_renew": LEASE_RENEW,
    "lease_release": LEASE_RELEASE,
    "lease_count": LEASE_COUNT,
    "stat_incr": STAT_INCR,
    "binding_put": BINDING_PUT,
    "binding_get": BINDING_GET,
    "binding_delete": BINDING_DELETE,
    "append_event": APPEND_EVENT,
    "recent_events": RECENT_EVENTS,
}
