"""The Redis ledger's scripts and schema: the numbered migration steps (:mod:`router.ledger.migrations`), the
script that applies the missing ones with the version in one call, and the scripts that write a record (with
its hourly sums, unless its id is there already), reserve, settle and release.

Versions (the ``meta`` hash's ``schema_version``): 1, the layout without ``ids``; 2, ``ids``, filled for the
records already there with ``legacy-<seq>`` (the id a record written before ids existed reads back with); 3,
``reqs`` (each request id scored by the time of its newest record, so feedback finds its request), filled from
the records already there; the feedback and prompt keys appear as they are written. Each step is idempotent, so a
migration script cut short by a crash is simply run again at the next open.
"""

from __future__ import annotations

from .migrations import Migrations, Step

MIGRATIONS: Migrations[str] = Migrations(
    "Redis",
    [
        Step(1, "records, hourly sums, budgets (keys appear as they are written)", ""),
        Step(
            2,
            "record ids, unique (a record written twice is stored once)",
            """
local members = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = 1, #members, 2 do
  local m = members[i]
  local seq = tonumber(string.sub(m, 1, string.find(m, '|', 1, true) - 1))
  redis.call('ZADD', KEYS[3], 'NX', members[i + 1], 'legacy-' .. seq)
end
""",
        ),
        Step(
            3,
            "records by request id (feedback finds its request); feedback and stored prompts",
            """
local members = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = 1, #members, 2 do
  local m = members[i]
  local rid = cjson.decode(string.sub(m, string.find(m, '|', 1, true) + 1))['request_id']
  local old = redis.call('ZSCORE', KEYS[4], rid)
  if not old or tonumber(old) <= tonumber(members[i + 1]) then
    redis.call('ZADD', KEYS[4], members[i + 1], rid)
  end
end
""",
        ),
    ],
)
SCHEMA_VERSION = MIGRATIONS.latest


def migration_script() -> str:
    """One script: read the version, run the missing steps, write the new version. KEYS: meta, records, ids,
    reqs."""
    parts = [
        "local v = tonumber(redis.call('HGET', KEYS[1], 'schema_version') or '0')",
        f"if v > {SCHEMA_VERSION} then return v end",
    ]
    for step in MIGRATIONS.steps:
        if step.payload.strip():
            parts.append(f"if v < {step.version} then\n{step.payload}\nend")
    parts.append(f"redis.call('HSET', KEYS[1], 'schema_version', {SCHEMA_VERSION})")
    parts.append("return v")
    return "\n".join(parts)

METRICS = ("requests", "energy_j", "input_tokens", "output_tokens", "latency_ms_sum", "co2e_g")
SEP = "\x1f"

RECORD = """
if redis.call('ZADD', KEYS[5], 'NX', ARGV[1], ARGV[11]) == 0 then
  return 0
end
local n = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[1], ARGV[1], string.format('%015d', n) .. '|' .. ARGV[2])
local newest = redis.call('ZSCORE', KEYS[6], ARGV[12])
if not newest or tonumber(newest) <= tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[6], ARGV[1], ARGV[12])
end
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[3])
local names = {'requests', 'energy_j', 'input_tokens', 'output_tokens', 'latency_ms_sum', 'co2e_g'}
for i = 1, 6 do
  redis.call('HINCRBYFLOAT', KEYS[3], ARGV[4] .. '\\31' .. names[i], ARGV[4 + i])
end
return n
"""

# The holds of a counter: ``held`` (a hash, reservation id -> the joules it still holds, ``0`` once it expired) and
# ``expiry`` (a sorted set, reservation id -> when its hold stops counting, server time). A hold past its time
# belongs to a call that can no longer be running (its process was killed): a reservation that finds no room gives
# its joules back to the counter and sets its ``held`` entry to 0, so a settlement arriving later still counts what
# the call used, in full; a read leaves it out of its figure and changes nothing. The ``hold:<id>`` key stays the
# reservation's state: an expired hold is given back (or left out) only while that key still holds a figure. A
# process of the previous release settles or releases a hold by that key alone (its scripts know no ``held`` or
# ``expiry``), giving its joules back then; its ``held`` entry, left behind, must not give them back a second time.
# ``hold_head`` is the ``hold:`` keys' common start (prefix and ``hold:``): the ids in ``expiry`` name the rest.
_NEGATED = """
local function negated(j)
  return string.sub(j, 1, 1) == '-' and string.sub(j, 2) or '-' .. j
end
"""

_EXPIRED = """
local function expired_ids(expiry)
  local t = redis.call('TIME')
  return redis.call('ZRANGEBYSCORE', expiry, '-inf', t[1] .. '.' .. string.format('%06d', t[2]))
end
local function still_held(hold_head, id)
  local hold = redis.call('GET', hold_head .. id)
  return hold ~= false and hold ~= 'released'
end
"""

