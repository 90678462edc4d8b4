-- Create a run at seq 0 unless it exists.
--
-- KEYS[1] run hash   KEYS[2] events stream   KEYS[3] keys hash
-- ARGV[1] creation event JSON   ARGV[2] creation idempotency key
-- ARGV[3] deadline ('' for none)   ARGV[4..] run hash field, value pairs
-- Returns 1 when created, 0 when a run with this id already exists (nothing written).
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'deadline', ARGV[3])
for i = 4, #ARGV, 400 do  -- in slices: unpack() of thousands of values fails
  redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + 399, #ARGV)))
end
redis.call('XADD', KEYS[2], '0-1', 'e', ARGV[1])
redis.call('HSET', KEYS[3], ARGV[2], 0)
return 1
