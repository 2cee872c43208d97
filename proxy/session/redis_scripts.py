"""The Lua scripts of the Redis ledger: each is one atomic step on the server.

They implement the same protocol as ``memory.py`` (see ``base.py``). Check-and-reserve must
happen in one step on the server, so that calls of one task on different replicas can never
together overspend: the reserve script is assembled, once at import, from the detector registry
(``proxy.detectors.registry``): each reserve-phase detector's Lua snippet, in registry order, and
a trip constructor per detector generated from its declared figures and their rounding. Trips
are JSON ``{"reason", "figures"}`` written with every number's 17 digits, so a trip reads and
compares the same whichever ledger made it. A differential test drives both ledgers with the
same random calls and fails on any difference.

Money is added in Lua doubles and stored with 17 digits (not with ``HINCRBYFLOAT``, whose long
doubles printed to 17 decimals drift from the embedded ledger's sums), so both ledgers hold the
very same dollar figures.

Keys of one task share the hash tag ``{task}`` so every script touches a single cluster slot.
Ids are percent-escaped where they stand in a key (``redis.key_part``: braces, colons, glob
characters, ``%``, spaces and non-ASCII), so no id can close the hash tag or reach another key:

    <prefix>:{task}:s        hash: started, last_seen, used, reserved, cost, cost_reserved,
                             calls, hops, last_agent, max_tokens, killed, obs|<reason>,
                             content (the content detectors' state, base64) and content_v
                             (its version, raised by every write of it)
    <prefix>:{task}:a        hash: <agent>|u (tokens used), <agent>|r (tokens reserved)
    <prefix>:{task}:z        sorted set of reservations "id|tokens|cost|agent", scored by expiry
    <prefix>:{task}:w:<reason>      list: the window of a task-scoped settle-phase detector
                                    (repeat_output: the task's last output fingerprints)
    <prefix>:{task}:w:<reason>:<a>  list: the window of an agent-scoped one, per agent bucket
                                    (repeat_request: agent <a>'s last request fingerprints)
    <prefix>:{task}:p        list: previews of the last completions (JSON)
    <prefix>:{task}:t        list: the task's timeline of trips, kills, resumes (JSON)

Limits set on one task (at creation, or raised on resume) live in the state hash as
``lim|<name>`` and win over the policy's; ``extra_duration`` moves the deadline.

Every key gets the task TTL on every write, except that a killed task's state, agents and
timeline get the kill's retention (``kill_retention``, never less than the TTL) from the kill on,
from every script that touches them: neither a refused call nor a call settling after the kill
brings them back to the idle TTL. Replies carry floats as strings, since Redis turns Lua numbers
into integers.
"""

from __future__ import annotations

from proxy.detectors.registry import RESERVE as RESERVE_DETECTORS
from proxy.session.base import PREVIEWS_PER_TASK, TIMELINE_PER_TASK

# Bump the version when a script's keys, arguments, reply or rules change, so replicas of two
# versions never share a key layout or a kill channel by accident.
VERSION = 6
# Settled calls remembered per task, so a settle replayed after its reply was lost (the script
# ran, the answer never came back) is not counted twice.
SETTLED_PER_TASK = 512

# Shared by every script: exact numbers, money added in doubles, trips as JSON.
_PRELUDE = """
local function num(x) return string.format('%.17g', x) end

local function addf(key, field, delta, floor)
  local value = (tonumber(redis.call('HGET', key, field)) or 0) + delta
  if floor and value < 0 then value = 0 end
  redis.call('HSET', key, field, num(value))
  return value
end

local function fig(name, value, decimals, optional)
  if value == nil or value == false then
    if optional then return false end
    error('figure ' .. name .. ' is required')
  end
  if type(value) == 'number' then
    if decimals then value = tonumber(string.format('%.' .. decimals .. 'f', value)) end
    return '"' .. name .. '":' .. num(value)
  end
  return '"' .. name .. '":' .. cjson.encode(value)
end

local function make_trip(reason, parts)
  local kept = {}
  for _, part in ipairs(parts) do
    if part then table.insert(kept, part) end
  end
  return {reason = reason, json = '{"reason":"' .. reason .. '","figures":{' ..
    table.concat(kept, ',') .. '}}'}
end

local function release(s, a, member)
  local tokens, cost, who = string.match(member, '^[^|]*|([^|]*)|([^|]*)|(.*)$')
  redis.call('HINCRBY', s, 'reserved', 0 - tonumber(tokens))
  addf(s, 'cost_reserved', -tonumber(cost), true)
  redis.call('HINCRBY', a, who .. '|r', 0 - tonumber(tokens))
  return who
end
"""

