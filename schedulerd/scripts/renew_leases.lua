--[[
renew_leases: extend every lease that still holds the caller's token, and refresh the
caller's scheduler info hash.

KEYS[1]    info hash   hash     rq:scheduler:<token>, the holder's name, hostname, pid, queues, times
KEYS[2..]  lease key   string   rq:scheduler-lock:<queue>, one per held lease
ARGV[1]    token       digits   the caller's lease token
ARGV[2]    ttl         integer  new time to live of the leases and the info hash, milliseconds
ARGV[3..]  info        strings  field, value pairs written to KEYS[1]

Returns one integer per lease key, in KEYS[2..] order:
   1  renewed: the key held the token and now expires in ARGV[2] ms
   0  lost: the key holds another value (another scheduler took over) or is of another type
  -1  lost: the key does not exist (it expired)

Why compare-and-extend in a script: a plain PEXPIRE would extend a lease that another
scheduler acquired after ours expired.
--]]

local info_key = KEYS[1]

local token = ARGV[1]
local ttl_ms = ARGV[2]

if #ARGV > 2 then
  redis.call('HSET', info_key, unpack(ARGV, 3))
  redis.call('PEXPIRE', info_key, ttl_ms)
end

local outcomes = {}
for i = 2, #KEYS do
  -- pcall: a lease key of another type must cost only its own queue, not the whole renewal.
  local holder = redis.pcall('GET', KEYS[i])
  if holder == token then
    redis.call('PEXPIRE', KEYS[i], ttl_ms)
    outcomes[#outcomes + 1] = 1
  elseif holder then
    outcomes[#outcomes + 1] = 0
  else
    outcomes[#outcomes + 1] = -1
  end
end

return outcomes
