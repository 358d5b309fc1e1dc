--[[
promote_due_bulk: schedulerd's promote_due.lua (same KEYS, ARGV and reply) with the per-id ZREM
and RPUSH/LPUSH replaced by one ZREMRANGEBYRANK and one RPUSH and one LPUSH per call. A variant
measured by bench/promote_cost.py; schedulerd does not use it.

Why it is equivalent: the ids come from ZRANGEBYSCORE -inf now LIMIT 0 n, which returns the n
lowest-ranked members, so ZREMRANGEBYRANK 0 n-1 removes exactly them. RPUSH of the normal ids in
order, then LPUSH of the front ids in order, leaves the list in the order the per-id pushes leave it.

The KEYS and ARGV entries are those of promote_due.lua:
KEYS[1]  lease key        string   rq:scheduler-lock:<queue>; its value is the leader's token
KEYS[2]  scheduled set    zset     rq:scheduled:<queue>; member = job id, score = due time (Unix s)
KEYS[3]  queue list       list     rq:queue:<queue>; workers pop from the left
KEYS[4]  queues set       set      rq:queues; members are queue list keys
KEYS[5]  quarantine       zset     ids that cannot be promoted; score = their due time (Unix s)

ARGV[1]  token            digits   the caller's lease token
ARGV[2]  batch size       integer  at most this many ids move in one call
ARGV[3]  job key prefix   string   rq:job: (a job hash is <prefix><id>)
ARGV[4]  queue name       string   written as the job's origin
ARGV[5]  default timeout  integer  seconds; written only when the job hash has no timeout
ARGV[6]  key prefix       string   rq: (RQ's rate limiter keys are <prefix>rl:<key>..., queue lists
                                   <prefix>queue:<name>)
ARGV[7]  now override     string   optional Unix seconds used instead of the server's TIME, so
                                   tests can place a score exactly at "now"; empty or absent in
                                   the daemon, which always uses the server clock

Returns {code, moved, dropped, now, next_due, quarantined, oldest_due, limited}
  code         1 = the batch ran; 0 = the lease is not held by ARGV[1], nothing was touched
  moved        ids pushed onto the queue list
  dropped      ids removed because their job hash no longer exists
  now          the server time this call used, "seconds.microseconds" (string)
  next_due     the lowest score left in the scheduled set as a string, or "" when empty;
               a value <= now means more ids are due and the caller should call again
  quarantined  pairs of (id, reason) moved to the quarantine set, reason is one of
               "wrong_type" (the job key is not a hash), "no_data" (the hash has no data field)
  oldest_due   the lowest score this call took from the scheduled set as a string, or "" when
               it took none; now - oldest_due is the call's worst lateness
  limited      ids handed to RQ 3.0's rate limiter (jobs with rate_limit_key and
               rate_limit_concurrency); the limiter pushes them when a slot is free, exactly as
               RQ 3.0's own scheduler does

Why a script: the lease check, the removal from the scheduled set and the push must be one
atomic step, so a deposed leader (paused past its lease TTL, then resumed) cannot push
anything. Why bounded: Redis runs nothing else while a script runs, so each call does a small
batch and the caller loops. Why the job keys are built here from ARGV[3] and not passed in
KEYS: the ids are only known after the ZRANGEBYSCORE inside this script. That makes the script
unusable on Redis Cluster, which the daemon rejects at start.
--]]

local lease_key = KEYS[1]
local scheduled_key = KEYS[2]
local queue_key = KEYS[3]
local queues_key = KEYS[4]
local quarantine_key = KEYS[5]

local token = ARGV[1]
local batch_size = tonumber(ARGV[2])
local job_prefix = ARGV[3]
local queue_name = ARGV[4]
local default_timeout = ARGV[5]
local key_prefix = ARGV[6]
local now_override = ARGV[7]

-- Format Unix time as RQ's UTC timestamp, %Y-%m-%dT%H:%M:%S.%fZ, with the
-- days-to-civil-date conversion of the proleptic Gregorian calendar.
local function utc_timestamp(seconds, microseconds)
  local days = math.floor(seconds / 86400)
  local second_of_day = seconds - days * 86400
  local hour = math.floor(second_of_day / 3600)
  local minute = math.floor((second_of_day % 3600) / 60)
  local second = second_of_day % 60

  local z = days + 719468
  local era = math.floor(z / 146097)
  local day_of_era = z - era * 146097
  local year_of_era = math.floor((day_of_era - math.floor(day_of_era / 1460)
    + math.floor(day_of_era / 36524) - math.floor(day_of_era / 146096)) / 365)
  local day_of_year = day_of_era - (365 * year_of_era + math.floor(year_of_era / 4)
    - math.floor(year_of_era / 100))
  local month_index = math.floor((5 * day_of_year + 2) / 153)
  local day = day_of_year - math.floor((153 * month_index + 2) / 5) + 1
  local month = month_index < 10 and month_index + 3 or month_index - 9
  local year = year_of_era + era * 400
  if month <= 2 then
    year = year + 1
  end

  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%06dZ',
    year, month, day, hour, minute, second, microseconds)
end

if redis.call('GET', lease_key) ~= token then
  return {0, 0, 0, '', '', {}, '', 0}
end

-- Redis before 7 replicates scripts verbatim unless told otherwise; TIME before a write is
-- only allowed with effects replication.
if redis.replicate_commands then
  redis.replicate_commands()
end
local now_s, now_us
if now_override and now_override ~= '' then
  local whole, fraction = string.match(now_override, '^(%d+)%.?(%d*)$')
  now_s = tonumber(whole)
  now_us = tonumber(string.sub(fraction .. '000000', 1, 6))
else
  local time = redis.call('TIME')
  now_s = tonumber(time[1])
  now_us = tonumber(time[2])
