-- claim: start a delivery (take the render lease, count it, mark 'running').
-- KEYS: job, waiting_prefix
-- ARGV: token, now_ms, lease_ms, max_deliveries, ttl, job_id, lost_error_json
-- Returns {verdict, value, webhook_due}: 'run' (attempts), 'done' (state), 'cancelled'
-- (state), 'cancelled_waiting' (state), 'cancelled_now' (state), 'busy' (lease_until),
-- 'lost' (deliveries that died) or 'missing' (''); webhook_due is the final event whose
-- webhook is not yet on the broker ('0' when none).
local job, waiting_prefix = KEYS[1], KEYS[2]
local token, now, lease_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local max_deliveries, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local job_id, lost_error = ARGV[6], ARGV[7]
local h = redis.call('hmget', job, 'state', 'lease', 'lease_until', 'cancel', 'queue')
local state = h[1]
if not state then return {'missing', ''} end
if state == 'succeeded' or state == 'failed' then return {'done', state, due(job)} end
if state == 'cancelled' then
  -- A job cancelled while it waited is counted once, by the first delivery to see it.
  if redis.call('hdel', job, 'uncounted') == 1 then
    return {'cancelled_waiting', state, due(job)}
  end
  return {'cancelled', state, due(job)}
end
if h[2] and h[2] ~= '' and tonumber(h[3] or 0) > now then return {'busy', h[3]} end
local waiting = waiting_prefix .. (h[5] or '')
if h[4] == '1' then
  redis.call('hset', job, 'state', 'cancelled', 'finished_at', now, 'lease', '', 'lease_until', 0)
  redis.call('zrem', waiting, job_id)
  return {'cancelled_now', 'cancelled', tostring(ended(job, ttl))}
end
local deliveries = redis.call('hincrby', job, 'deliveries', 1)
if deliveries > max_deliveries then
  redis.call('hset', job, 'state', 'failed', 'error', lost_error, 'finished_at', now,
    'lease', '', 'lease_until', 0, 'next_attempt_at', '')
  redis.call('zrem', waiting, job_id)
  return {'lost', tostring(deliveries - 1), tostring(ended(job, ttl))}
end
local attempts = redis.call('hincrby', job, 'attempts', 1)
redis.call('hset', job, 'state', 'running', 'lease', token, 'lease_until', now + lease_ms,
  'next_attempt_at', '', 'progress', 0)
redis.call('hsetnx', job, 'started_at', now)
redis.call('zrem', waiting, job_id)
changed(job, ttl)
return {'run', tostring(attempts), '0'}
