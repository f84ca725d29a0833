-- sweep: look again at a job of the in-flight index that is overdue: its lease ended, or
-- its retry was due, more than margin_ms ago, and no delivery has claimed it since.
-- KEYS: job, inflight, waiting_prefix
-- ARGV: now_ms, margin_ms, ttl, job_id, lost_error_json, max_sweeps
-- Returns {verdict, message, webhook_due}: 'gone' (no longer running or retrying: dropped
-- from the index), 'live' (not overdue after all), 'redeliver' (put message on the broker
-- again; looked at again after 2, 4, 8... margins) or 'lost' (no message to put back, or put
-- back max_sweeps times with no delivery claiming it: failed as worker_lost).
local job, inflight, waiting_prefix = KEYS[1], KEYS[2], KEYS[3]
local now, margin, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local job_id, lost_error, max_sweeps = ARGV[4], ARGV[5], tonumber(ARGV[6])
local h = redis.call('hmget', job, 'state', 'lease_until', 'next_attempt_at', 'message', 'queue',
  'swept')
local state = h[1]
local due_at
if state == 'running' then
  due_at = tonumber(h[2]) or 0
elseif state == 'retrying' then
  due_at = tonumber(h[3]) or 0
else
  redis.call('zrem', inflight, job_id)
  return {'gone', '', '0'}
end
if due_at + margin > now then
  redis.call('zadd', inflight, due_at, job_id)
  return {'live', '', '0'}
end
-- Put back already (its index score is when): another sweeper of the same round, or an
-- earlier round, did it.  Each put-back waits twice as long as the one before, so a retry
-- still queued behind a long backlog is not taken for lost after a few margins.
local before = tonumber(h[6]) or 0
if before > 0 then
  local last = tonumber(redis.call('zscore', inflight, job_id)) or 0
  if last + margin * 2 ^ math.min(before, 6) > now then
    return {'live', '', '0'}
  end
end
local swept = redis.call('hincrby', job, 'swept', 1)
if (h[4] or '') == '' or swept > max_sweeps then
  redis.call('hset', job, 'state', 'failed', 'error', lost_error, 'finished_at', now,
    'lease', '', 'lease_until', 0, 'next_attempt_at', '')
  redis.call('hdel', job, 'message')
  redis.call('zrem', inflight, job_id)
  redis.call('zrem', waiting_prefix .. (h[5] or ''), job_id)
  return {'lost', '', tostring(ended(job, ttl))}
end
-- Looked at again one margin from now, unless a delivery claims it first.
redis.call('zadd', inflight, now, job_id)
redis.call('expire', inflight, ttl)
redis.call('expire', job, ttl)
return {'redeliver', h[4], '0'}
