-- finish: end a delivery with an outcome ('succeeded', 'failed', 'retrying', 'cancelled',
-- or 'release': drop the lease only).
-- KEYS: job, waiting_prefix
-- ARGV: token, outcome, now_ms, ttl, data_json, next_attempt_at, job_id
-- Returns {verdict, state, webhook_due}: verdict 'ok', 'final' (already final), 'busy'
-- (another delivery runs it) or 'missing'; webhook_due is the final event whose webhook
-- delivery is not yet on the broker ('0' when none).
local job, waiting_prefix = KEYS[1], KEYS[2]
local token, outcome, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local data, next_at, job_id = ARGV[5], ARGV[6], ARGV[7]
local h = redis.call('hmget', job, 'state', 'lease', 'cancel', 'queue')
local state = h[1]
if not state then return {'missing', '', '0'} end
local mine = token ~= '' and h[2] == token
if outcome == 'release' then
  if mine then redis.call('hset', job, 'lease', '', 'lease_until', 0, 'deliveries', 0) end
  return {'ok', state, '0'}
end
if state == 'succeeded' or state == 'failed' or state == 'cancelled' then
  if mine then redis.call('hset', job, 'lease', '', 'lease_until', 0, 'deliveries', 0) end
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
redis.call('hset', job, 'lease', '', 'lease_until', 0, 'deliveries', 0)
if new == 'retrying' then
  changed(job, ttl)
  return {'ok', new, '0'}
end
-- A job that ends without being claimed (refused on receipt) was still "waiting".
redis.call('zrem', waiting_prefix .. (h[4] or ''), job_id)
return {'ok', new, tostring(ended(job, ttl))}
