-- voxgate-rls: check every counter of one request, then increment all of them or none.
-- Redis runs a script atomically, so no other request's increments interleave between the
-- check and the increments, whatever the number of service processes.
--
-- KEYS[i]: counter i (distinct keys). ARGV[3i-2], ARGV[3i-1], ARGV[3i]: the cost, capacity
-- and window (seconds) of counter i. The service keeps every number below 2^53, where Lua's
-- numbers are exact.
-- Returns {admitted (1|0), count_1, ttl_ms_1, count_2, ttl_ms_2, ...}: each count after the
-- request when admitted, unchanged when refused; each time left in the counter's window (the
-- whole window for a counter that does not exist).

local counts = {}
local admitted = 1
for i = 1, #KEYS do
  local value = redis.call('GET', KEYS[i])
  local count = 0
  if value then
    count = tonumber(value)
    if not count then
      return redis.error_reply('voxgate-rls: a counter holds a value that is not a number')
    end
  end
  counts[i] = count
  if count + tonumber(ARGV[3 * i - 2]) > tonumber(ARGV[3 * i - 1]) then
    admitted = 0
  end
end

local result = {admitted}
for i = 1, #KEYS do
  local cost = ARGV[3 * i - 2]
  local window_ms = tonumber(ARGV[3 * i]) * 1000
  local count = counts[i]
  if admitted == 1 and tonumber(cost) > 0 then
    count = redis.call('INCRBY', KEYS[i], cost)
  end
  local ttl = redis.call('PTTL', KEYS[i])
  if ttl == -1 then
    -- Created just now by INCRBY (or left without an expiry by hand): the window starts now.
    redis.call('PEXPIRE', KEYS[i], window_ms)
    ttl = window_ms
  elseif ttl == -2 then
    ttl = window_ms
  end
  result[2 * i] = count
  result[2 * i + 1] = ttl
end
return result