end
local now = string.format('%d.%06d', now_s, now_us)
local enqueued_at = utc_timestamp(now_s, now_us)

-- RQ 3.0's Queue._enqueue_rate_limited_job and RateLimitRegistry.acquire_and_enqueue, as one
-- step: mark the job rate_limited, register the limit, queue the job in the waiting set, then
-- fill free slots with waiting jobs, oldest first. Scores are whole seconds, as RQ writes them.
local function hand_to_rate_limiter(id, job_key, fields)
  local limit_key = fields[7]
  local concurrency = tonumber(fields[8])
  local config_key = key_prefix .. 'rl:' .. limit_key
  local allowed_key = config_key .. ':allowed'
  local waiting_key = config_key .. ':rate_limited'

  redis.call('HSET', job_key, 'status', 'rate_limited', 'origin', queue_name)
  if not fields[6] then
    redis.call('HSET', job_key, 'timeout', default_timeout)
  end
  if fields[2] == '1' or (fields[3] == '1' and fields[4] and fields[4] ~= '') then
    redis.call('HSET', job_key, 'enqueue_at_front', '1')
  end
  local ttl = tonumber(fields[5])
  if ttl and ttl > 0 then
    redis.call('EXPIRE', job_key, ttl)
    redis.call('EXPIRE', job_key .. ':dependents', ttl)
    redis.call('EXPIRE', job_prefix .. ':' .. id .. ':dependencies', ttl)
  end
  redis.call('SADD', key_prefix .. 'rl-keys', limit_key)
  redis.call('HSET', config_key, 'concurrency', concurrency)
  redis.call('ZADD', waiting_key, now_s, id)

  -- Bounded by the waiting set, which this loop only shrinks.
  while redis.call('ZCARD', allowed_key) < concurrency do
    local popped = redis.call('ZPOPMIN', waiting_key)
    if #popped == 0 then
      break
    end
    local waiting_id = popped[1]
    local waiting_job_key = job_prefix .. waiting_id
    local waiting = redis.call('HMGET', waiting_job_key, 'origin', 'status', 'enqueue_at_front')
    -- Like RQ, drop stale entries: a missing hash, no origin, or a job no longer rate_limited.
    if waiting[1] and waiting[2] == 'rate_limited' then
      redis.call('ZADD', allowed_key, now_s, waiting_id)
      if waiting[3] == '1' then
        redis.call('LPUSH', key_prefix .. 'queue:' .. waiting[1], waiting_id)
      else
        redis.call('RPUSH', key_prefix .. 'queue:' .. waiting[1], waiting_id)
      end
      redis.call('HSET', waiting_job_key, 'status', 'queued', 'enqueued_at', enqueued_at)
    end
  end
end

local ids = redis.call('ZRANGEBYSCORE', scheduled_key, '-inf', now, 'WITHSCORES', 'LIMIT', 0, batch_size)

local moved = 0
local dropped = 0
local limited = 0
local quarantined = {}
local registered = false
local back_ids = {}
local front_ids = {}

if #ids > 0 then
  redis.call('ZREMRANGEBYRANK', scheduled_key, 0, #ids / 2 - 1)
end

for i = 1, #ids, 2 do
  local id = ids[i]
  local score = ids[i + 1]
  local job_key = job_prefix .. id


  local fields = redis.pcall('HMGET', job_key, 'data', 'enqueue_at_front',
    'enqueue_at_front_on_retry', 'ended_at', 'ttl', 'timeout',
    'rate_limit_key', 'rate_limit_concurrency')

  if type(fields) == 'table' and fields.err then
    redis.call('ZADD', quarantine_key, score, id)
    quarantined[#quarantined + 1] = id
    quarantined[#quarantined + 1] = 'wrong_type'
  elseif not fields[1] then
    if redis.call('EXISTS', job_key) == 0 then
      dropped = dropped + 1
    else
      redis.call('ZADD', quarantine_key, score, id)
      quarantined[#quarantined + 1] = id
      quarantined[#quarantined + 1] = 'no_data'
    end
  elseif fields[7] and fields[7] ~= '' and tonumber(fields[8]) and tonumber(fields[8]) > 0 then
    hand_to_rate_limiter(id, job_key, fields)
    limited = limited + 1
  else
    local at_front = fields[2] == '1'
      or (fields[3] == '1' and fields[4] and fields[4] ~= '')

    redis.call('HSET', job_key, 'status', 'queued', 'enqueued_at', enqueued_at, 'origin', queue_name)
    if not fields[6] then
      redis.call('HSET', job_key, 'timeout', default_timeout)
    end

    if at_front then
      front_ids[#front_ids + 1] = id
    else
      back_ids[#back_ids + 1] = id
    end

    local ttl = tonumber(fields[5])
    if ttl and ttl > 0 then
      redis.call('EXPIRE', job_key, ttl)
      redis.call('EXPIRE', job_key .. ':dependents', ttl)
      -- RQ spells this key with two colons: <prefix>:<id>:dependencies where prefix ends in ':'.
      redis.call('EXPIRE', job_prefix .. ':' .. id .. ':dependencies', ttl)
    end

    if not registered then
      redis.call('SADD', queues_key, queue_key)
      registered = true
    end
    moved = moved + 1
  end
end

if #back_ids > 0 then
  redis.call('RPUSH', queue_key, unpack(back_ids))
end
if #front_ids > 0 then
  redis.call('LPUSH', queue_key, unpack(front_ids))
end

local next_due = ''
local head = redis.call('ZRANGE', scheduled_key, 0, 0, 'WITHSCORES')
if head[2] then
  next_due = head[2]
end

local oldest_due = ''
if ids[2] then
  oldest_due = ids[2]
end

return {1, moved, dropped, now, next_due, quarantined, oldest_due, limited}
