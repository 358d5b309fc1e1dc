--[[
promote_due: move up to a bounded number of due job ids from one queue's
scheduled set onto its queue list, provided the caller still holds the lease.

KEYS[1]  lease key        string   rq:scheduler-lock:<queue>; its value is the leader's token
KEYS[2]  scheduled set    zset     rq:scheduled:<queue>; member = job id, score = due time (Unix s)
KEYS[3]  queue list       list     rq:queue:<queue>; workers pop from the left
KEYS[4]  queues set       set      rq:queues; members are queue list keys
KEYS[5]  quarantine       zset     ids that cannot be promoted; score = their due time (Unix s)

ARGV[1]  token            digits   the caller's lease token
ARGV[2]  batch size       integer  at most this many ids move in one call
ARGV[3]  job key prefix   string   rq:job: (a job hash is <prefix><id>)
ARGV[4]  queue name       string   written as the job's origin
ARGV[5]  default timeout  integer  seconds; written only when the job's timeout is missing or empty
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
               "wrong_type" (the job key is not a hash), "no_data" (the hash has no data
               field, or an empty one, which no worker can load), "invalid_ttl" (a ttl that
               is not a whole number, which RQ cannot read) or "rate_limit_wrong_type" (a key
               of the job's rate limit has the wrong type)
  oldest_due   the lowest score this call took from the scheduled set as a string, or "" when
               it took none; now - oldest_due is the call's worst lateness
  limited      ids handed to RQ 3.0's rate limiter (jobs with rate_limit_key and
               rate_limit_concurrency), with the same writes as RQ 3.0's own scheduler; the
               limiter pushes them when a slot is free. Unlike RQ, which hands them over after
               the batch's other jobs, this keeps due order within the batch

Errors: a queue list, queues set or quarantine of the wrong type makes the call fail with a
WRONGTYPE error before it writes anything. Redis keeps a script's writes up to an error, so
each id is removed from the scheduled set only together with the write that finishes it: an
unexpected error (an ACL that lacks a command, say) leaves the ids not yet finished in the
scheduled set for the next call, and none is pushed twice.

Why a script: the lease check, the removal from the scheduled set and the push must be one
atomic step, so a deposed leader (paused past its lease TTL, then resumed) cannot push
anything. Because the script is atomic, the ids it reads are still in the scheduled set when
it removes them, so the removal is the claim: no other scheduler can read the same id in
between. Why bounded: Redis runs nothing else while a script runs, so each call does a small
batch and the caller loops. Why the job keys are built here from ARGV[3] and not passed in
KEYS: the ids are only known after the ZRANGEBYSCORE inside this script. The same holds for
the rate limiter's keys (ARGV[6]). That makes the script unusable on Redis Cluster, which the
daemon rejects at start.
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

-- Redis before 7 replicates scripts verbatim unless a script requests effects replication,
-- and only effects replication allows TIME before a write.
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
-- step (returns false, having written nothing, when one of the limit's keys has the wrong type): mark the job rate_limited, register the limit, queue the job in the waiting set, then
-- fill free slots with waiting jobs, oldest first. Scores are whole seconds, as RQ writes them.
-- fields: enqueue_at_front, enqueue_at_front_on_retry, ended_at, ttl, timeout, rate_limit_key,
-- rate_limit_concurrency, as read by the HMGET below.
local function hand_to_rate_limiter(id, job_key, fields)
  local limit_key = fields[6]
  local concurrency = tonumber(fields[7])
  local config_key = key_prefix .. 'rl:' .. limit_key
  local allowed_key = config_key .. ':allowed'
  local waiting_key = config_key .. ':rate_limited'
  local registry_key = key_prefix .. 'rl-keys'

  -- Checked before any write, so a bad key cannot leave a half-finished hand-over.
  for _, check in ipairs({{config_key, 'hash'}, {allowed_key, 'zset'}, {waiting_key, 'zset'},
      {registry_key, 'set'}}) do
    local kind = redis.call('TYPE', check[1]).ok
    if kind ~= 'none' and kind ~= check[2] then
      return false
    end
  end

  redis.call('HSET', job_key, 'status', 'rate_limited', 'origin', queue_name)
  if not fields[5] or fields[5] == '' then
    redis.call('HSET', job_key, 'timeout', default_timeout)
  end
  if fields[1] == '1' or (fields[2] == '1' and fields[3] and fields[3] ~= '') then
    redis.call('HSET', job_key, 'enqueue_at_front', '1')
  end
  local ttl = tonumber(fields[4])
  if ttl and ttl > 0 and ttl == math.floor(ttl) then
    redis.call('EXPIRE', job_key, ttl)
    redis.call('EXPIRE', job_key .. ':dependents', ttl)
    redis.call('EXPIRE', job_prefix .. ':' .. id .. ':dependencies', ttl)
  end
  redis.call('SADD', registry_key, limit_key)
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
    local waiting = redis.pcall('HMGET', waiting_job_key, 'origin', 'status', 'enqueue_at_front')
    -- Like RQ, drop stale entries: a missing hash (or a key of another type), no origin, or a
    -- job no longer rate_limited.
    if not waiting.err and waiting[1] and waiting[2] == 'rate_limited' then
      local push = 'RPUSH'
      if waiting[3] == '1' then
        push = 'LPUSH'
      end
      local pushed = redis.pcall(push, key_prefix .. 'queue:' .. waiting[1], waiting_id)
      if type(pushed) == 'table' and pushed.err then
        -- Its queue list has the wrong type: keep it waiting rather than lose it.
        redis.call('ZADD', waiting_key, popped[2], waiting_id)
        break
      end
      redis.call('ZADD', allowed_key, now_s, waiting_id)
      redis.call('HSET', waiting_job_key, 'status', 'queued', 'enqueued_at', enqueued_at)
    end
  end
  return true
end

for _, check in ipairs({{queue_key, 'list'}, {queues_key, 'set'}, {quarantine_key, 'zset'}}) do
  local kind = redis.call('TYPE', check[1]).ok
  if kind ~= 'none' and kind ~= check[2] then
    return redis.error_reply('WRONGTYPE ' .. check[1] .. ' is a ' .. kind .. ', not a ' .. check[2])
  end
end

local ids = redis.call('ZRANGEBYSCORE', scheduled_key, '-inf', now, 'WITHSCORES', 'LIMIT', 0, batch_size)

local moved = 0
local dropped = 0
local limited = 0
local quarantined = {}
local to_front = {}
local to_back = {}

-- Push the ids waiting for a push and claim them in the same step. They are the lowest
-- ranks left in the scheduled set: every id before them in the batch was either among them
-- or already removed on its own. LPUSH and RPUSH work on opposite ends, so one call per end
-- leaves the list exactly as one push per id in score order would.
local function flush_pushes()
  local count = #to_front + #to_back
  if count == 0 then
    return
  end
  if #to_front > 0 then
    redis.call('LPUSH', queue_key, unpack(to_front))
    to_front = {}
  end
  if #to_back > 0 then
    redis.call('RPUSH', queue_key, unpack(to_back))
    to_back = {}
  end
  redis.call('ZREMRANGEBYRANK', scheduled_key, 0, count - 1)
end

local function quarantine(id, score, reason)
  redis.call('ZADD', quarantine_key, score, id)
  redis.call('ZREM', scheduled_key, id)
  quarantined[#quarantined + 1] = id
  quarantined[#quarantined + 1] = reason
end

for i = 1, #ids, 2 do
  local id = ids[i]
  local score = ids[i + 1]
  local job_key = job_prefix .. id

  local fields = redis.pcall('HMGET', job_key, 'enqueue_at_front', 'enqueue_at_front_on_retry',
    'ended_at', 'ttl', 'timeout', 'rate_limit_key', 'rate_limit_concurrency')
  local ttl = nil
  if not fields.err then
    ttl = tonumber(fields[4])
  end

  if fields.err then
    quarantine(id, score, 'wrong_type')
  -- HSTRLEN checks that data is there without copying the payload into Lua.
  elseif redis.call('HSTRLEN', job_key, 'data') == 0 then
    if redis.call('EXISTS', job_key) == 0 then
      redis.call('ZREM', scheduled_key, id)
      dropped = dropped + 1
    else
      quarantine(id, score, 'no_data')
    end
  elseif fields[4] and fields[4] ~= '' and (not ttl or ttl ~= math.floor(ttl)) then
    -- RQ reads ttl with int(); EXPIRE would fail on it, too.
    quarantine(id, score, 'invalid_ttl')
  elseif fields[6] and fields[6] ~= '' and tonumber(fields[7]) and tonumber(fields[7]) > 0 then
    -- The limiter may push onto this queue list too, so earlier ids go first.
    flush_pushes()
    if hand_to_rate_limiter(id, job_key, fields) then
      redis.call('ZREM', scheduled_key, id)
      limited = limited + 1
    else
      quarantine(id, score, 'rate_limit_wrong_type')
    end
  else
    redis.call('HSET', job_key, 'status', 'queued', 'enqueued_at', enqueued_at, 'origin', queue_name)
    -- RQ reads an empty timeout as none, as it does a missing one.
    if not fields[5] or fields[5] == '' then
      redis.call('HSET', job_key, 'timeout', default_timeout)
    end

    if fields[1] == '1' or (fields[2] == '1' and fields[3] and fields[3] ~= '') then
      to_front[#to_front + 1] = id
    else
      to_back[#to_back + 1] = id
    end

    if ttl and ttl > 0 then
      redis.call('EXPIRE', job_key, ttl)
      redis.call('EXPIRE', job_key .. ':dependents', ttl)
      -- RQ spells this key with two colons: <prefix>:<id>:dependencies where prefix ends in ':'.
      redis.call('EXPIRE', job_prefix .. ':' .. id .. ':dependencies', ttl)
    end
    moved = moved + 1
  end
end

flush_pushes()
if moved > 0 then
  redis.call('SADD', queues_key, queue_key)
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
