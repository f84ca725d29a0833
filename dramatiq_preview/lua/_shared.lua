-- Shared by every transition script: dramatiq_preview.state.load_script puts this first.

-- changed(job, ttl): the job's status just changed.  Count the change in 'seq' (with the
-- record's 'incarnation', set by create.lua, the id of its event), renew the TTL and publish
-- the whole record on '<job key>:events', all in the script's atomic step: a reader that
-- subscribes and then reads the record misses nothing.
-- Nobody watches most jobs: the record is read and published only when the channel has a
-- subscriber (PUBSUB NUMSUB costs about a fifth of HGETALL + PUBLISH; docs/events.md).
-- The notification never aborts the transition written above it: a Redis user whose ACL
-- refuses the channel gets no events (pcall), never a half-done transition.
local function changed(job, ttl)
  local seq = redis.call('hincrby', job, 'seq', 1)
  redis.call('expire', job, ttl)
  local channel = job .. ':events'
  local subscribers = redis.pcall('pubsub', 'numsub', channel)
  if type(subscribers) == 'table' and subscribers[2] and subscribers[2] > 0 then
    redis.pcall('publish', channel, cjson.encode(redis.call('hgetall', job)))
  end
  return seq
end

-- ended(job, ttl): changed() for a final state.  A job with a webhook gets its delivery
-- armed: 'webhook_seq' names the event to deliver and 'webhook_due' stays set until a
-- delivery message for it is on the broker.  Returns the event's seq to deliver, or 0.
local function ended(job, ttl)
  local due = 0
  if (redis.call('hget', job, 'webhook_url') or '') ~= '' then
    due = tonumber(redis.call('hget', job, 'seq') or '0') + 1
    redis.call('hset', job, 'webhook_state', 'pending', 'webhook_attempts', 0,
      'webhook_error', '', 'webhook_seq', due, 'webhook_due', due)
  end
  changed(job, ttl)
  return due
end

-- due(job): the final event whose webhook delivery is not yet on the broker ('0': none).
local function due(job)
  return redis.call('hget', job, 'webhook_due') or '0'
end
