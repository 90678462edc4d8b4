-- Admit one model request of a budget scope and hold it in flight, atomically
-- (storage._capabilities.Ledger.reserve says the rule).
--
-- KEYS[1] the scope's usage hash (u:<name> -> total)   KEYS[2] its charged hash (unused here)
-- KEYS[3] its held hash: run id -> "<requests> <until, unix ms on this server's clock>"
-- KEYS[4] (standalone Redis only) the scope's set limits hash (name -> limit); on Cluster it is
--         in another slot, and the caller has applied the set limits to the given ones
-- ARGV[1] the run id   ARGV[2] the requests the run holds with this one   ARGV[3] TTL (ms)
-- ARGV[4] N, the number of limits given; ARGV[5 .. 4 + 2N] name, limit, ... (the declared ones)
-- ARGV[5 + 2N ..] name, value, ...: what the run's transition spent and has not committed
--
-- Returns {admitted (1 or 0), {name, used, ...}, {name, limit, ...}}; writes nothing but the
-- removal of lapsed reservations when the request is refused.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key, want, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])

local limits = {}
local rest = 5 + 2 * tonumber(ARGV[4])
for i = 5, rest - 1, 2 do limits[ARGV[i]] = tonumber(ARGV[i + 1]) end
if KEYS[4] then
  local set = redis.call('HGETALL', KEYS[4])
  for i = 1, #set, 2 do limits[set[i]] = tonumber(set[i + 1]) end
end

local used = {}
local totals = redis.call('HGETALL', KEYS[1])
for i = 1, #totals, 2 do
  if string.sub(totals[i], 1, 2) == 'u:' then used[string.sub(totals[i], 3)] = tonumber(totals[i + 1]) end
end
for i = rest, #ARGV, 2 do used[ARGV[i]] = (used[ARGV[i]] or 0) + tonumber(ARGV[i + 1]) end
used['total_tokens'] = (used['input_tokens'] or 0) + (used['output_tokens'] or 0)

-- The other runs' live reservations are in flight; lapsed (or unreadable) ones are dropped.
local mine, last = 0, 0
local held = redis.call('HGETALL', KEYS[3])
for i = 1, #held, 2 do
  local count, untl = string.match(held[i + 1], '^(%d+) (%d+)$')
  count, untl = tonumber(count), tonumber(untl)
  if not count or untl <= now then
    redis.call('HDEL', KEYS[3], held[i])
  elseif held[i] == key then
    mine = count
  else
    used['requests'] = (used['requests'] or 0) + count
    last = math.max(last, untl)
  end
end

local admitted = 1
if mine < want then
  for name, limit in pairs(limits) do
    if (used[name] or 0) >= limit then admitted = 0 end
  end
end
if admitted == 1 then
  local untl = now + ttl
  redis.call('HSET', KEYS[3], key, math.max(mine, want) .. ' ' .. untl)
  redis.call('PEXPIREAT', KEYS[3], math.max(last, untl))
end

local out_used, out_limits = {}, {}
for name, value in pairs(used) do
  out_used[#out_used + 1] = name
  out_used[#out_used + 1] = value
end
for name, value in pairs(limits) do
  out_limits[#out_limits + 1] = name
  out_limits[#out_limits + 1] = value
end
return {admitted, out_used, out_limits}
