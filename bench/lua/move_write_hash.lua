--[[
move_write_hash: move_read_hash plus, per id, the HSET of status, enqueued_at and origin that
promote_due.lua writes (enqueued_at is a fixed string here, formatted once per call). A cost
step between bare_move.lua and promote_due.lua.

KEYS[1]  lease key      string  compared with ARGV[1]
KEYS[2]  scheduled set  zset    member = job id, score = due time (Unix s)
KEYS[3]  queue list     list    ids are pushed on the right

ARGV[1]  token          digits  the caller's lease token
ARGV[2]  batch size     integer at most this many ids move in one call
ARGV[3]  job key prefix string  rq:job:
ARGV[4]  queue name     string  written as the job's origin

Returns the number of ids moved, or -1 when the lease holds another token.
--]]

local lease_key = KEYS[1]
local scheduled_key = KEYS[2]
local queue_key = KEYS[3]

local token = ARGV[1]
local batch_size = tonumber(ARGV[2])
local job_prefix = ARGV[3]
local queue_name = ARGV[4]

if redis.call('GET', lease_key) ~= token then
  return -1
end

local time = redis.call('TIME')
local now = time[1] .. '.' .. string.format('%06d', tonumber(time[2]))
local enqueued_at = '2026-01-01T00:00:00.000000Z'
local ids = redis.call('ZRANGEBYSCORE', scheduled_key, '-inf', now, 'LIMIT', 0, batch_size)

for i = 1, #ids do
  local job_key = job_prefix .. ids[i]
  redis.call('ZREM', scheduled_key, ids[i])
  redis.call('HMGET', job_key, 'data', 'enqueue_at_front',
    'enqueue_at_front_on_retry', 'ended_at', 'ttl', 'timeout',
    'rate_limit_key', 'rate_limit_concurrency')
  redis.call('HSET', job_key, 'status', 'queued', 'enqueued_at', enqueued_at, 'origin', queue_name)
  redis.call('RPUSH', queue_key, ids[i])
end

return #ids
