-- Create a run at seq 0 unless it exists; with a lease owner, also take the run's lease (one
-- round trip to start a run).
--
-- KEYS[1] run hash   KEYS[2] events stream   KEYS[3] keys hash   KEYS[4] lease key
-- KEYS[5] live stream (written only with live items, ARGV[9])
-- KEYS[6..9] (standalone Redis only) the indexes: all runs, the agent's runs, runs in the
--            run's status, deadlines; kept here when given, else by the caller (Cluster slots)
-- ARGV[1] creation event JSON   ARGV[2] creation idempotency key
-- ARGV[3] deadline ('' for none)   ARGV[4] lease owner ('' to take no lease)
-- ARGV[5] lease ttl ms   ARGV[6] the owner of a live lease to take over anyway (proved dead by
--         the caller, as for lease.lua's ARGV[5]; '' for none)
-- ARGV[7] created_at   ARGV[8] updated_at
-- ARGV[9] live items: how many (n), appended to the run's live channel only when the run is
--         created, as commit.lua appends a commit's   ARGV[10] the channel's MAXLEN (approximate)
-- ARGV[11] its time to live (ms)   ARGV[12..11+2n] live items: base seq, item JSON, ...
-- ARGV[12+2n..] run hash field, value pairs
--
-- Returns {created, lease, stored}: created 1 when created, 0 when a run with this id exists
-- (nothing of it written but the lease); lease as lease.lua's acquire replies ({token, crashes,
-- seq} taken, {-1, holder, pttl} held), {} without an owner; stored: the existing run's hash,
-- flat (as HGETALL, after the lease was taken), {} when created.
local created = 0
local live = tonumber(ARGV[9])
if redis.call('EXISTS', KEYS[1]) == 0 then
  created = 1
  redis.call('HSET', KEYS[1], 'deadline', ARGV[3])
  for i = 12 + 2 * live, #ARGV, 400 do  -- in slices: unpack() of thousands of values fails
    redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + 399, #ARGV)))
  end
  redis.call('XADD', KEYS[2], '0-1', 'e', ARGV[1])
  redis.call('HSET', KEYS[3], ARGV[2], 0)
  if #KEYS > 5 then
    local run_id = string.match(KEYS[1], '^[^{]*{(.*)}:run$')
    redis.call('ZADD', KEYS[6], 'NX', ARGV[7], run_id)
    redis.call('ZADD', KEYS[7], 'NX', ARGV[7], run_id)
    redis.call('ZADD', KEYS[8], 'NX', ARGV[8], run_id)
    if ARGV[3] ~= '' then redis.call('ZADD', KEYS[9], ARGV[3], run_id) end
  end
  if live > 0 then
    for i = 12, 11 + 2 * live, 2 do
      redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[10], '*', 'b', ARGV[i], 'i', ARGV[i + 1])
    end
    redis.call('PEXPIRE', KEYS[5], ARGV[11])
  end
end

local lease = {}
local owner = ARGV[4]
if owner ~= '' then  -- as lease.lua's acquire
  local held = redis.call('GET', KEYS[4])
  if held == owner then
    redis.call('SET', KEYS[4], owner, 'PX', ARGV[5])
    local mine = redis.call('HMGET', KEYS[1], 'fence', 'crashes', 'seq')
    lease = {tonumber(mine[1]), tonumber(mine[2] or '0'), tonumber(mine[3])}
  elseif held and held ~= ARGV[6] then
    lease = {-1, held, redis.call('PTTL', KEYS[4])}
  else
    local meta = redis.call('HMGET', KEYS[1], 'holder', 'crashes', 'seq')
    local crashes = tonumber(meta[2] or '0')
    if meta[1] and meta[1] ~= '' then crashes = crashes + 1 end
    local token = redis.call('HINCRBY', KEYS[1], 'fence', 1)
    redis.call('HSET', KEYS[1], 'holder', owner, 'crashes', crashes)
    redis.call('SET', KEYS[4], owner, 'PX', ARGV[5])
    lease = {token, crashes, tonumber(meta[3])}
  end
end
if created == 1 then return {1, lease, {}} end
return {0, lease, redis.call('HGETALL', KEYS[1])}
