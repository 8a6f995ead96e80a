#!lua name=wspubsub
-- wspubsub's per-key history, loaded into Redis by every gateway (FUNCTION
-- LOAD REPLACE) with its settings filled in below. Backends publish
-- durably with one call:
--
--   FCALL wspubsub_publish 0 '<envelope>' [idempotency-key]
--
-- which records the message in the history of each recipient and publishes
-- it on the gateways' channel, atomically. See README "Delivery guarantees".
-- In a Redis Cluster a call touches one slot: pass the history keys of the
-- recipients of that slot (wspubsub:h:{<key>}); they are then the
-- recipients, whatever the message lists:
--
--   FCALL wspubsub_publish 1 'wspubsub:h:{k1}' '<envelope>' [idempotency-key]

local SIZE = {{SIZE}}       -- messages kept per key
local TTL = {{TTL}}         -- ms a message is kept
local CHANNEL = {{CHANNEL}} -- the gateways' inbound channel
-- With per-key routing (--routing keys) each recipient's message goes on
-- its own sharded channel, and a broadcast on the broadcast channel.
local ROUTED = {{ROUTED}}
local BROADCAST = {{BROADCAST}}

local function stream(key) return 'wspubsub:h:{' .. key .. '}' end

-- A hand-written walk over the top-level members, so that everything but
-- the routing members reaches clients byte for byte (cjson would re-encode
-- numbers and reorder members). Only ever called on JSON cjson accepted.
local function skip_ws(s, i)
  local _, e = string.find(s, '^[ \t\r\n]*', i)
  return e + 1
end

local function skip_string(s, i)
  i = i + 1
  while true do
    local j = string.find(s, '["\\]', i)
    if string.byte(s, j) == 92 then i = j + 2 else return j + 1 end
  end
end

local function skip_value(s, i)
  local c = string.byte(s, i)
  if c == 34 then return skip_string(s, i) end
  if c == 123 or c == 91 then
    local depth = 0
    while true do
      local j = string.find(s, '["{}%[%]]', i)
      local d = string.byte(s, j)
      if d == 34 then
        i = skip_string(s, j)
      elseif d == 123 or d == 91 then
        depth = depth + 1
        i = j + 1
      else
        depth = depth - 1
        i = j + 1
        if depth == 0 then return i end
      end
    end
  end
  local _, e = string.find(s, '^[^,}%] \t\r\n]*', i)
  return e + 1
end

local ROUTING = { recipients = true, wspubsub_ids = true }

-- payload is what a client receives: the object minus its routing members.
local function payload(s)
  local i = skip_ws(s, skip_ws(s, 1) + 1)
  local kept = {}
  while string.byte(s, i) ~= 125 do
    local ke = skip_string(s, i)
    local name = string.sub(s, i + 1, ke - 2)
    local v = skip_ws(s, skip_ws(s, ke) + 1)
    local ve = skip_value(s, v)
    if not ROUTING[name] then kept[#kept + 1] = string.sub(s, i, ve - 1) end
    i = skip_ws(s, ve)
    if string.byte(s, i) == 44 then i = skip_ws(s, i + 1) end
  end
  return '{' .. table.concat(kept, ',') .. '}'
end

local function b36(n)
  local digits, out = '0123456789abcdefghijklmnopqrstuvwxyz', ''
  repeat
    local d = n % 36
    out = string.sub(digits, d + 1, d + 1) .. out
    n = (n - d) / 36
  until n == 0
  return out
end

-- The epoch names one life of a key's stream: a stream recreated (expired,
-- or lost by Redis) gets a new one, so ids from before cannot be resumed
-- from as if nothing had happened.
-- Each entry also names the one before it ('0-0' for the first): once
-- older entries are trimmed, the oldest held one says whether a client's
-- id is its predecessor (nothing lost) or older (a gap).
local function last_of(sk, t)
  local last = redis.call('XREVRANGE', sk, '+', '-', 'COUNT', 1)
  if #last > 0 then return last[1][2][2], last[1][1] end
  return b36(tonumber(t[1])) .. b36(tonumber(t[2])), '0-0'
end

local function fail(why) return redis.error_reply('ERR wspubsub: ' .. why) end

