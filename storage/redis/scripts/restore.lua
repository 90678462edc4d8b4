-- Write a run and its whole history as given (an import), unless the run exists.
--
-- KEYS[1] run hash   KEYS[2] events stream   KEYS[3] keys hash
-- ARGV[1] n, the number of run hash field/value pairs; ARGV[2 .. 1 + 2n] those pairs;
-- then one quadruple per event: stream id, event JSON, idempotency key, seq.
-- Returns 1 when written, 0 when a run with this id exists (nothing written).
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local n = tonumber(ARGV[1])
for i = 2, 1 + 2 * n, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
for i = 2 + 2 * n, #ARGV, 4 do
  redis.call('XADD', KEYS[2], ARGV[i], 'e', ARGV[i + 1])
  redis.call('HSET', KEYS[3], ARGV[i + 2], ARGV[i + 3])
end
return 1
