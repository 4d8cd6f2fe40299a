"""The Lua scripts that make shared batches atomic in Redis.

Each script runs atomically on the server, so two workers can never flush the same batch, an item can
never land in two batches, and a redelivered message never does its work twice: every script that
consumes a stream entry first XACKs it and does nothing when XACK says it was acknowledged already.
Time comes from the server (`TIME`), so workers on machines with skewed clocks agree on deadlines (unless the
Flock was given a clock: see `clock`).

Keys (all under one hash tag, so a script's keys share a Redis Cluster slot):
    t:<type>            stream of published artifacts of one type (field `a`: artifact JSON)
    ids                 hash: artifact id -> "<type stream> <entry id>" (deduplicates retried publishes)
    b:<member>          list: the artifact JSON of one accumulating batch
    deadlines           sorted set: batch member -> deadline (ms, server time)
    opened              hash: batch member -> when its first item arrived (ms, server time)
    r:<agent,sub>       stream of flushed batches ready to run (consumer group "workers")
    seq                 counter of batch ids (and of gate/join set ids)
    sets:<member>       sorted set: open gate/join sets -> time-window deadline (ms) or first arrival number
    sets:<member>:k:<key>   list: the open sets of one key, oldest first
    sets:<member>:s:<id>    hash: one open set: slot position -> artifact JSON, "key", "filled", "tokens"
    sets:<member>:n     counter of arrivals (count windows)
"""

from __future__ import annotations

__all__ = [
    "ADD",
    "COMMIT",
    "DUE",
    "FLUSH",
    "FORGET_CONSUMERS",
    "PUBLISH",
    "RATE_TAKE",
    "RATE_SETTLE",
    "SETS_DUE",
    "SLOTS",
    "TRIM",
]

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

