-- Ids of a creation-time index (a sorted set of run ids) that hold a text, newest first,
-- from a cursor down: the text filter of a paged listing (storage/_paging.py), run by the
-- server so that ids that do not match never cross the network. It walks by rank (each
-- batch O(log N + 1000)), not by score with an offset (which walks the offset again).
--
-- KEYS[1] the index
-- ARGV[1] the highest score to read ('+inf' for the top)
-- ARGV[2] '1': ARGV[1] is a cursor's score and ARGV[3] its id, so of the ids with exactly that
--         score only those below ARGV[3] are read, then the lower scores; '0': every id with
--         a score up to ARGV[1]
-- ARGV[4] the text (plain, not a pattern)   ARGV[5] matches to return at most
-- ARGV[6] ids to read at most (bounds how long one call holds the server)
--
-- Returns {done, last_id, last_score, id, score, id, score, ...}: the matches with their
-- scores (Redis's own text, exact); done is 1 when the index was read to its end, else the
-- next call starts below (last_score, last_id). Scores are returned as Redis formats them.
local index, top, cursor, cid, text = KEYS[1], ARGV[1], ARGV[2] == '1', ARGV[3], ARGV[4]
local want, cap = tonumber(ARGV[5]), tonumber(ARGV[6])
local res = {0, '', ''}
local found, read = 0, 0

local function stop(id)
  res[2] = id
  res[3] = redis.call('ZSCORE', index, id)
  return res
end

local function seen(id)  -- true when the call must end after this id
  read = read + 1
  if string.find(id, text, 1, true) then
    res[#res + 1] = id
    res[#res + 1] = redis.call('ZSCORE', index, id)
    found = found + 1
  end
  return found >= want or read >= cap
end

-- Where to start, by rank (newest first): below the cursor's id when it is in the index; else
-- below every id with a higher score (and, at the cursor's score, the ids not below its id).
local rank
if cursor then
  rank = redis.call('ZREVRANK', index, cid)
  if rank then
    rank = rank + 1
  else
    rank = redis.call('ZCOUNT', index, '(' .. top, '+inf')
    for _, id in ipairs(redis.call('ZRANGE', index, top, top, 'BYSCORE', 'REV')) do
      if id >= cid then rank = rank + 1 end
    end
  end
else
  rank = top == '+inf' and 0 or redis.call('ZCOUNT', index, '(' .. top, '+inf')
end
while true do
  local batch = redis.call('ZRANGE', index, rank, rank + 999, 'REV')
  for _, id in ipairs(batch) do
    if seen(id) then return stop(id) end
  end
  if #batch < 1000 then
    res[1] = 1
    return res
  end
  rank = rank + 1000
end
