-- The generic cell rate algorithm (GCRA), atomically in Redis: one key per limit holds the
-- "theoretical arrival time" (TAT) of the next request, in microseconds of the Redis server's
-- clock (one clock for every proxy). A request conforms when it arrives no earlier than
-- TAT - tolerance; a conforming request moves the TAT one emission interval on.
--
-- KEYS[1]  the limit's key
-- ARGV[1]  the emission interval (the period divided by the requests), in microseconds
-- ARGV[2]  the tolerance ((burst - 1) emission intervals), in microseconds
-- ARGV[3]  when the check is stale, in microseconds of this server's clock (0: never): the
--          proxy has given up waiting for it by then and let its request through or refused
--          it, so counting it would spend the limit of requests to come (a server paused for
--          a while runs every check that waited for it at once)
-- Returns { verdict, now }: verdict 1 if the request conforms (and is counted), 0 if it is over
-- the limit, -1 if the check is stale (nothing counted); now is this server's clock, from which
-- the proxy learns how it stands against its own.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local emission = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local stale = tonumber(ARGV[3])
if stale > 0 and now > stale then
  return { -1, now }
end
-- The key expires once its TAT has passed: by then a missing key means the same.
local function store(tat)
  local ttl_ms = math.ceil((tat - now) / 1000) + 1
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', ttl_ms)
end
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then
  tat = now
end
-- This limit never sets a TAT further ahead than now + tolerance + emission. One that is was
-- set under another limit of the same key (a longer period, before the config raised it) or
-- before the server's clock went back: the client is taken to have just spent this limit's
-- whole burst, rather than wait out what is left of the other schedule.
local ceiling = now + tolerance + emission
if tat > ceiling then
  store(ceiling)
  return { 0, now }
end
if now < tat - tolerance then
  return { 0, now }
end
store(tat + emission)
return { 1, now }
