-- Leases with fencing tokens. The token lives in the run hash ('fence'), so a commit checks
-- it together with the seq; the lease key only says "held, until it expires".
--
-- KEYS[1] run hash   KEYS[2] lease key
-- ARGV[1] 'acquire' | 'renew' | 'release'   ARGV[2] owner   ARGV[3] ttl ms   ARGV[4] token
-- ARGV[5] (acquire) the owner of a live lease key to take over anyway: the caller proved that
--         process dead (storage/_process.py); '' for none
--
-- acquire -> {token, crashes, seq} when taken; {-1, holder, pttl} when held; {0} for no such run.
--            A run whose 'holder' is set but whose lease key expired was held by a process
--            that died: its crash count goes up by one. When the lease is held by ARGV[2]
--            already (a resend after a lost reply: owners are unique per process and run),
--            it is extended and the same token returned. A lease key still held by ARGV[5]
--            is taken over like an expired one (a crash).
-- renew   -> 1 when the token is still the run's and ARGV[2] its holder (the lease key is set
--            again), else 0.
-- release -> 1 when released, 0 when the token was already superseded.
local op = ARGV[1]
if op == 'acquire' then
  if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
  local held = redis.call('GET', KEYS[2])
  if held == ARGV[2] then
    redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
    local mine = redis.call('HMGET', KEYS[1], 'fence', 'crashes', 'seq')
    return {tonumber(mine[1]), tonumber(mine[2] or '0'), tonumber(mine[3])}
  end
  if held and held ~= ARGV[5] then return {-1, held, redis.call('PTTL', KEYS[2])} end
  local meta = redis.call('HMGET', KEYS[1], 'holder', 'crashes', 'seq')
  local crashes = tonumber(meta[2] or '0')
  if meta[1] and meta[1] ~= '' then crashes = crashes + 1 end
  local token = redis.call('HINCRBY', KEYS[1], 'fence', 1)
  redis.call('HSET', KEYS[1], 'holder', ARGV[2], 'crashes', crashes)
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  return {token, crashes, tonumber(meta[3])}
end
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[4] then return 0 end
if op == 'renew' then
  -- A commit that left the run not running gave the lease back ('holder' ''): a renewal
  -- sent before it must not take the lease again.
  if redis.call('HGET', KEYS[1], 'holder') ~= ARGV[2] then return 0 end
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
else
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'holder', '')
end
return 1