_CONSTRUCTORS = "".join(detector.lua_constructor() for detector in RESERVE_DETECTORS)
_CHECKS = "".join(detector.lua for detector in RESERVE_DETECTORS)

RESERVE = (
    (
        f"-- tripwire reserve v{VERSION}\n"
        + _PRELUDE
        + _CONSTRUCTORS
        + """
local s, a, z, timeline, d = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local caller = ARGV[1]
local prompt = tonumber(ARGV[2])
local requested = tonumber(ARGV[3])
local choices = tonumber(ARGV[4])
local function limit(x)
  x = tonumber(x)
  if x < 0 then return nil end
  return x
end
local max_tokens, max_agent, max_cost = limit(ARGV[5]), limit(ARGV[6]), limit(ARGV[7])
local max_calls, max_hops, max_duration = limit(ARGV[8]), limit(ARGV[9]), limit(ARGV[10])
local prompt_cost, out_price = tonumber(ARGV[11]), tonumber(ARGV[12])
local kill = ARGV[13] == 'kill'
local ttl, rid = tonumber(ARGV[14]), ARGV[15]
local rttl, max_agents = tonumber(ARGV[16]), tonumber(ARGV[17])
local task, model, channel = ARGV[18], ARGV[19], ARGV[20]
local tenant, owner = ARGV[21], ARGV[22]

-- The server's clock, one for every replica; a ledger given a clock of its own passes it.
local now = tonumber(ARGV[23])
local t = redis.call('TIME')
if not now then now = tonumber(t[1]) + tonumber(t[2]) / 1000000 end
-- A killed task's keys live this long (kill_retention, never less than the TTL), whatever
-- call touches them: a refused call never shortens a kill's life back to the idle TTL.
local retention = tonumber(ARGV[24])
-- '0': the prompt was not estimated, as no token or dollar budget was known to apply.
local estimated = ARGV[25] ~= '0'

local function touch(life)
  life = life or ttl
  redis.call('EXPIRE', s, life)
  redis.call('EXPIRE', a, life)
  redis.call('EXPIRE', z, life)
end

-- A task is kept from the first call let through: a first call refused writes nothing. Whether
-- the task is new is asked only of a call that trips, or before a stale charge writes.
local existed = nil
local function new()
  if existed == nil then existed = redis.call('EXISTS', s) == 1 end
  return not existed
end

local function timeline_push(entry)
  redis.call('LPUSH', timeline, entry)
  redis.call('LTRIM', timeline, 0, TIMELINE - 1)
  redis.call('EXPIRE', timeline, ttl)
end

-- A call that never settled (its replica died mid-call) may have been billed up to what it
-- reserved: that is charged as spent, so a budget holds whatever the provider billed. Its id
-- joins the settled ones, so a settle arriving after all is not counted on top.
local stale = redis.call('ZRANGEBYSCORE', z, '-inf', now)
if #stale > 0 then
  new()
  local charged = 0
  for _, member in ipairs(stale) do
    local tokens, cost = string.match(member, '^[^|]*|([^|]*)|([^|]*)|')
    local who = release(s, a, member)
    redis.call('HINCRBY', s, 'used', tonumber(tokens))
    addf(s, 'cost', tonumber(cost), false)
    redis.call('HINCRBY', a, who .. '|u', tonumber(tokens))
    redis.call('ZADD', d, 'NX', t[1], string.match(member, '^[^|]*'))
    charged = charged + tonumber(tokens)
  end
  redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
  redis.call('ZREMRANGEBYRANK', d, 0, -(SETTLED + 1))
  redis.call('EXPIRE', d, ttl)
  timeline_push(cjson.encode({at = now, kind = 'charged', detail = string.format(
    '%d call(s) never settled within the reservation TTL (a replica stopped mid-call); ' ..
    'their %d reserved tokens are charged as spent', #stale, charged)}))
end

local st = redis.call('HMGET', s, 'started', 'killed', 'used', 'reserved', 'cost',
  'cost_reserved', 'calls', 'hops', 'last_agent', 'lim|max_tokens', 'lim|max_tokens_per_agent',
  'lim|max_cost_usd', 'lim|max_calls', 'lim|max_hops', 'lim|max_duration', 'extra_duration')
if st[2] then
  redis.call('HSET', s, 'last_seen', num(now))
  touch(retention)
  redis.call('EXPIRE', timeline, retention)
  return {'killed', st[2]}
end
-- A budget of the task's own needs the prompt's estimate: nothing is written, the caller
-- estimates and asks again.
if not estimated and (st[10] or st[11] or st[12]) then return {'estimate'} end
local started = tonumber(st[1]) or now
local used, reserved = tonumber(st[3]) or 0, tonumber(st[4]) or 0
local cost, cost_reserved = tonumber(st[5]) or 0, tonumber(st[6]) or 0
local calls, hops = tonumber(st[7]) or 0, tonumber(st[8]) or 0
local last_agent = st[9] or nil
-- Limits set on this task by its creator or an operator win over the policy's.
max_tokens = tonumber(st[10]) or max_tokens
max_agent = tonumber(st[11]) or max_agent
max_cost = tonumber(st[12]) or max_cost
max_calls = tonumber(st[13]) or max_calls
max_hops = tonumber(st[14]) or max_hops
max_duration = tonumber(st[15]) or max_duration
if max_duration == 0 then max_duration = nil end  -- as in Python: 0 sets no deadline
if max_duration then max_duration = max_duration + (tonumber(st[16]) or 0) end
-- The limit the task was last checked against, for its view; who the task belongs to. Written
-- by every call that keeps the task, in one HSET with the fields the call itself moves.
local function keep(...)
  local fields = {'max_tokens', max_tokens or -1, ...}
  if not st[1] then
    table.insert(fields, 'started')
    table.insert(fields, num(now))
  end
  redis.call('HSET', s, unpack(fields))
  if tenant ~= '' then redis.call('HSETNX', s, 'tenant', tenant) end
  if owner ~= '' then redis.call('HSETNX', s, 'owner', owner) end
end

-- Budgets are kept per agent up to max_agents; later agents share the bucket 'other'. Hops
-- and the figures a person reads name the calling agent itself.
local agent = caller
local ag = redis.call('HMGET', a, agent .. '|u', agent .. '|r')
if not ag[1] and redis.call('HLEN', a) >= 2 * max_agents then
  agent = 'other'
  ag = redis.call('HMGET', a, 'other|u', 'other|r')
end
local a_used, a_reserved = tonumber(ag[1]) or 0, tonumber(ag[2]) or 0

local trips = {}
local busy = false
local function add(trip) table.insert(trips, trip) end
local new_hops = hops
if last_agent and last_agent ~= caller then new_hops = hops + 1 end

local bound = -1
local function tighter(x)
  if x >= 0 and (bound < 0 or x < bound) then bound = x end
end
local function tokens_allowance(make, lim, u, r, scope)
  if not lim then return -1 end
  local left = lim - u - r
  if prompt + 1 <= left then return left - prompt end
  if prompt + 1 <= lim - u then busy = true; return 0 end
  add(make(scope, lim, u, r, math.max(left, 0), prompt, nil))
  return 0
end
-- pricing.max_output_for, step for step: output tokens that fit once the prompt is paid for,
-- lowered while float rounding would charge more than the money left; math.huge: free output.
local function max_output_for(money)
  local left = money - prompt_cost
  if left < 0 then return 0 end
  if out_price <= 0 then return math.huge end
  local n = math.floor(left / out_price)
  for _ = 1, 3 do
    if n == 0 or prompt_cost + n * out_price <= money then break end
    n = n - 1
  end
  return n
end
"""
        + _CHECKS
        + """
if kill and #trips == 0 and busy then
  keep('last_seen', num(now))
  touch()
  return {'busy', tostring(reserved)}
end

local cap = requested
if bound >= 0 then
  cap = math.floor(bound / choices)
  if requested >= 0 and requested < cap then cap = requested end
  if cap == 0 and #trips == 0 then
    add(trip_budget_tokens('the task', nil, nil, nil, nil, nil, choices))
  end
end

local observed = {}
if kill and #trips > 0 and new() then
  return {'refused', trips[1].json}
end
if #trips > 0 then
  if kill then
    local record = trips[1].json
    keep('killed', record, 'last_seen', num(now))
    timeline_push('{"at":' .. num(now) .. ',"kind":"kill","trip":' .. record .. '}')
    redis.call('EXPIRE', timeline, retention)
    touch(retention)
    redis.call('PUBLISH', channel, '{"task":' .. cjson.encode(task) .. ',"trip":' .. record .. '}')
    return {'trip', record}
  end
  for _, trip in ipairs(trips) do
    if redis.call('HSETNX', s, 'obs|' .. trip.reason, 1) == 1 then
      table.insert(observed, trip.json)
    end
  end
end

local enforce = kill and cap >= 0 and cap ~= requested and #trips == 0
local output = 0
if cap >= 0 then output = cap * choices end
local res_tokens = prompt + output
local res_cost = 0
if prompt_cost >= 0 then res_cost = prompt_cost + out_price * output end
-- The figures read above, moved by this call: one write per hash.
keep('last_seen', num(now), 'last_agent', caller, 'hops', new_hops, 'calls', calls + 1,
  'reserved', reserved + res_tokens, 'cost_reserved', num(cost_reserved + res_cost))
redis.call('HSET', a, agent .. '|r', a_reserved + res_tokens, agent .. '|u', a_used)
local member = rid .. '|' .. res_tokens .. '|' .. num(res_cost) .. '|' .. agent
redis.call('ZADD', z, now + rttl, member)
touch()
local enforced = -1
if enforce then enforced = cap end
-- Then the task's own limits and extension, as read (the grant's view carries them, and the
-- deadline of a stream is timed from it without another read).
return {'ok', enforced, member, res_tokens, num(res_cost), num(started), used,
  reserved + res_tokens, num(cost), calls + 1, new_hops, '[' .. table.concat(observed, ',') .. ']',
  st[10] or '', st[11] or '', st[12] or '', st[13] or '', st[14] or '', st[15] or '',
  st[16] or ''}
"""
    )
    .replace("TIMELINE", str(TIMELINE_PER_TASK))
    .replace("SETTLED", str(SETTLED_PER_TASK))
)

