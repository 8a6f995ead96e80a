#!lua name=wspubsub
-- wspubsub's per-key history, loaded into Redis by every gateway (FUNCTION
-- LOAD REPLACE) with its settings filled in below. Backends publish
-- durably with one call:
--
--   FCALL wspubsub_publish 0 '<envelope>' [idempotency-key]
--
-- which records the message in the history of each recipient and publishes
-- it on the gateways' channel, atomically. See README "Delivery guarantees".
-- Many messages in one call (one round trip, one function call: less Redis
-- CPU per message), each recorded and published as by wspubsub_publish,
-- in order; the answer holds one wspubsub_publish answer (or error) per
-- message ('' for no idempotency key):
--
--   FCALL wspubsub_publish_batch 0 '<envelope>' '<idempotency-key>' ['<envelope>' '<idempotency-key>' ...]
--
-- In a Redis Cluster a call touches one slot: pass the history keys of the
-- recipients of that slot (wspubsub:h:{<key>}); they are then the
-- recipients, whatever the message lists (no batch form there):
--
--   FCALL wspubsub_publish 1 'wspubsub:h:{k1}' '<envelope>' [idempotency-key]

-- Command arguments are strings: a Lua number would be formatted anew on
-- each call.
local SIZE = '{{SIZE}}'         -- messages kept per key
local TTL = {{TTL}}             -- ms a message is kept
local TTL_ARG = '{{TTL}}'
local META_TTL = '{{META_TTL}}' -- ms a key's meta record outlives its last publish or resume
local CHANNEL = {{CHANNEL}} -- the gateways' inbound channel
-- With per-key routing (--routing keys) each recipient's message goes on
-- its own sharded channel, and a broadcast on the broadcast channel.
local ROUTED = {{ROUTED}}
local BROADCAST = {{BROADCAST}}
-- Trimming by age and pushing a stream's expiry back are done at most once
-- per SLACK ms per key, not per message: an entry older than TTL is hidden
-- from since() at once, and gone from memory within SLACK.
local SLACK = {{SLACK}}
local EXPIRE = '{{EXPIRE}}' -- a stream's expiry, pushed back every SLACK: TTL + SLACK

local function stream(key) return 'wspubsub:h:{' .. key .. '}' end
-- A key's meta record, '<epoch>.<last id> <due>': the epoch of its history
-- and the last id given (or '<epoch>.0-0': a position told before any
-- message), kept META_TTL, far longer than the stream. It lets an id be
-- judged after the stream expired: the last id itself loses nothing, an
-- older one or another epoch's is a gap. due: from then on, the next
-- append trims by age and pushes the stream's expiry back. Same hash tag
-- as the stream: same Cluster slot.
local function meta(key) return 'wspubsub:m:{' .. key .. '}' end

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

-- lone_surrogate reports whether JSON text s holds a \uD800-\uDFFF escape
-- that is not half of a pair.
local function lone_surrogate(s)
  local i = 1
  while true do
    local j = string.find(s, '\\', i, true)
    if j == nil then return false end
    local h = string.match(s, '^u[dD]([89a-fA-F])', j + 1)
    if h == nil then
      i = j + 2 -- whatever it escapes, a backslash included
    elseif string.find('89abAB', h, 1, true) and string.find(s, '^\\u[dD][c-fC-F]', j + 6) then
      i = j + 12
    else
      return true
    end
  end
end

-- refusal says why a message holding a backslash is refused (nil: it is
-- not), as the gateway's parser refuses it (Go: envelope.ReasonEscapedName,
-- ReasonBadRecipients). That parser matches member names on their bytes,
-- cjson on their decoded text: with a name spelt with an escape
-- ("recipi\u0065nts") they would disagree on the recipients. A lone
-- surrogate in a recipient decodes differently in each, where cjson takes it.
local function refusal(s)
  local i = skip_ws(s, skip_ws(s, 1) + 1)
  while string.byte(s, i) ~= 125 do
    local ke = skip_string(s, i)
    local name = string.sub(s, i + 1, ke - 2)
    if string.find(name, '\\', 1, true) then return 'a top-level member name holds a backslash escape' end
    local v = skip_ws(s, skip_ws(s, ke) + 1)
    local ve = skip_value(s, v)
    if name == 'recipients' and lone_surrogate(string.sub(s, v, ve - 1)) then
      return 'a lone UTF-16 surrogate escape in "recipients"'
    end
    i = skip_ws(s, ve)
    if string.byte(s, i) == 44 then i = skip_ws(s, i + 1) end
  end
  return nil
