-- create: record a new job as 'queued' unless its id exists (dramatiq_preview.state).
-- KEYS: job, waiting_prefix, recent[, broker_queue, broker_queue_msgs]
-- ARGV: fp, priority, queue, metadata, now_ms, ttl, job_id, prune, webhook_url, incarnation,
--   recent_max, now_us[, message_id, message_data]
-- Returns {outcome, state}: outcome 'created', 'duplicate' (same fingerprint) or 'conflict'.
local job, waiting_prefix, recent = KEYS[1], KEYS[2], KEYS[3]
local fp, priority, queue, meta = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now, ttl, job_id, prune = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], ARGV[8]
local webhook_url, incarnation = ARGV[9], ARGV[10]
local cur = redis.call('hmget', job, 'fp', 'state')
if cur[2] then
  if cur[1] == fp then return {'duplicate', cur[2]} end
  return {'conflict', cur[2]}
end
-- Counters (attempts, progress, deliveries, cancel, seq) start absent, which reads as 0.
-- 'incarnation' (random) tells this record's events from those of an earlier record of the
-- same id, whose 'seq' counted from 0 too.
redis.call('hset', job, 'state', 'queued', 'fp', fp, 'priority', priority, 'queue', queue,
  'metadata', meta, 'created_at', now, 'incarnation', incarnation)
if webhook_url ~= '' then
  redis.call('hset', job, 'webhook_url', webhook_url, 'webhook_state', 'pending',
    'webhook_attempts', 0)
end
changed(job, ttl)
local waiting = waiting_prefix .. queue
redis.call('zadd', waiting, now, job_id)
if prune == '1' then
  redis.call('zremrangebyscore', waiting, '-inf', now - ttl * 1000)
end
redis.call('expire', waiting, ttl)
-- The recent-jobs index of the dashboard (newest first by creation time, in microseconds so
-- that jobs created in one millisecond keep their order): bounded by recent_max (trimmed with
-- the waiting sets, so it may run a little over between trims) and by age; an entry whose
-- record expired is dropped when a reader meets it.
local now_us = tonumber(ARGV[12])
redis.call('zadd', recent, now_us, job_id)
if prune == '1' then
  redis.call('zremrangebyscore', recent, '-inf', now_us - ttl * 1000000)
  redis.call('zremrangebyrank', recent, 0, -tonumber(ARGV[11]) - 1)
end
redis.call('expire', recent, ttl)
if KEYS[4] then
  -- A Redis broker on this server: enqueue in the same step, in Dramatiq's layout (a list
  -- of message ids and a hash of id -> message), so the job and its message exist together.
  redis.call('hset', KEYS[5], ARGV[13], ARGV[14])
  redis.call('rpush', KEYS[4], ARGV[13])
end
return {'created', 'queued'}
