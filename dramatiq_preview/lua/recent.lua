-- recent: the newest jobs of the recent-jobs index, optionally in one state (the dashboard).
-- KEYS: recent, job_prefix
-- ARGV: state ('' for any), limit, batch
-- Returns a flat list: job_id, {field, value, ...}, job_id, {...}, ... newest first, at most
-- limit jobs.  It reads the index in batches until it has enough or the index ends (the index
-- is bounded, so is the work); entries whose record has expired are removed on the way.
local recent, prefix = KEYS[1], KEYS[2]
local want, limit, batch = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out, found, start = {}, 0, 0
while found < limit do
  local ids = redis.call('zrevrange', recent, start, start + batch - 1)
  if #ids == 0 then break end
  local gone = {}
  for _, id in ipairs(ids) do
    local key = prefix .. id
    local state = redis.call('hget', key, 'state')
    if not state then
      gone[#gone + 1] = id
    elseif want == '' or state == want then
      out[#out + 1] = id
      out[#out + 1] = redis.call('hgetall', key)
      found = found + 1
      if found >= limit then break end
    end
  end
  if #gone > 0 then
    redis.call('zrem', recent, unpack(gone))
  end
  start = start + batch - #gone
end
return out
