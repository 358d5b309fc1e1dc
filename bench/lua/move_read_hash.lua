--[[
move_read_hash: bare_move plus the lease check and, per id, the HMGET of the eight job hash
fields that promote_due.lua reads. A cost step between bare_move.lua and promote_due.lua.

KEYS[1]  lease key      string  compared with ARGV[1]
KEYS[2]  scheduled set  zset    member = job id, score = due time (Unix s)
KEYS[3]  queue list     list    ids are pushed on the right

ARGV[1]  token          digits  the caller's lease token
ARGV[2]  batch size     integer at most this many ids move in one call
ARGV[3]  job key prefix string  rq:job:

Returns the number of ids moved, or -1 when the lease holds another token.
--]]

local lease_key = KEYS[1]
local scheduled_key = KEYS[2]
local queue_key = KEYS[3]

local token = ARGV[1]
local batch_size = tonumber(ARGV[2])
local job_prefix = ARGV[3]

if redis.call('GET', lease_key) ~= token then
  return -1
end

local time = redis.call('TIME')
local now = time[1] .. '.' .. string.format('%06d', tonumber(time[2]))
local ids = redis.call('ZRANGEBYSCORE', scheduled_key, '-inf', now, 'LIMIT', 0, batch_size)

for i = 1, #ids do
  redis.call('ZREM', scheduled_key, ids[i])
  redis.call('HMGET', job_prefix .. ids[i], 'data', 'enqueue_at_front',
    'enqueue_at_front_on_retry', 'ended_at', 'ttl', 'timeout',
    'rate_limit_key', 'rate_limit_concurrency')
  redis.call('RPUSH', queue_key, ids[i])
end

return #ids