end

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

local function fmt(ms) return string.format('%d', ms) end

-- later reports whether a is after b, both decimal numbers without
-- leading zeros (compared as strings: formatting and parsing numbers is
-- what costs most in Lua here).
local function later(a, b) return #a > #b or (#a == #b and a > b) end

-- The epoch names one life of a key's history: a history recreated after
-- its meta record expired, or after Redis lost it, gets a new one, so ids
-- from before cannot be resumed from as if nothing had happened.
local function new_epoch(t) return b36(tonumber(t[1])) .. b36(tonumber(t[2])) end

-- parse_meta answers a meta record's epoch, last id ('<ms>-<seq>') and
-- due time; nothing for none.
local function parse_meta(m)
  if not m then return nil end
  local dot = string.find(m, '.', 1, true)
  local sp = dot and string.find(m, ' ', dot, true)
  if not sp then return nil end
  return string.sub(m, 1, dot - 1), string.sub(m, dot + 1, sp - 1), string.sub(m, sp + 1)
end

-- Each entry also names the one before it ('0-0' for the first of an
-- epoch): once older entries are trimmed or expired, the oldest held one
-- says whether a client's id is its predecessor (nothing lost) or older
-- (a gap). last_of reads them from the stream: a key without meta record
-- (recorded by an older version of this library). Nothing but an error
-- (sk holds another type) when it cannot.
local function last_of(sk, t)
  local last = redis.pcall('XREVRANGE', sk, '+', '-', 'COUNT', 1)
  if last.err then return nil, last.err end
  if #last > 0 then return last[1][2][2], last[1][1] end
  return new_epoch(t), '0-0'
end

local function fail(why) return redis.error_reply('ERR wspubsub: ' .. why) end

-- failed reports whether r, a redis.pcall answer, is an error.
local function failed(r) return type(r) == 'table' and r.err ~= nil end

-- append records one message in key k's history and answers its id. The
-- id follows the meta record's last one, as XADD '*' would follow the
-- stream's, but also across a stream that expired in between. m is the
-- meta record when the caller read it already (false: there is none), mk
-- its key. c is the call's clock. A key of another type where the stream or
-- the record goes answers nil and the error, so that it fails this message
-- only, not the whole call (redis.call would raise, ending a batch midway).
local function append(k, kind, p, c, m, mk)
  local sk = stream(k)
  mk = mk or meta(k)
  if m == nil then
    m = redis.pcall('GET', mk)
    if failed(m) then return nil, m.err end
  end
  local e, prev, due = parse_meta(m)
  local id
  if e then
    local d = string.find(prev, '-', 1, true)
    if later(c.ms, string.sub(prev, 1, d - 1)) then
      id = c.id
    else -- the same millisecond (or a clock gone back): the next sequence
      id = string.sub(prev, 1, d) .. fmt(tonumber(string.sub(prev, d + 1)) + 1)
    end
    local r = redis.pcall('XADD', sk, 'NOMKSTREAM', 'MAXLEN', SIZE, id, 'e', e, 'v', prev, kind, p)
    if r == false then -- no stream: a new one, continuing the chain
      redis.call('XADD', sk, 'MAXLEN', SIZE, id, 'e', e, 'v', prev, kind, p)
      due = '0'
    elseif type(r) == 'table' then -- the stream is ahead of its record (an older library wrote it)
      e = nil
    end
  end
  if not e then
    e, prev = last_of(sk, c.t)
    if e == nil then return nil, prev end
    id = redis.pcall('XADD', sk, 'MAXLEN', SIZE, '*', 'e', e, 'v', prev, kind, p)
    if failed(id) then return nil, id.err end
    due = '0'
  end
  id = e .. '.' .. id
  if later(due, c.ms) then
    -- The record's expiry is pushed back with the stream's (SET PX costs
    -- twice as much as SET KEEPTTL): it still outlives the stream.
    redis.call('SET', mk, id .. ' ' .. due, 'KEEPTTL')
  else
    if not c.due then c.due, c.minid = fmt(c.now + SLACK), fmt(c.now - TTL) end
    -- sk is a stream by now: XADD succeeded.
    redis.call('XTRIM', sk, 'MINID', c.minid)
    redis.call('PEXPIRE', sk, EXPIRE)
    redis.call('SET', mk, id .. ' ' .. c.due, 'PX', META_TTL)
  end
  return id
