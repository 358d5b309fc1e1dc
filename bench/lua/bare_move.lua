--[[
bare_move: the least a promote call can do, as a ceiling for promote_due.lua: take due ids from
a scheduled set and push them onto a queue list, one ZREM and one RPUSH per id. No lease check,
no job hash read or written.

KEYS[1]  scheduled set  zset    member = job id, score = due time (Unix s)
KEYS[2]  queue list     list    ids are pushed on the right

ARGV[1]  batch size     integer at most this many ids move in one call

Returns the number of ids moved.
--]]

local scheduled_key = KEYS[1]
local queue_key = KEYS[2]

local batch_size = tonumber(ARGV[1])

local time = redis.call('TIME')
local now = time[1] .. '.' .. string.format('%06d', tonumber(time[2]))
local ids = redis.call('ZRANGEBYSCORE', scheduled_key, '-inf', now, 'LIMIT', 0, batch_size)

for i = 1, #ids do
  redis.call('ZREM', scheduled_key, ids[i])
  redis.call('RPUSH', queue_key, ids[i])
end

return #ids
