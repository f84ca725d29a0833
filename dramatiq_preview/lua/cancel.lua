-- cancel: request cancellation of a job.
-- KEYS: job, waiting_prefix
-- ARGV: now_ms, ttl, job_id
-- Returns {outcome, state, webhook_due}: 'cancelled' (a waiting job, cancelled now),
-- 'running' (the render stops at its next checkpoint), 'final' (already finished: state
-- says how) or 'missing' (''); webhook_due as in finish.lua.
local job, waiting_prefix = KEYS[1], KEYS[2]
local now, ttl, job_id = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local h = redis.call('hmget', job, 'state', 'queue')
local state = h[1]
if not state then return {'missing', '', '0'} end
if state == 'queued' or state == 'retrying' then
  redis.call('hset', job, 'state', 'cancelled', 'cancel', 1, 'finished_at', now,
    'next_attempt_at', '', 'uncounted', 1)
  redis.call('zrem', waiting_prefix .. (h[2] or ''), job_id)
  return {'cancelled', 'cancelled', tostring(ended(job, ttl))}
end
if state == 'running' then
  redis.call('hset', job, 'cancel', 1)
  redis.call('expire', job, ttl)
  return {'running', 'running', '0'}
end
return {'final', state, due(job)}
