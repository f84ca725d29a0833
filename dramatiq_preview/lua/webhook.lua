-- webhook: the bookkeeping of a job's webhook delivery (dramatiq_preview.state).
-- KEYS: job
-- ARGV: op, seq, ttl, error
--   op 'queued': the delivery message of event seq is on the broker (clears webhook_due).
--   op 'retry' | 'delivered' | 'failed': one attempt at event seq ended so; it is counted,
--   and 'retry' and 'failed' keep error as webhook_error.
-- Returns 'ok', 'stale' (the job has ended again since: event seq is not the one to
-- deliver) or 'missing'.  The job's 'seq' is left alone: this is not a change of state.
local job = KEYS[1]
local op, seq, ttl, err = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local h = redis.call('hmget', job, 'state', 'webhook_seq', 'webhook_due')
if not h[1] then return 'missing' end
if op == 'queued' then
  if h[3] == seq then redis.call('hdel', job, 'webhook_due') end
  return 'ok'
end
if h[2] ~= seq then return 'stale' end
if h[1] ~= 'succeeded' and h[1] ~= 'failed' and h[1] ~= 'cancelled' then return 'stale' end
redis.call('hincrby', job, 'webhook_attempts', 1)
if op == 'delivered' then
  redis.call('hset', job, 'webhook_state', 'delivered', 'webhook_error', '')
elseif op == 'failed' then
  redis.call('hset', job, 'webhook_state', 'failed', 'webhook_error', err)
elseif op == 'retry' then
  redis.call('hset', job, 'webhook_state', 'pending', 'webhook_error', err)
else
  return redis.error_reply('unknown op ' .. op)
end
redis.call('expire', job, ttl)
return 'ok'