SETTLE = (
    f"-- tripwire settle v{VERSION}\n"
    + _PRELUDE
    + """
local s, a, z, p, d = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local member, tokens, cost = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local agent, ttl, extra_calls = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local preview, retention = ARGV[7], tonumber(ARGV[8])
-- The version of the content detectors' state the caller holds ('' when it wants none): when
-- the task's is another, the reply carries it, so the detectors run next on the current state
-- without a read of their own.
local held = ARGV[9]
-- KEYS[6..]: the windows of the registry's settle-phase detectors, in order; ARGV[10..]: for
-- each, the fingerprint to observe ('' for none) and the window's size.
local windows = #KEYS - 5

-- The reply: the task's figures, the windows' counts, whether this was a replay, then the
-- content state's version and the state itself ('' when the caller holds it already).
local function state(counts, replay, st)
  st = st or redis.call('HMGET', s, 'used', 'reserved', 'cost', 'calls', 'hops', 'started',
    'last_seen', 'killed', 'content_v')
  local reply = {st[1] or '0', st[2] or '0', st[3] or '0', st[4] or '0', st[5] or '0',
    st[6] or '0', st[7] or '0', st[8] or ''}
  for _, n in ipairs(counts) do table.insert(reply, n) end
  table.insert(reply, replay)
  local version = st[9] or '0'
  table.insert(reply, version)
  if held ~= '' and version ~= held then
    table.insert(reply, redis.call('HGET', s, 'content') or '')
  else
    table.insert(reply, '')
  end
  return reply
end

if member ~= '' then
  local id = string.match(member, '^[^|]*')
  if redis.call('ZADD', d, 'NX', redis.call('TIME')[1], id) == 0 then
    local counts = {}
    for _ = 1, 2 * windows do table.insert(counts, 0) end
    return state(counts, 1)  -- a replay: counted when it first ran
  end
  redis.call('ZREMRANGEBYRANK', d, 0, -(SETTLED + 1))
  redis.call('EXPIRE', d, ttl)
end
-- The reservation released (when it is still held) and the usage booked: the figures read,
-- moved, and written back in one HSET per hash (the same sums as HINCRBY and ``release``).
local released = member ~= '' and redis.call('ZREM', z, member) == 1
local r_tokens, r_cost = 0, 0
if released then
  local who
  r_tokens, r_cost, who = string.match(member, '^[^|]*|([^|]*)|([^|]*)|(.*)$')
  r_tokens, r_cost, agent = tonumber(r_tokens), tonumber(r_cost), who
end
local fig = redis.call('HMGET', s, 'used', 'reserved', 'cost', 'calls', 'hops', 'started',
  'last_seen', 'killed', 'content_v', 'cost_reserved')
-- What the reply reports, as state() would read it back after the writes below.
local after = {(tonumber(fig[1]) or 0) + tokens, fig[2], num((tonumber(fig[3]) or 0) + cost),
  fig[4], fig[5], fig[6], fig[7], fig[8], fig[9]}
local fields = {'used', after[1], 'cost', after[3]}
if released then
  local left = (tonumber(fig[10]) or 0) - r_cost
  if left < 0 then left = 0 end
  after[2] = (tonumber(fig[2]) or 0) - r_tokens
  table.insert(fields, 'reserved')
  table.insert(fields, after[2])
  table.insert(fields, 'cost_reserved')
  table.insert(fields, num(left))
end
if extra_calls > 0 then
  after[4] = (tonumber(fig[4]) or 0) + extra_calls
  table.insert(fields, 'calls')
  table.insert(fields, after[4])
  if not fig[6] then
    after[6] = redis.call('TIME')[1]
    table.insert(fields, 'started')
    table.insert(fields, after[6])
  end
end
redis.call('HSET', s, unpack(fields))
local ag = redis.call('HMGET', a, agent .. '|u', agent .. '|r')
if released then
  redis.call('HSET', a, agent .. '|u', (tonumber(ag[1]) or 0) + tokens, agent .. '|r',
    (tonumber(ag[2]) or 0) - r_tokens)
else
  redis.call('HSET', a, agent .. '|u', (tonumber(ag[1]) or 0) + tokens)
end

local function observe(key, fp, size)
  if fp == '' then return 0, 0 end
  local length = redis.call('LPUSH', key, fp)
  if length > size then
    redis.call('LTRIM', key, 0, size - 1)
    length = size
  end
  redis.call('EXPIRE', key, ttl)
  return #redis.call('LPOS', key, fp, 'COUNT', 0), length
end
if preview ~= '' then
  redis.call('LPUSH', p, preview)
  redis.call('LTRIM', p, 0, PREVIEWS - 1)
  redis.call('EXPIRE', p, ttl)
end
local counts = {}
for i = 1, windows do
  local seen, length = observe(KEYS[5 + i], ARGV[8 + 2 * i], tonumber(ARGV[9 + 2 * i]))
  table.insert(counts, seen)
  table.insert(counts, length)
end

-- A call settling after its task's kill (the stream the kill cut) keeps the kill's life.
local life = ttl
if fig[8] then life = retention end
for _, key in ipairs({s, a, z}) do redis.call('EXPIRE', key, life) end
return state(counts, 0, after)
""".replace("PREVIEWS", str(PREVIEWS_PER_TASK)).replace("SETTLED", str(SETTLED_PER_TASK))
)