end

-- publish_one is wspubsub_publish for one message; c is the call's clock.
local function publish_one(keys, msg, idem, c)
  if msg == nil then return fail('usage: FCALL wspubsub_publish 0 <envelope> [idempotency-key]') end
  local ok, env = pcall(cjson.decode, msg)
  if not ok then return fail('the message is not valid JSON (' .. tostring(env) .. ')') end
  if type(env) ~= 'table' or string.byte(msg, skip_ws(msg, 1)) ~= 123 then
    return fail('the message is not a JSON object')
  end
  if string.find(msg, '\\', 1, true) then
    local why = refusal(msg)
    if why then return fail(why) end
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
  local ikey, m1, mk1
  if idem ~= nil and idem ~= '' then
    -- The first recipient's meta record comes with it (same slot): one
    -- call instead of two.
    ikey, mk1 = 'wspubsub:i:{' .. r[1] .. '}:' .. idem, meta(r[1])
    local got = redis.call('MGET', ikey, mk1)
    if got[1] then
      local out = cjson.decode(got[1])
      table.insert(out, 1, 1)
      return out
    end
    m1 = got[2]
  end
  -- One recipient: the message is kept as it came (the gateway drops the
  -- routing members on replay), sparing the walk over it; several: the
  -- payload, so that a long list is not copied into every history.
  local kind, p = 'm', msg
  if #r > 1 or ROUTED or #keys > 0 then kind, p = 'p', payload(msg) end
  local ids, seen = {}, {}
  for i, k in ipairs(r) do
    if seen[k] == nil then
      local id, err
      if i == 1 then id, err = append(k, kind, p, c, m1, mk1) else id, err = append(k, kind, p, c) end
      -- Not published, no idempotency record: a retry records it anew
      -- (the recipients before this one may then hold it twice).
      if id == nil then return fail('recording in the history of recipient ' .. i .. ': ' .. err) end
      seen[k] = id
    end
    ids[i] = seen[k]
  end
  local list
  if #ids == 1 then list = '["' .. ids[1] .. '"]' else list = cjson.encode(ids) end

  -- The publish step: recorded, the message goes to the gateways.
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
    -- On a channel of its own (Go: RecordedChannel): anyone may PUBLISH on
    -- CHANNEL, so the gateways trust ids only from here.
    redis.call('PUBLISH', 'wspubsub:r:{' .. CHANNEL .. '}',
      '{"wspubsub_ids":' .. list .. ',' .. string.sub(msg, skip_ws(msg, 1) + 1))
  end
  -- End of the publish step.

  if ikey then redis.call('SET', ikey, list, 'PX', TTL_ARG) end
  table.insert(ids, 1, 0)
  return ids
end

-- clock is the call's time, read once: t (TIME), now (ms), ms (now as a
-- string) and id (the first id of that millisecond); append adds the due
-- time and trimming bound when it first needs them.
local function clock()
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local ms = fmt(now)
  return { t = t, now = now, ms = ms, id = ms .. '-0' }
