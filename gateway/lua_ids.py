"""Lua that scripts of more than one area share: ordering stream ids (issue 15).

An id is "<ms>-<seq>"; as strings "10-0" sorts before "9-0", so a script that asks
whether one id is after another compares the two numbers.  The store's publish
step (gateway/store_lua.py) and the group-slot scripts (gateway/group_scripts.py)
prepend :data:`LATER` to their bodies.
"""

from __future__ import annotations

# `later(a, b)`: id a is after id b ("<ms>-<seq>" strings).
LATER = """
local function later(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  ams, aseq, bms, bseq = tonumber(ams), tonumber(aseq), tonumber(bms), tonumber(bseq)
  return ams > bms or (ams == bms and aseq > bseq)
end
"""