# ARGV[2]: the kill's retention (kill_retention, never less than the task TTL), set on the
# task's state, agents and timeline at once.
KILL = f"""-- tripwire kill v{VERSION}
local s, timeline, a = KEYS[1], KEYS[2], KEYS[3]
if redis.call('HEXISTS', s, 'killed') == 1 then return 0 end
local now = ARGV[6]
if now == '' then now = redis.call('TIME')[1] end
redis.call('HSET', s, 'killed', ARGV[1], 'last_seen', now)
-- A kill before any call starts the deadline's clock, as a first call would.
redis.call('HSETNX', s, 'started', now)
redis.call('EXPIRE', s, tonumber(ARGV[2]))
redis.call('EXPIRE', a, tonumber(ARGV[2]))
redis.call('LPUSH', timeline, ARGV[5])
redis.call('LTRIM', timeline, 0, {TIMELINE_PER_TASK - 1})
redis.call('EXPIRE', timeline, tonumber(ARGV[2]))
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

# Content-detector state is computed in Python (sketches, shingles) and written back only if no
# other replica wrote it since the version the caller computed from; otherwise the reply carries
# the current version and state, and the caller computes again from those (no read of its own).
# A killed task's state is left as it is (and its keys keep the kill's retention).
CONTENT_SWAP = f"""-- tripwire content swap v{VERSION}
local s = KEYS[1]
local st = redis.call('HMGET', s, 'content_v', 'killed')
if st[2] then return {{'killed'}} end
local version = st[1] or '0'
if version ~= ARGV[1] then
  return {{'stale', version, redis.call('HGET', s, 'content') or ''}}
end
version = tostring(tonumber(version) + 1)
redis.call('HSET', s, 'content', ARGV[2], 'content_v', version)
redis.call('EXPIRE', s, tonumber(ARGV[3]))
return {{'ok', version}}
"""
