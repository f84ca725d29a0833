-- requeue: put a 'failed' job back to 'queued' (dead-letter replay).
-- KEYS: job, waiting_prefix
-- ARGV: now_ms, ttl, job_id, queue
-- Returns 'requeued', 'not_failed' (left as it is) or 'missing'.
local job, waiting_prefix = KEYS[1], KEYS[2]
local now, ttl, job_id, queue = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local state = redis.call('hget', job, 'state')
if not state then return 'missing' end
if state ~= 'failed' then return 'not_failed' end
redis.call('hset', job, 'state', 'queued', 'error', '', 'finished_at', '', 'progress', 0,
  'deliveries', 0, 'lone_deaths', 0, 'overruns', 0, 'cancel', 0, 'lease', '', 'lease_until', 0,
  'next_attempt_at', '', 'queue', queue)
-- The job runs again: its webhook waits for the next final state, and an attempt at the
-- previous event still in flight finds it no longer the one to deliver (webhook.lua).
if (redis.call('hget', job, 'webhook_url') or '') ~= '' then
  redis.call('hset', job, 'webhook_state', 'pending', 'webhook_attempts', 0, 'webhook_error', '')
  redis.call('hdel', job, 'webhook_seq', 'webhook_due')
end
changed(job, ttl)
local waiting = waiting_prefix .. queue
redis.call('zadd', waiting, now, job_id)
redis.call('expire', waiting, ttl)
return 'requeued'
