"""The Lua scripts that make shared batches atomic in Redis.

Each script runs atomically on the server, so two workers can never flush the same batch, an item can
never land in two batches, and a redelivered message never does its work twice: every script that
consumes a stream entry first XACKs it and does nothing when XACK says it was acknowledged already.
Time comes from the server (`TIME`), so workers on machines with skewed clocks agree on deadlines.

Keys (all under one hash tag, so a script's keys share a Redis Cluster slot):
    t:<type>            stream of published artifacts of one type (field `a`: artifact JSON)
    ids                 hash: artifact id -> "<type stream> <entry id>" (deduplicates retried publishes)
    b:<member>          list: the artifact JSON of one accumulating batch
    deadlines           sorted set: batch member -> deadline (ms, server time)
    opened              hash: batch member -> when its first item arrived (ms, server time)
    r:<agent,sub>       stream of flushed batches ready to run (consumer group "workers")
    seq                 counter of batch ids
"""

from __future__ import annotations

__all__ = ["ADD", "COMMIT", "DUE", "FLUSH", "FORGET_CONSUMERS", "PUBLISH", "TRIM"]

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

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
  redis.call('HDEL', opened, member)
  local batch = redis.call('INCR', seq)
  redis.call('XADD', ready, '*', 'batch', batch, 'key', member, 'reason', reason, 'size', size,
             'opened', opened_at, 'flushed', now, 'items', table.concat(items, '\\n'))
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

ADD = (
    _NOW
    + _FLUSH_ONE
    + """
-- KEYS: intake stream, batch list, deadlines, opened, ready stream, seq
-- ARGV: group, member, size (0: none), timeout ms (0: none), then entry id, artifact json pairs
local size, timeout = tonumber(ARGV[3]), tonumber(ARGV[4])
local added, flushed = 0, 0
for i = 5, #ARGV, 2 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    added = added + 1
    local n = redis.call('RPUSH', KEYS[2], ARGV[i + 1])
    if n == 1 then
      redis.call('HSET', KEYS[4], ARGV[2], now)
      if timeout > 0 then redis.call('ZADD', KEYS[3], now + timeout, ARGV[2]) end
    end
    if size > 0 and n >= size then
      flush(KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[2], 'size', size, now)
      flushed = flushed + 1
    end
  end
end
local deadline = redis.call('ZSCORE', KEYS[3], ARGV[2])
return {added, flushed, now, deadline and tonumber(deadline) or -1}
"""
)
"""Move delivered entries into their shared batch, acknowledging each in the same step (an entry acknowledged
already is skipped: it was added before), flushing the batch each time it fills.
Returns {added, flushed, server now, open batch's deadline or -1}."""

FLUSH = (
    _NOW
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
    _NOW
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
