--[[
release_leases: delete every lease in KEYS that still holds the caller's token.

KEYS[i]  lease key   string   rq:scheduler-lock:<queue>
ARGV[1]  token       digits   the caller's lease token

Returns one integer per key, in KEYS order: 1 released, 0 held by another value or absent.

Why compare-and-delete in a script: a plain DEL would remove a lease that another scheduler
acquired after ours expired, and two schedulers would then lead the queue.
--]]

local token = ARGV[1]

local outcomes = {}
for i = 1, #KEYS do
  if redis.pcall('GET', KEYS[i]) == token then
    redis.call('DEL', KEYS[i])
    outcomes[i] = 1
  else
    outcomes[i] = 0
  end
end

return outcomes