local function publish(keys, args)
  local msg, idem = args[1], args[2]
  if msg == nil then return fail('usage: FCALL wspubsub_publish 0 <envelope> [idempotency-key]') end
  local ok, env = pcall(cjson.decode, msg)
  if not ok or type(env) ~= 'table' or string.byte(msg, skip_ws(msg, 1)) ~= 123 then
    return fail('the message is not a JSON object')
  end
  if env['data'] == nil then return fail('the message has no "data" member') end
  if env['broadcast'] == true and env['recipients'] == nil then
    -- A broadcast has no key, so no history: delivered live only.
    if ROUTED then redis.call('SPUBLISH', BROADCAST, msg) else redis.call('PUBLISH', CHANNEL, msg) end
    return { 0 }
  end
  local r = env['recipients']
  if type(r) ~= 'table' or #r == 0 then return fail('"recipients" must be a non-empty list') end
  for _, k in ipairs(r) do
    if type(k) ~= 'string' then return fail('"recipients" must hold strings') end
  end
  if #keys > 0 then
    r = {}
    for i, sk in ipairs(keys) do
      local k = string.match(sk, '^wspubsub:h:{(.*)}$')
      if k == nil then return fail('keys must be history keys, wspubsub:h:{<key>}') end
      r[i] = k
    end
  end
  local ikey
  if idem ~= nil and idem ~= '' then
    ikey = 'wspubsub:i:{' .. r[1] .. '}:' .. idem
    local prev = redis.call('GET', ikey)
    if prev then
      local out = cjson.decode(prev)
      table.insert(out, 1, 1)
      return out
    end
  end
  -- One recipient: the message is kept as it came (the gateway drops the
  -- routing members on replay), sparing the walk over it; several: the
  -- payload, so that a long list is not copied into every history.
  local kind, p = 'm', msg
  if #r > 1 or ROUTED or #keys > 0 then kind, p = 'p', payload(msg) end
  local t = redis.call('TIME')
  local minid = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - TTL
  local ids, seen = {}, {}
  for i, k in ipairs(r) do
    if seen[k] == nil then
      local sk = stream(k)
      local e, prev = last_of(sk, t)
      local id = redis.call('XADD', sk, 'MAXLEN', SIZE, '*', 'e', e, 'v', prev, kind, p)
      redis.call('XTRIM', sk, 'MINID', string.format('%d', minid))
      redis.call('PEXPIRE', sk, TTL)
      seen[k] = e .. '.' .. id
    end
    ids[i] = seen[k]
  end
  local list
  if #ids == 1 then list = '["' .. ids[1] .. '"]' else list = cjson.encode(ids) end
  if ROUTED then
    -- One message per key, on its channel: the nodes holding it.
    local rest = string.sub(p, 2)
    if rest ~= '}' then rest = ',' .. rest end
    local sent = {}
    for i, k in ipairs(r) do
      if sent[k] == nil then
        sent[k] = true
        redis.call('SPUBLISH', 'wspubsub:k:{' .. k .. '}',
          '{"wspubsub_ids":["' .. ids[i] .. '"],"recipients":[' .. cjson.encode(k) .. ']' .. rest)
      end
    end
  else
    redis.call('PUBLISH', CHANNEL, '{"wspubsub_ids":' .. list .. ',' .. string.sub(msg, skip_ws(msg, 1) + 1))
  end
  if ikey then redis.call('SET', ikey, list, 'PX', TTL) end
  table.insert(ids, 1, 0)
  return ids
end

local function cmp(a, b)
  local am, as = string.match(a, '^(%d+)%-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)%-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  if am ~= bm then return am < bm and -1 or 1 end
  if as ~= bs then return as < bs and -1 or 1 end
  return 0
end

-- since answers { gap, top, id1, kind1, value1, ... }: kind 'p' is the
-- payload, 'm' the whole message as published (one recipient); gap is 1
-- when the history no longer reaches back to `from`; top is the newest id
-- held ('0' when none); the entries are those after `from` (all held on a
-- gap). `from` '' asks for the position only; '0' for everything held.
local function since(keys, args)
  local sk, from = keys[1], args[1] or ''
  if redis.call('EXISTS', sk) == 0 then
    if from == '' or from == '0' then return { 0, '0' } end
    return { 1, '0' }
  end
  local last = redis.call('XREVRANGE', sk, '+', '-', 'COUNT', 1)
  local e = last[1][2][2]
  local top = e .. '.' .. last[1][1]
  if from == '' then return { 0, top } end
  local prev = redis.call('XRANGE', sk, '-', '+', 'COUNT', 1)[1][2][4]
  local gap, start = 0, '-'
  if from == '0' then
    if prev ~= '0-0' then gap = 1 end
  else
    local fe, fid = string.match(from, '^([0-9a-z]+)%.(%d+%-%d+)$')
    if fe ~= e or cmp(prev, fid) > 0 then
      gap = 1
    else
      start = '(' .. fid
    end
  end
  local out = { gap, top }
  for _, en in ipairs(redis.call('XRANGE', sk, start, '+')) do
    out[#out + 1] = e .. '.' .. en[1]
    out[#out + 1] = en[2][5]
    out[#out + 1] = en[2][6]
  end
  return out
end

redis.register_function('wspubsub_publish', publish)
redis.register_function { function_name = 'wspubsub_since', callback = since, flags = { 'no-writes' } }
