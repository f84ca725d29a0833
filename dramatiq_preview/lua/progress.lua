-- progress: record a render's progress (or only poll, with an empty percent).
-- KEYS: job
-- ARGV: token, percent, ttl
-- Returns 0 (go on), 1 (cancellation requested) or 2 (this delivery lost the lease).
local job = KEYS[1]
local token, percent, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local h = redis.call('hmget', job, 'state', 'lease', 'cancel')
if h[1] ~= 'running' or h[2] ~= token then return 2 end
if percent ~= '' then
  redis.call('hset', job, 'progress', percent)
  changed(job, ttl)
end
if h[3] == '1' then return 1 end
return 0
