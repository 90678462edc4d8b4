-- A rate limit shared by every process: a token bucket of requests, one of model tokens, a
-- concurrency cap and a pause (a provider's 429 Retry-After), on the server's clock.
--
-- KEYS[1] the limit's hash: r (request tokens), rt (when r was refilled, ms), k (model
--         tokens), kt, pause (until, ms)
-- KEYS[2] its slots: a sorted set of holder -> when the slot lapses (ms)
-- ARGV[1] 'acquire' | 'release' | 'pause'
-- acquire: ARGV[2] requests per second (0: none)  ARGV[3] burst  ARGV[4] tokens per second
--          (0: none)  ARGV[5] token burst  ARGV[6] concurrency (0: none)  ARGV[7] holder
--          ARGV[8] slot ttl (ms)  ARGV[9..] holders provably dead (their slots are dropped)
--          Returns {1, 0} when taken, else {0, ms to wait before trying again, why}; when the
--          slots are all held, {0, ms, 'concurrency', holder...} (the caller may prove some
--          dead and ask again with them)
-- release: ARGV[2] holder  ARGV[3] model tokens the request used (taken from the bucket)
-- pause:   ARGV[3] seconds from now (on the server's clock; ARGV[2] unused)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op = ARGV[1]
if op == 'pause' then
  local untill = now + math.floor(tonumber(ARGV[3]) * 1000)
  local cur = tonumber(redis.call('HGET', KEYS[1], 'pause') or '0')
  if untill > cur then redis.call('HSET', KEYS[1], 'pause', untill) end
  redis.call('PEXPIRE', KEYS[1], math.max(untill - now, 0) + 3600000)
  return untill - now
end
if op == 'release' then
  redis.call('ZREM', KEYS[2], ARGV[2])
  local used = tonumber(ARGV[3])
  if used > 0 then
    local k = tonumber(redis.call('HGET', KEYS[1], 'k') or 'nil')
    if k then redis.call('HSET', KEYS[1], 'k', k - used) end
  end
  return 1
end
local pause = tonumber(redis.call('HGET', KEYS[1], 'pause') or '0')
if pause > now then return {0, pause - now, 'paused'} end
local cap = tonumber(ARGV[6])
if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  for i = 9, #ARGV do redis.call('ZREM', KEYS[2], ARGV[i]) end
  if redis.call('ZCARD', KEYS[2]) >= cap then
    local reply = {0, 20, 'concurrency'}
    for _, holder in ipairs(redis.call('ZRANGE', KEYS[2], 0, 99)) do reply[#reply + 1] = holder end
    return reply
  end
end
local function refill(field, stamp, rate, burst)
  local level = tonumber(redis.call('HGET', KEYS[1], field) or tostring(burst))
  local since = tonumber(redis.call('HGET', KEYS[1], stamp) or tostring(now))
  return math.min(burst, level + (now - since) * rate / 1000)
end
local rate, burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local r
if rate > 0 then
  r = refill('r', 'rt', rate, burst)
  if r < 1 then return {0, math.ceil((1 - r) * 1000 / rate), 'requests'} end
end
local krate, kburst = tonumber(ARGV[4]), tonumber(ARGV[5])
local k
if krate > 0 then
  k = refill('k', 'kt', krate, kburst)
  if k <= 0 then return {0, math.ceil((1 - k) * 1000 / krate), 'tokens'} end
end
if r then redis.call('HSET', KEYS[1], 'r', tostring(r - 1), 'rt', now) end
if k then redis.call('HSET', KEYS[1], 'k', tostring(k), 'kt', now) end
if cap > 0 then redis.call('ZADD', KEYS[2], now + tonumber(ARGV[8]), ARGV[7]) end
redis.call('PEXPIRE', KEYS[1], 3600000)
redis.call('PEXPIRE', KEYS[2], 3600000)
return {1, 0}