end

local function publish(keys, args)
  return publish_one(keys, args[1], args[2], clock())
end

local function publish_batch(keys, args)
  if #keys > 0 then return fail('wspubsub_publish_batch takes no keys: in a Redis Cluster, call wspubsub_publish per slot') end
  if #args == 0 or #args % 2 ~= 0 then
    return fail('usage: FCALL wspubsub_publish_batch 0 <envelope> <idempotency-key> [<envelope> <idempotency-key> ...]')
  end
  local c = clock()
  local out = {}
  for i = 1, #args, 2 do out[#out + 1] = publish_one(keys, args[i], args[i + 1], c) end
  return out
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
-- when what is held no longer reaches back to `from`; top is the key's
-- last id ('<epoch>.0-0' before any message; '0' when nothing is known of
-- the key); the entries are those held after `from` (all held on a gap).
-- Held: younger than TTL. `from` '' asks for the position only (and
-- starts a meta record when the key has none, so that the position is a
-- real one); '0' for everything held. A resume keeps the meta record.
local function since(keys, args)
  local sk, from = keys[1], args[1] or ''
  local k = string.match(sk, '^wspubsub:h:{(.*)}$')
  if k == nil then return fail('keys must be history keys, wspubsub:h:{<key>}') end
  local mk = meta(k)
  local c = clock()
  local m = redis.call('GET', mk)
  local e, last, due = parse_meta(m)
  local oldest = fmt(c.now - TTL)
  local first = redis.call('XRANGE', sk, oldest, '+', 'COUNT', 1)
  local prev
  if #first > 0 or not e then
    -- The stream is authoritative for what it holds (and the only source
    -- for a key recorded by an older version of this library).
    local newest = redis.call('XREVRANGE', sk, '+', '-', 'COUNT', 1)
    if #newest > 0 and (newest[1][2][2] ~= e or newest[1][1] ~= last) then
      e, last = newest[1][2][2], newest[1][1]
      -- The record follows the stream (it had none: written by an older
      -- version, or the record was evicted; or it was behind), so that
      -- once the stream expires its last id still resumes without a gap.
      redis.call('SET', mk, e .. '.' .. last .. ' ' .. (due or '0'), 'PX', META_TTL)
      m = nil -- its expiry is set
    end
  end
  if e == nil then
    if from == '' then
      e = new_epoch(c.t)
      redis.call('SET', mk, e .. '.0-0 0', 'PX', META_TTL)
      return { 0, e .. '.0-0' }
    end
    if from == '0' then return { 0, '0' } end
    return { 1, '0' }
  end
  if m then redis.call('PEXPIRE', mk, META_TTL) end
  local top = e .. '.' .. last
  if from == '' then return { 0, top } end
  -- Nothing held: everything up to the last id is gone, and the next
  -- entry will name it as its predecessor.
  if #first > 0 then prev = first[1][2][4] else prev = last end
  local gap, start = 0, oldest
  if from == '0' then
    if prev ~= '0-0' then gap = 1 end
  else
    local fe, fid = string.match(from, '^([0-9a-z]+)%.(%d+%-%d+)$')
    -- An id past the last one: the history lost what the client got.
    if fe ~= e or cmp(prev, fid) > 0 or cmp(fid, last) > 0 then
      gap = 1
    else
      start = '(' .. fid
    end
  end
  local out = { gap, top }
  if #first == 0 then return out end
  for _, en in ipairs(redis.call('XRANGE', sk, start, '+')) do
    out[#out + 1] = e .. '.' .. en[1]
    out[#out + 1] = en[2][5]
    out[#out + 1] = en[2][6]
  end
  return out
end

redis.register_function('wspubsub_publish', publish)
redis.register_function('wspubsub_publish_batch', publish_batch)
-- since may write (a meta record): allow-oom keeps resumes working when
-- Redis is full, as when it only read.
redis.register_function { function_name = 'wspubsub_since', callback = since, flags = { 'allow-oom' } }
