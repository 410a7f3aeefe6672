"""The Lua scripts of the tag scheme (:mod:`cachebus.tags`): raising stamps with their
document embeddings and high-water marks, the sequence with the fence epoch, namespace
generations, creating missing stamps, raising the sequence. Each runs on one hash slot.
"""

from __future__ import annotations

from typing import Final

from .commands import Script

# Raise stamps (and drop document embeddings) for many entries in one call.
# KEYS: stamp_1, hash_1, mark_1, stamp_2, hash_2, mark_2, ...  (for a tag with no hash
#       or mark, its stamp key stands in)
# ARGV: seq, tombstone, then per entry: guard version (0: none), mode
#       (bump|tomb|revive), drop (none|all|fields|changed), n, and n arguments: chunk ids
#       (fields) or chunk id / content hash pairs (changed).
# An entry whose high-water mark ("<version>:<event id>") is already at or above its
# guard version is skipped (another worker applied a newer event meanwhile).
# Returns new stamp (or 'skipped'), removed fields, for each entry. On a cluster the caller sends
# one call per hash slot; a document's stamp and embeddings share one.
STAMPS_SCRIPT: Final = Script("""
local seq, tomb = ARGV[1], ARGV[2]
local seqn, tombn = tonumber(seq), tonumber(tomb)
local out = {}
local a = 3
for e = 1, #KEYS, 3 do
  local skey, hkey, mkey = KEYS[e], KEYS[e + 1], KEYS[e + 2]
  local guard, mode, drop = tonumber(ARGV[a]), ARGV[a + 1], ARGV[a + 2]
  local first, last = a + 4, a + 3 + tonumber(ARGV[a + 3])
  a = last + 1
  local skip = false
  if guard > 0 then
    local mark = redis.call('GET', mkey)
    if mark then
      local done = tonumber(string.match(mark, '^(%d+):'))
      skip = done ~= nil and done >= guard
    end
  end
  if skip then
    out[#out + 1] = 'skipped'
    out[#out + 1] = 0
  else
    -- A missing stamp may have been lost (evicted, rolled back): it is raised like
    -- any other, never re-created below the sequence. Stamps carry no TTL.
    local raw = redis.call('GET', skey)
    local cur = tonumber(raw or '0')
    local new = raw or seq
    if mode == 'tomb' then
      new = tomb
    elseif mode == 'revive' and cur >= tombn then
      new = seq
    elseif cur < tombn and cur < seqn then
      new = seq
    end
    redis.call('SET', skey, new)
    local removed = 0
    if drop == 'all' then
      removed = redis.call('HLEN', hkey)
      redis.call('UNLINK', hkey)
    elseif drop == 'fields' then
      -- chunk ids, in the fields of every model ('<model>.<version>:<chunk id>')
      local gone = {}
      for i = first, last do gone[ARGV[i]] = true end
      for _, f in ipairs(redis.call('HKEYS', hkey)) do
        local sep = string.find(f, ':', 1, true)
        if sep and gone[string.sub(f, sep + 1)] then
          removed = removed + redis.call('HDEL', hkey, f)
        end
      end
    elseif drop == 'changed' then
      -- keep a chunk only if the event lists it with the content hash it was
      -- embedded from (record layout: magic byte, hash length byte, hash, vector)
      local keep = {}
      for i = first, last, 2 do keep[ARGV[i]] = ARGV[i + 1] end
      for _, f in ipairs(redis.call('HKEYS', hkey)) do
        -- fields are '<model>.<version>:<chunk id>'; the model part has no ':'
        local sep = string.find(f, ':', 1, true)
        local want = sep and keep[string.sub(f, sep + 1)]
        local stale = true
        if want then
          local v = redis.call('HGET', hkey, f)
          local len = string.byte(v, 2)
          if len and string.sub(v, 3, 2 + len) == want then stale = false end
        end
        if stale then removed = removed + redis.call('HDEL', hkey, f) end
      end
    end
    out[#out + 1] = new
    out[#out + 1] = removed
  end
end
return out
""")


# The sequence, the fence epoch and the server clock in one call on the sequence's
# node. KEYS: seq, epoch. ARGV: '1' to INCR (an invalidation) or '0' (a ticket), a
# fresh random epoch. The sequence never goes below the server clock in
# microseconds, so after a loss it restarts above the stamps it left behind (a
# recovery aid only: no guarantee depends on clocks). A missing sequence means it
# was lost with whatever it guarded, so the epoch is replaced (every entry written
# before becomes a miss); a missing epoch is created. Returns seq, epoch, time (µs).
SEQUENCE_SCRIPT: Final = Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local raw = redis.call('GET', KEYS[1])
local epoch = redis.call('GET', KEYS[2])
local seq
if not raw then
  seq = now
  redis.call('SET', KEYS[1], string.format('%.0f', seq))
  epoch = ARGV[2]
  redis.call('SET', KEYS[2], epoch)
elseif ARGV[1] == '1' then
  seq = redis.call('INCR', KEYS[1])
  if seq < now then
    seq = now
    redis.call('SET', KEYS[1], string.format('%.0f', seq))
  end
else
  seq = tonumber(raw)
end
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', KEYS[2], epoch)
end
return {string.format('%.0f', seq), epoch, string.format('%.0f', now)}
""")


# A namespace generation. KEYS[1] the generation. ARGV: 'bump' or 'get', a random
# value. A missing generation (never used, evicted, lost) is set to the random value,
# which lies above anything a clock-floored counter reaches: its keys were never
# written. Values stay below 2^53, exact in Lua numbers. Returns the generation.
GENERATION_SCRIPT: Final = Script("""
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[2])
  return ARGV[2]
end
if ARGV[1] == 'bump' then
  redis.call('INCR', KEYS[1])
  return redis.call('GET', KEYS[1])
end
return v
""")


# Create missing stamps. KEYS: stamps; ARGV[1]: a sequence read after each of them
# was seen missing. A stamp present by now is left alone.
CREATE_STAMPS_SCRIPT: Final = Script("""
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then redis.call('SET', KEYS[i], ARGV[1]) end
end
return 1
""")


# Raise the sequence to at least ARGV[1] (never lower it; leave a missing one to the
# sequence script, which re-creates it and replaces the epoch). KEYS[1] the sequence.
RAISE_SEQUENCE_SCRIPT: Final = Script("""
local raw = redis.call('GET', KEYS[1])
if raw and tonumber(raw) < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
""")
