-- claim: start a delivery (take the render lease, count it, mark 'running').
-- KEYS: job, waiting_prefix, inflight, then the records of the other render deliveries the
--   caller's worker process is running (its "company")
-- ARGV: token, now_ms, lease_ms, max_deliveries, ttl, job_id, lost_error_json, isolated,
--   message, then the lease token of each company record (same order as its KEYS)
-- Returns {verdict, value, webhook_due, overruns}: 'run' (attempts), 'done' (state),
-- 'cancelled' (state), 'cancelled_waiting' (state), 'cancelled_now' (state), 'busy'
-- (lease_until), 'isolate' (deaths: this delivery must run alone in its process; nothing
-- was taken), 'lost' (deliveries that died) or 'missing' (''); webhook_due is the final
-- event whose webhook is not yet on the broker ('0' when none); overruns counts the
-- deliveries that ran past the time limit ('run' only).
local job, waiting_prefix, inflight = KEYS[1], KEYS[2], KEYS[3]
local token, now, lease_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local max_deliveries, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local job_id, lost_error, isolated, message = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
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
  redis.call('zrem', inflight, job_id)
  return {'cancelled_now', 'cancelled', tostring(ended(job, ttl))}
end
-- A lease still set here belongs to a delivery that never ended: its worker process died.
-- When other renders ran beside it in that process ('shared' names that lease), the death
-- may be theirs; one that ran alone is the job's own ('lone_deaths').
if h[2] and h[2] ~= '' then
  if redis.call('hget', job, 'shared') ~= h[2] then
    redis.call('hincrby', job, 'lone_deaths', 1)
  end
  redis.call('hset', job, 'lease', '', 'lease_until', 0)
end
local deaths = tonumber(redis.call('hget', job, 'deliveries') or '0')
local lone = tonumber(redis.call('hget', job, 'lone_deaths') or '0')
if deaths >= max_deliveries and lone > 0 then
  redis.call('hset', job, 'state', 'failed', 'error', lost_error, 'finished_at', now,
    'lease', '', 'lease_until', 0, 'next_attempt_at', '')
  redis.call('hdel', job, 'message')
  redis.call('zrem', waiting, job_id)
  redis.call('zrem', inflight, job_id)
  return {'lost', tostring(deaths), tostring(ended(job, ttl))}
end
-- A job whose delivery died runs alone in its process until it ends cleanly: a death then
-- tells whether it is a poison pill, and it kills no job beside it.
if deaths > 0 and isolated ~= '1' then return {'isolate', tostring(deaths), '0'} end
redis.call('hincrby', job, 'deliveries', 1)
local attempts = redis.call('hincrby', job, 'attempts', 1)
redis.call('hset', job, 'state', 'running', 'lease', token, 'lease_until', now + lease_ms,
  'next_attempt_at', '', 'progress', 0, 'message', message)
redis.call('hdel', job, 'swept')
redis.call('hsetnx', job, 'started_at', now)
if #KEYS > 3 then
  -- Renders beside this one in the same process: a death of it is shared by all of them.
  -- A company record whose own claim has not run yet is marked all the same (its lease
  -- becomes that token); one that ended meanwhile keeps a mark that names no lease.
  redis.call('hset', job, 'shared', token)
  for i = 4, #KEYS do
    if redis.call('exists', KEYS[i]) == 1 then
      redis.call('hset', KEYS[i], 'shared', ARGV[6 + i])
    end
  end
end
redis.call('zrem', waiting, job_id)
-- The in-flight index: when this lease should end (lua/sweep.lua finds the overdue ones).
redis.call('zadd', inflight, now + lease_ms, job_id)
redis.call('expire', inflight, ttl)
changed(job, ttl)
return {'run', tostring(attempts), '0', redis.call('hget', job, 'overruns') or '0'}
