-- finish: end a delivery with an outcome ('succeeded', 'failed', 'retrying', 'cancelled',
-- or 'release': drop the lease only).
-- KEYS: job, waiting_prefix, inflight
-- ARGV: token, outcome, now_ms, ttl, data_json, next_attempt_at, job_id, overrun
-- Returns {verdict, state, webhook_due}: verdict 'ok', 'final' (already final), 'busy'
-- (another delivery runs it) or 'missing'; webhook_due is the final event whose webhook
-- delivery is not yet on the broker ('0' when none).  A delivery that ends cleanly (any
-- outcome but 'release') did not die: the death counters start over.  'retrying' with
-- overrun '1' counts a render that ran past the time limit ('overruns', read by claim.lua).
local job, waiting_prefix, inflight = KEYS[1], KEYS[2], KEYS[3]
local token, outcome, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local data, next_at, job_id, overrun = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local h = redis.call('hmget', job, 'state', 'lease', 'cancel', 'queue')
local state = h[1]
if not state then return {'missing', '', '0'} end
local mine = token ~= '' and h[2] == token
local function clean()
  redis.call('hset', job, 'lease', '', 'lease_until', 0, 'deliveries', 0, 'lone_deaths', 0)
end
if outcome == 'release' then
  if mine then clean() end
  return {'ok', state, '0'}
end
if state == 'succeeded' or state == 'failed' or state == 'cancelled' then
  if mine then
    clean()
    redis.call('hdel', job, 'message')
    redis.call('zrem', inflight, job_id)
  end
  return {'final', state, due(job)}
end
if state == 'running' and not mine then return {'busy', state, '0'} end
local new = outcome
if h[3] == '1' and (outcome == 'succeeded' or outcome == 'retrying') then new = 'cancelled' end
if new == 'succeeded' then
  redis.call('hset', job, 'state', 'succeeded', 'progress', 100, 'result', data, 'error', '',
    'finished_at', now, 'next_attempt_at', '')
elseif new == 'failed' then
  redis.call('hset', job, 'state', 'failed', 'error', data, 'finished_at', now,
    'next_attempt_at', '')
elseif new == 'retrying' then
  redis.call('hset', job, 'state', 'retrying', 'error', data, 'next_attempt_at', next_at)
elseif new == 'cancelled' then
  redis.call('hset', job, 'state', 'cancelled', 'finished_at', now, 'next_attempt_at', '')
else
  return redis.error_reply('unknown outcome ' .. outcome)
end
clean()
if new == 'retrying' then
  if overrun == '1' then redis.call('hincrby', job, 'overruns', 1) end
  -- Its next delivery is due then; the message kept from the claim lets lua/sweep.lua put
  -- it back if none comes (a retry the broker could not take).
  redis.call('zadd', inflight, tonumber(next_at) or now, job_id)
  redis.call('expire', inflight, ttl)
  changed(job, ttl)
  return {'ok', new, '0'}
end
redis.call('hdel', job, 'message')
redis.call('zrem', inflight, job_id)
-- A job that ends without being claimed (refused on receipt) was still "waiting".
redis.call('zrem', waiting_prefix .. (h[4] or ''), job_id)
return {'ok', new, tostring(ended(job, ttl))}
