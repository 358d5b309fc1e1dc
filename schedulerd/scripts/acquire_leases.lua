--[[
acquire_leases: take every free lease in KEYS for the caller's token.

KEYS[i]  lease key   string   rq:scheduler-lock:<queue>
ARGV[1]  token       digits   the caller's lease token
ARGV[2]  ttl         integer  time to live of an acquired lease, milliseconds

Returns one integer per key, in KEYS order: 1 acquired (or already the caller's, now extended),
0 held by another value (or a key of another type, which only an operator can clear).

Why a script and not bare SET NX PX: when a reply is lost and the client retries, the key
already holds the caller's token, and SET NX alone would report the lease as someone else's.
--]]

local token = ARGV[1]
local ttl_ms = ARGV[2]

local outcomes = {}
for i = 1, #KEYS do
  if redis.call('SET', KEYS[i], token, 'NX', 'PX', ttl_ms) then
    outcomes[i] = 1
  elseif redis.pcall('GET', KEYS[i]) == token then
    redis.call('PEXPIRE', KEYS[i], ttl_ms)
    outcomes[i] = 1
  else
    outcomes[i] = 0
  end
end

return outcomes
