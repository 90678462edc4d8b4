-- Charge one committed event's usage to a scope's ledger for one period, once, and drop the
-- reservation of the run that committed it (reserve.lua).
--
-- KEYS[1] the scope's usage hash (u:<name> -> total)   KEYS[2] its charged hash (event key -> 1)
-- KEYS[3] its held hash (run id -> reservation)
-- ARGV[1] the event's idempotency key   ARGV[2] expiry (unix ms, 0 for none)
-- ARGV[3] the run id ('' for none)   ARGV[4..] name, increment, ...
-- Returns 1 when charged, 0 when that key was charged before (nothing written).
redis.call('HDEL', KEYS[3], ARGV[3])
if redis.call('HSETNX', KEYS[2], ARGV[1], 1) == 0 then return 0 end
for i = 4, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], 'u:' .. ARGV[i], ARGV[i + 1])
end
local at = tonumber(ARGV[2])
if at > 0 then
  redis.call('PEXPIREAT', KEYS[1], at)
  redis.call('PEXPIREAT', KEYS[2], at)
end
return 1
