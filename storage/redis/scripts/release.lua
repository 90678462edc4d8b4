-- A reserved request got no answer: its run holds fewer requests (or none).
--
-- KEYS[1] the scope's held hash (see reserve.lua)
-- ARGV[1] the run id   ARGV[2] the requests it still holds (0: drop its reservation)
local keep = tonumber(ARGV[2])
local was = redis.call('HGET', KEYS[1], ARGV[1])
if not was then return 0 end
if keep <= 0 then return redis.call('HDEL', KEYS[1], ARGV[1]) end
local untl = string.match(was, ' (%d+)$')
if not untl then return redis.call('HDEL', KEYS[1], ARGV[1]) end
redis.call('HSET', KEYS[1], ARGV[1], keep .. ' ' .. untl)
return 1