_CALLER_NOW = """
local now = tonumber(table.remove(ARGV, 1))
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""
"""The batch and set scripts take their time as a first argument (ms; "" for the server's `TIME`), so a clock
injected into the Flock decides their deadlines (see `clock`); the remaining ARGV are numbered from 1."""

_PUBLISH_ONE = """
local function publish(ids, stream, id, doc)
  if redis.call('HEXISTS', ids, id) == 1 then return 0 end
  local entry = redis.call('XADD', stream, '*', 'a', doc)
  redis.call('HSET', ids, id, stream .. ' ' .. entry)
  return 1
end
"""

_FLUSH_ONE = """
local function flush(list, deadlines, opened, ready, seq, member, reason, size, now)
  local items = redis.call('LRANGE', list, 0, -1)
  redis.call('DEL', list)
  redis.call('ZREM', deadlines, member)
  local opened_at = redis.call('HGET', opened, member) or now
  local tokens = redis.call('HGET', opened, member .. '#tokens') or 0
  redis.call('HDEL', opened, member, member .. '#tokens')
  local batch = redis.call('INCR', seq)
  redis.call('XADD', ready, '*', 'batch', batch, 'key', member, 'reason', reason, 'size', size,
             'opened', opened_at, 'flushed', now, 'tokens', tokens, 'items', table.concat(items, '\\n'))
  return batch
end
"""

PUBLISH = (
    _PUBLISH_ONE
    + """
-- KEYS: ids, then one type stream per artifact; ARGV: id, json pairs in the same order
local added = 0
for i = 2, #KEYS do
  added = added + publish(KEYS[1], KEYS[i], ARGV[2 * i - 3], ARGV[2 * i - 2])
end
return added
"""
)
"""Publish artifacts once each; returns how many were new."""

_ADD_ITEM = """
local function add_item(list, deadlines, opened, ready, seq, member, item, tokens, size, timeout, budget, now)
  local flushed, counted = 0, member .. '#tokens'
  if budget > 0 and redis.call('LLEN', list) > 0
      and tonumber(redis.call('HGET', opened, counted) or '0') + tokens > budget then
    flush(list, deadlines, opened, ready, seq, member, 'tokens', size, now)
    flushed = flushed + 1
  end
  local n = redis.call('RPUSH', list, item)
  local held = 0
  if budget > 0 then held = redis.call('HINCRBY', opened, counted, tokens) end
  if n == 1 then
    redis.call('HSET', opened, member, now)
    if timeout > 0 then redis.call('ZADD', deadlines, now + timeout, member) end
  end
  if size > 0 and n >= size then
    flush(list, deadlines, opened, ready, seq, member, 'size', size, now)
    flushed = flushed + 1
  elseif budget > 0 and held >= budget then
    flush(list, deadlines, opened, ready, seq, member, 'tokens', size, now)
    flushed = flushed + 1
  end
  return flushed
end
"""

ADD = (
    _CALLER_NOW
    + _FLUSH_ONE
    + _ADD_ITEM
    + """
-- KEYS: intake stream, batch list, deadlines, opened, ready stream, seq
-- ARGV: group, member, size (0: none), timeout ms (0: none), token budget (0: none),
--       then entry id, artifact json, tokens triples
local size, timeout, budget = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local added, flushed = 0, 0
for i = 6, #ARGV, 3 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    added = added + 1
    flushed = flushed + add_item(KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[2], ARGV[i + 1],
                                 tonumber(ARGV[i + 2]), size, timeout, budget, now)
  end
end
local deadline = redis.call('ZSCORE', KEYS[3], ARGV[2])
return {added, flushed, now, deadline and tonumber(deadline) or -1}
"""
)
"""Move delivered entries into their shared batch, acknowledging each in the same step (an entry acknowledged
already is skipped: it was added before), flushing the batch each time it fills, and before an entry that would
take its running token sum (kept in `opened` under "<member>#tokens") over the budget.
Returns {added, flushed, server now, open batch's deadline or -1}."""

FLUSH = (
    _CALLER_NOW
    + _FLUSH_ONE
    + """
-- KEYS: batch list, deadlines, opened, ready stream, seq; ARGV: member, size, reason ('' = only when due)
if ARGV[3] ~= '' then
  if redis.call('LLEN', KEYS[1]) == 0 then return {0} end
  return {2, flush(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[3], ARGV[2], now)}
end
local deadline = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not deadline then return {0} end
if tonumber(deadline) > now then return {1, now, tonumber(deadline)} end
if redis.call('LLEN', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {0}
end
return {2, flush(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], 'timeout', ARGV[2], now)}
"""
)
"""Flush one batch if its deadline passed (or at once, with a reason). Returns {0} (nothing to flush),
{1, now, deadline} (not due yet) or {2, batch id}."""

DUE = (
    _CALLER_NOW
    + """
-- KEYS: deadlines
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1000)
"""
)
"""The batches whose deadline has passed, by server time."""

COMMIT = (
    _PUBLISH_ONE
    + """
-- KEYS: receipt stream, ids, then one type stream per output
-- ARGV: group, entry id, delete entry (1/0), then id, json pairs
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return -1 end
if ARGV[3] == '1' then redis.call('XDEL', KEYS[1], ARGV[2]) end
local added = 0
for i = 3, #KEYS do
  added = added + publish(KEYS[2], KEYS[i], ARGV[2 * i - 2], ARGV[2 * i - 1])
end
return added
"""
)
"""Finish a run: acknowledge what it consumed and publish its outputs, together, once. Returns -1 when the
entry was acknowledged already (another worker committed this run), else how many outputs were new."""

TRIM = """
-- KEYS: type stream, ids; ARGV: bound (entries strictly older are removed), at most this many
local entries = redis.call('XRANGE', KEYS[1], '-', '(' .. ARGV[1], 'COUNT', tonumber(ARGV[2]))
for _, entry in ipairs(entries) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'a' then redis.call('HDEL', KEYS[2], cjson.decode(fields[i + 1])[1]) end
  end
  redis.call('XDEL', KEYS[1], entry[1])
end
return #entries
"""
"""Forget the oldest artifacts of one type (and their ids), below a bound the caller made safe."""

FORGET_CONSUMERS = """
-- KEYS: stream; ARGV: group, idle ms, the calling consumer
local removed = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  if info['pending'] == 0 and info['idle'] > tonumber(ARGV[2]) and info['name'] ~= ARGV[3] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed = removed + 1
  end
end
return removed
"""
"""Remove consumers (processes that left) idle that long with nothing pending; checked and removed in one
step, so no entry can slip into a consumer being removed. A live consumer removed anyway is recreated by
its next read."""

_SET_PARTS = """
local function take_set(sets, id)
  local h = sets .. ':s:' .. id
  local key = redis.call('HGET', h, 'key')
  local fields = redis.call('HGETALL', h)
  local docs = {}
  for i = 1, #fields, 2 do
    if fields[i] ~= 'key' and fields[i] ~= 'filled' and fields[i] ~= 'tokens' then docs[#docs + 1] = fields[i + 1] end
  end
  redis.call('DEL', h)
  redis.call('ZREM', sets, id)
  if key then redis.call('LREM', sets .. ':k:' .. key, 1, id) end
  return {key or '', docs}
end
"""

SLOTS = (
    _CALLER_NOW
    + _FLUSH_ONE
    + _ADD_ITEM
    + _SET_PARTS
    + """
-- KEYS: intake stream, batch list, deadlines, opened, ready stream, seq, sets zset, arrivals counter
-- ARGV: group, member, size, timeout ms, window kind ('t' time, 'c' count, 'n' none), window (ms or count),
--       slot types (JSON array), direct ('1': completed sets run on their own, not batched), token budget,
--       then entry id, artifact json, type name, key json, tokens quints
local size, timeout = tonumber(ARGV[3]), tonumber(ARGV[4])
local kind, window = ARGV[5], tonumber(ARGV[6])
local slots = cjson.decode(ARGV[7])
local direct = ARGV[8] == '1'
local budget = tonumber(ARGV[9])
local sets = KEYS[7]
local completed, expired = 0, {}
for i = 10, #ARGV, 5 do
  local entry, doc, tname, key, tokens = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4])
  if redis.call('XACK', KEYS[1], ARGV[1], entry) == 1 then
    local arrival = redis.call('INCR', KEYS[8])
    if kind == 'c' then  -- count windows close on arrivals at this subscription
      for _, old in ipairs(redis.call('ZRANGEBYSCORE', sets, '-inf', arrival - window)) do
        expired[#expired + 1] = take_set(sets, old)
      end
    end
    local open = sets .. ':k:' .. key
    local target, position = nil, nil
    for _, id in ipairs(redis.call('LRANGE', open, 0, -1)) do
      for p = 1, #slots do
        if slots[p] == tname and redis.call('HEXISTS', sets .. ':s:' .. id, p) == 0 then
          target, position = id, p
          break
        end
      end
      if target then break end
    end
    if not target then
      target = tostring(redis.call('INCR', KEYS[6]))
      for p = 1, #slots do
        if slots[p] == tname then position = p break end
      end
      redis.call('RPUSH', open, target)
      redis.call('HSET', sets .. ':s:' .. target, 'key', key, 'filled', 0)
      if kind == 't' then redis.call('ZADD', sets, now + window, target)
      else redis.call('ZADD', sets, arrival, target) end
    end
    local h = sets .. ':s:' .. target
    redis.call('HSET', h, position, doc)
    redis.call('HINCRBY', h, 'tokens', tokens)
    if redis.call('HINCRBY', h, 'filled', 1) == #slots then
      local docs = {}
      for p = 1, #slots do docs[p] = redis.call('HGET', h, p) end
      local set_tokens = tonumber(redis.call('HGET', h, 'tokens') or '0')
      redis.call('DEL', h)
      redis.call('ZREM', sets, target)
      redis.call('LREM', open, 1, target)
      completed = completed + 1
      local item = cjson.encode(docs)
      if direct then
        local set_id = redis.call('INCR', KEYS[6])
        redis.call('XADD', KEYS[5], '*', 'batch', set_id, 'key', ARGV[2], 'reason', '', 'size', 0,
                   'opened', now, 'flushed', now, 'direct', '1', 'items', item)
      else
        add_item(KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[2], item, set_tokens, size, timeout, budget, now)
      end
    end
  end
end
local deadline = redis.call('ZSCORE', KEYS[3], ARGV[2])
return {completed, now, deadline and tonumber(deadline) or -1, expired}
"""
)
"""Place delivered entries in the oldest open gate/join set of their key with a free slot of their type,
acknowledging each in the same step; a completed set becomes ONE item of the shared batch (or a direct run).
Count windows expire here. Returns {completed, server now, open batch's deadline or -1, expired sets}, an
expired set being {key json, {artifact json, ...}}."""

SETS_DUE = (
    _CALLER_NOW
    + _SET_PARTS
    + """
-- KEYS: sets zset; expires the time-window sets whose deadline passed (server time)
local expired = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 500)) do
  expired[#expired + 1] = take_set(KEYS[1], id)
end
return expired
"""
)
"""Close the time-window sets of one subscription whose window passed; returns them as {key json, docs}."""

RATE_TAKE = (
    _NOW
    + """
-- KEYS: window zset (entry -> time ms), amounts hash (entry -> amount), entry counter, the window's limit
-- ARGV: limit, amount
local limit, amount = tonumber(ARGV[1]), tonumber(ARGV[2])
local agreed = redis.call('GET', KEYS[4])
if agreed and tonumber(agreed) ~= limit then return {-1, agreed} end
redis.call('SET', KEYS[4], limit, 'PX', 120000)
for _, old in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - 60000)) do
  redis.call('HDEL', KEYS[2], old)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
local used = 0
for _, v in ipairs(redis.call('HVALS', KEYS[2])) do used = used + tonumber(v) end
if used + amount <= limit or used <= 0 then
  local entry = tostring(redis.call('INCR', KEYS[3]))
  redis.call('ZADD', KEYS[1], now, entry)
  redis.call('HSET', KEYS[2], entry, amount)
  for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, 120000) end
  return {1, entry}
end
local excess = used + amount - limit
local need = math.min(excess, used)
local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #members, 2 do
  excess = excess - tonumber(redis.call('HGET', KEYS[2], members[i]) or '0')
  if excess <= 0 then return {0, tonumber(members[i + 1]) + 60000 - now, need} end
end
return {0, 60000, need}
"""
)
"""Take `amount` from a sliding-minute window when it fits (or the window is empty): {1, entry id}; else
{0, milliseconds until it would fit, the room it lacks}; {-1, limit} when the window has another limit (a worker
configured otherwise: refused, not mixed). By the server's clock, so every worker process agrees."""

RATE_SETTLE = (
    _NOW
    + """
-- KEYS: window zset, amounts hash; ARGV: entry, actual amount
local held = redis.call('HGET', KEYS[2], ARGV[1])
if not held then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return math.max(0, tonumber(held) - tonumber(ARGV[2]))
"""
)
"""Replace a window entry's amount with the real one, at the server's current time; returns the room it freed
(what it held beyond the real amount; 0 when it expired meanwhile)."""
