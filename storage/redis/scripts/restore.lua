-- Write a run and its whole history as given (an import), unless the run exists.
--
-- KEYS[1] run hash   KEYS[2] events stream   KEYS[3] keys hash
-- ARGV[1] n, the number of run hash field/value pairs; ARGV[2 .. 1 + 2n] those pairs;
-- then one quadruple per event: stream id, event JSON, idempotency key, seq.
-- A run with retention (an 'expires_at' field) gets its keys' expiry in the same script, so no
-- crash can leave a restored run kept for good.
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
local expires = redis.call('HGET', KEYS[1], 'expires_at')
if expires and expires ~= '' then
  local at = math.max(math.floor(tonumber(expires) * 1000), 1)
  for i = 1, 3 do redis.call('PEXPIREAT', KEYS[i], at) end
end
return 1