_RECLAIM = _NEGATED + _EXPIRED + """
local function reclaim(counter, held, expiry, hold_head)
  local ids = expired_ids(expiry)
  for _, id in ipairs(ids) do
    local j = redis.call('HGET', held, id)
    if j and still_held(hold_head, id) then
      if tonumber(j) ~= 0 and redis.call('EXISTS', counter) == 1 then
        redis.call('INCRBYFLOAT', counter, negated(j))
      end
      redis.call('HSET', held, id, '0')
    elseif j then
      redis.call('HDEL', held, id)
    end
    redis.call('ZREM', expiry, id)
  end
  if #ids > 0 and tonumber(redis.call('GET', counter) or '0') < 0 then
    redis.call('SET', counter, '0', 'KEEPTTL')
  end
end
"""

# KEYS: the budget's counter, the reservation's hold (``hold:<id>``), the counter's ``held`` and ``expiry``.
# ARGV: joules, limit, seconds to keep them, the reservation id, seconds the hold counts unsettled ('' : until
# its window ends), ``hold_head``. A hold already there is this reservation's, made by an earlier try of the same
# call (1 again, nothing added), or the tombstone a release left because the client gave up on it before it ran
# here (-1, nothing held). Expired holds are given back only when the budget has no room otherwise: the common case
# adds no work.
RESERVE = _RECLAIM + """
local hold = redis.call('GET', KEYS[2])
if hold == 'released' then
  return -1
elseif hold then
  return 1
end
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used + tonumber(ARGV[1]) > tonumber(ARGV[2]) then
  reclaim(KEYS[1], KEYS[3], KEYS[4], ARGV[6])
  used = tonumber(redis.call('GET', KEYS[1]) or '0')
  if used + tonumber(ARGV[1]) > tonumber(ARGV[2]) then
    return nil
  end
end
redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[3])
redis.call('HSET', KEYS[3], ARGV[4], ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[3])
if ARGV[5] ~= '' then
  local t = redis.call('TIME')
  -- to the microsecond, as expired_ids reads it: whole seconds made each hold expire up to a second early
  redis.call('ZADD', KEYS[4], tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[5]), ARGV[4])
  redis.call('EXPIRE', KEYS[4], ARGV[3])
end
return 1
"""

# KEYS: the counter, ``held``, ``expiry``. ARGV: ``hold_head``. Reads only (a replica, a user without write
# commands can run it, and it never changes what a reservation running beside it sees): the counter's figure
# ('0' where there is none) followed by the joules of each hold past its time that still counts in it; the caller
# takes them off (a Lua number would reach the client as an integer, or rounded to 14 digits).
USED = _EXPIRED + """
local out = {redis.call('GET', KEYS[1]) or '0'}
for _, id in ipairs(expired_ids(KEYS[3])) do
  local j = redis.call('HGET', KEYS[2], id)
  if j and tonumber(j) ~= 0 and still_held(ARGV[1], id) then
    out[#out + 1] = j
  end
end
return out
"""

# What a hold still holds: its ``held`` entry (0 once expired), else (a hold made before ``held`` existed) its
# ``hold:<id>`` value. Drops the entry, so each hold is given back or settled once.
_TAKE_HOLD = """
local function take(hold, held, expiry, id)
  local j = redis.call('HGET', held, id) or hold
  redis.call('HDEL', held, id)
  redis.call('ZREM', expiry, id)
  return j
end
"""

# KEYS: the counter, the hold of a reservation its client gave up on (a timeout: the script may run after it),
# ``held``, ``expiry``. ARGV: seconds to keep the tombstone, the reservation id. Gives back what the hold holds,
# once, and leaves the tombstone either way, so a RESERVE still on its way runs as a no-op: the result is the same
# in whichever order the two arrive.
RELEASE = _NEGATED + _TAKE_HOLD + """
local hold = redis.call('GET', KEYS[2])
if hold == 'released' then
  return 0
end
redis.call('SET', KEYS[2], 'released', 'EX', ARGV[1])
if not hold then
  return 0
end
local j = take(hold, KEYS[3], KEYS[4], ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 or tonumber(j) == 0 then
  return 0
end
local v = tonumber(redis.call('INCRBYFLOAT', KEYS[1], negated(j)))
if v < 0 then
  redis.call('SET', KEYS[1], '0', 'KEEPTTL')
end
return 1
"""

# KEYS: the counter, the reservation's hold (dropped: a settled reservation is never released), ``held``,
# ``expiry``. ARGV: the joules the call used, the reservation id. The counter trades what the hold still holds (0
# where it expired) for what the call used. Only a reservation whose hold is there is settled: once it is gone
# (settled already, or gone with its window) or released, a settlement sent again (a retry, a journal's replay)
# changes nothing. The DEL runs either way, so the journaled ledger's probe (a settlement of no hold) still needs
# a writable server.
SETTLE = _NEGATED + _TAKE_HOLD + """
local hold = redis.call('GET', KEYS[2])
if hold == 'released' then
  return 0
end
redis.call('DEL', KEYS[2])
if not hold then
  return 0
end
local j = take(hold, KEYS[3], KEYS[4], ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
local v = tonumber(redis.call('INCRBYFLOAT', KEYS[1], negated(j)))
if v < 0 then
  redis.call('SET', KEYS[1], '0', 'KEEPTTL')
end
return 1
"""
