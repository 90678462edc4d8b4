-- Commit one transition of one run, all or nothing, in one round trip.
--
-- KEYS[1]  run hash        {prefix}:{run_id}:run
-- KEYS[2]  events stream   {prefix}:{run_id}:events
-- KEYS[3]  keys hash       {prefix}:{run_id}:keys   (idempotency key -> seq)
-- KEYS[4]  lease key       {prefix}:{run_id}:lease  (deleted, with 'holder', by a commit that
--          leaves the run not running: the lease is given back in the same round trip)
-- KEYS[5]  live stream    {prefix}:{run_id}:live   (written only with live items, ARGV[14])
-- KEYS[6..] (standalone Redis only) the indexes: KEYS[6] deadlines, KEYS[7..] runs by status
--          ({prefix}:status:<status>, one per status); kept here when given, else by the caller
--          then, with a scope charge (ARGV[13], standalone only), the scope's usage, charged
--          and held hashes as the last three keys (see scope_charge.lua)
-- ARGV[1]  expected seq    ARGV[2] fencing token    ARGV[3] idempotency key
-- ARGV[4]  new state       ARGV[5] new status       ARGV[6] updated_at (unix seconds)
-- ARGV[7]  deadline ('' for none)
-- ARGV[8]  new schema version ('' to keep it)       ARGV[9] memory fields to drop, one per line
-- ARGV[10] event JSON      ARGV[11] retention: when the run's keys expire (unix seconds, '' for
--          none; set by the commit that ends a run with retention, so no crash can skip it)
-- ARGV[12] usage increments, "name\nvalue\n" each, added to the run's 'u:<name>' fields
-- ARGV[13] scope charge: '' for none, else the scope ledger's expiry (unix ms, 0 for none);
--          the usage increments (ARGV[12]) are added to the scope's 'u:<name>' fields once per
--          idempotency key (ARGV[3]), and the run's reservation dropped, as scope_charge.lua does.
--          On Cluster (the scope is in another slot) a JSON object instead, kept under the
--          idempotency key in the run's pending charges hash, KEYS[6] ({prefix}:{run_id}:charges),
--          for the caller to make the charge after (storage/redis/_indexes.py)
-- ARGV[14] live items: how many (n, '0' for none; absent: none), appended to the run's live
--          channel, KEYS[5] ({prefix}:{run_id}:live), as storage/redis/live.py publishes them
-- ARGV[15] the live channel's MAXLEN (approximate)  ARGV[16] its time to live (ms)
-- ARGV[17..16+2n] live items: base seq, item JSON, ...
-- ARGV[17+2n..] memory patch: field name, field JSON, ...
--
-- Returns {'ok', seq, previous deadline, previous status} | {'duplicate', seq}
--       | {'lease_lost', current_seq}
--       | {'conflict', current_seq} | {'missing', 0}
-- On Cluster only this run's keys are given (one hash tag, one slot): the indexes (deadlines,
-- runs by status) are kept by the caller, which needs the previous deadline and status to do so.
-- Redis does not roll back a script that fails half-way, so every check comes before the
-- first write.
local done = redis.call('HGET', KEYS[3], ARGV[3])
if done then return {'duplicate', tonumber(done)} end
local cur = redis.call('HMGET', KEYS[1], 'seq', 'fence', 'deadline', 'status')
if not cur[1] then return {'missing', 0} end
if cur[2] ~= ARGV[2] then return {'lease_lost', tonumber(cur[1])} end
if cur[1] ~= ARGV[1] then return {'conflict', tonumber(cur[1])} end

local seq = tonumber(ARGV[1]) + 1
local fields = {'seq', seq, 'state', ARGV[4], 'status', ARGV[5], 'updated_at', ARGV[6], 'crashes', 0,
                'deadline', ARGV[7]}
local live = tonumber(ARGV[14] or '0')
for i = 17 + 2 * live, #ARGV, 2 do
  fields[#fields + 1] = 'm:' .. ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
end
if ARGV[8] ~= '' then
  fields[#fields + 1] = 'version'
  fields[#fields + 1] = ARGV[8]
end
for i = 1, #fields, 400 do  -- in slices: unpack() of thousands of values fails
  redis.call('HSET', KEYS[1], unpack(fields, i, math.min(i + 399, #fields)))
end
for name in string.gmatch(ARGV[9], '[^\n]+') do
  redis.call('HDEL', KEYS[1], 'm:' .. name)
end
redis.call('XADD', KEYS[2], seq .. '-0', 'e', ARGV[10])
redis.call('HSET', KEYS[3], ARGV[3], seq)
for name, value in string.gmatch(ARGV[12], '([^\n]+)\n([^\n]+)\n') do
  redis.call('HINCRBY', KEYS[1], 'u:' .. name, value)
end
if ARGV[11] and ARGV[11] ~= '' then
  redis.call('HSET', KEYS[1], 'expires_at', ARGV[11])
  local at = math.max(math.floor(tonumber(ARGV[11]) * 1000), 1)
  for i = 1, 3 do redis.call('PEXPIREAT', KEYS[i], at) end
end
if live > 0 then
  for i = 17, 16 + 2 * live, 2 do
    redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[15], '*', 'b', ARGV[i], 'i', ARGV[i + 1])
  end
  redis.call('PEXPIRE', KEYS[5], ARGV[16])
end
if ARGV[5] ~= 'running' then
  redis.call('DEL', KEYS[4])
  redis.call('HSET', KEYS[1], 'holder', '')
end
local charge = ARGV[13] or ''
local last = #KEYS  -- the last index key
if string.sub(charge, 1, 1) == '{' then
  redis.call('HSET', KEYS[6], ARGV[3], charge)
  last = 5
elseif charge ~= '' then
  last = last - 3
  redis.call('HDEL', KEYS[last + 3], string.match(KEYS[1], '^[^{]*{(.*)}:run$'))
  if redis.call('HSETNX', KEYS[last + 2], ARGV[3], 1) == 1 then
    for name, value in string.gmatch(ARGV[12], '([^\n]+)\n([^\n]+)\n') do
      redis.call('HINCRBY', KEYS[last + 1], 'u:' .. name, value)
    end
    local at = tonumber(charge)
    if at > 0 then
      redis.call('PEXPIREAT', KEYS[last + 1], at)
      redis.call('PEXPIREAT', KEYS[last + 2], at)
    end
  end
end
if last > 5 then
  local run_id = string.match(KEYS[1], '^[^{]*{(.*)}:run$')
  if ARGV[7] ~= '' then
    redis.call('ZADD', KEYS[6], ARGV[7], run_id)
  elseif cur[3] and cur[3] ~= '' then
    redis.call('ZREM', KEYS[6], run_id)
  end
  if cur[4] ~= ARGV[5] then
    local before, after = ':status:' .. cur[4], ':status:' .. ARGV[5]
    for i = 7, last do
      if string.sub(KEYS[i], -#before) == before then redis.call('ZREM', KEYS[i], run_id) end
      if string.sub(KEYS[i], -#after) == after then redis.call('ZADD', KEYS[i], ARGV[6], run_id) end
    end
  end
end
return {'ok', seq, cur[3] or '', cur[4]}
