-- bench/dsup/monitor.lua - sent to every agent with `pogo eval - < this`.
-- Watches pogo.running (one member per instance, value.s = its state) and
-- keeps, with require("pogo.core.sys").monotonic() timestamps (the clock
-- the bench script reads through perl):
--
--   B.first[id]   when this node first saw a "ready" instance of id
--   B.changed     when an instance last appeared, went or changed state
--   B.arm{...}    a watch over the ids PREFIX1..PREFIXn: how many "ready"
--                 instances each has on nodes other than `exclude`, the
--                 first time every id had one (B.w.all), the most ids that
--                 had none at once after the watch began with all covered
--                 (B.w.miss_max), and the duplicates (ids with two "ready"
--                 instances): first start, last end, summed durations.
_G.B = _G.B or {}
local sys = require "pogo.core.sys"
local pg = pogo.pg
local SCOPE = "pogo.running"

if B.cancel then B.cancel() end
B.inst = {}          -- id -> { node -> state }
B.first = {}
B.changed = sys.monotonic()
B.w = nil

local function ready_count(id, exclude)
  local n = 0
  for node, s in pairs(B.inst[id] or {}) do
    if s == "ready" and node ~= exclude then n = n + 1 end
  end
  return n
end

-- update(id): the watch's counters after a change of id's instances.
local function update(id, t)
  local w = B.w
  if not w or not w.ids[id] then return end
  local old, new = w.cov[id], ready_count(id, w.exclude)
  if old == new then return end
  w.cov[id] = new
  if old == 0 then w.zero = w.zero - 1 elseif new == 0 then w.zero = w.zero + 1 end
  if old < 2 and new >= 2 then
    w.dups = w.dups + 1
    w.dup_at[id] = t
    w.dup_first = w.dup_first or t
    w.dup_ids = w.dup_ids + 1
  elseif old >= 2 and new < 2 then
    w.dups = w.dups - 1
    w.dup_sum = w.dup_sum + (t - w.dup_at[id])
    if t - w.dup_at[id] > w.dup_max then w.dup_max = t - w.dup_at[id] end
    w.dup_at[id] = nil
    w.dup_last = t
  end
  if w.zero == 0 then
    w.all = w.all or t
    w.whole = true
  elseif w.whole and w.zero > w.miss_max then
    w.miss_max = w.zero
    w.miss_at = w.miss_at or t
    w.miss_id = w.miss_id or id
  end
end

local function on_event(ev)
  local t = sys.monotonic()
  local id = ev.group
  local m = B.inst[id]
  if not m then m = {} B.inst[id] = m end
  local s = nil
  if ev.op == "join" then s = type(ev.value) == "table" and ev.value.s or "?" end
  if m[ev.node] ~= s then B.changed = t end
  m[ev.node] = s
  if s == "ready" and not B.first[id] then B.first[id] = t end
  update(id, t)
end

-- What is already there (a monitor gets changes only).
for _, id in ipairs(pg.groups(SCOPE)) do
  local m = {}
  for _, x in ipairs(pg.members(SCOPE, id)) do
    m[x.node] = type(x.value) == "table" and x.value.s or "?"
  end
  B.inst[id] = m
end
B.cancel = pg.monitor(SCOPE, nil, on_event)

--- B.arm{ prefix = "w-", n = 900, exclude = "n3" }
function B.arm(o)
  local w = { exclude = o.exclude, ids = {}, cov = {}, zero = 0, dups = 0, dup_ids = 0,
    dup_at = {}, dup_sum = 0, dup_max = 0, miss_max = 0, armed = sys.monotonic() }
  for i = 1, o.n do
    local id = o.prefix .. i
    w.ids[id] = true
    local c = ready_count(id, o.exclude)
    w.cov[id] = c
    if c == 0 then w.zero = w.zero + 1 end
    if c >= 2 then w.dups = w.dups + 1 w.dup_at[id] = w.armed end
  end
  w.whole = w.zero == 0
  if w.whole then w.all = w.armed end
  B.w = w
  return w.zero
end

--- One line: "all zero dups dup_ids dup_first dup_last dup_sum dup_max miss_max miss_at miss_id"
function B.report()
  local w = B.w
  local function f(x) return x and string.format("%.6f", x) or "-" end
  return string.format("%s %d %d %d %s %s %s %s %d %s %s", f(w.all), w.zero, w.dups, w.dup_ids,
    f(w.dup_first), f(w.dup_last), f(w.dup_sum), f(w.dup_max), w.miss_max, f(w.miss_at), w.miss_id or "-")
end

--- Seconds since an instance last appeared, went or changed state.
function B.quiet() return sys.monotonic() - B.changed end

--- "id node" lines, one per id: its ready instance (the first by node name) here.
function B.where(prefix)
  local out = {}
  for id, m in pairs(B.inst) do
    if id:sub(1, #prefix) == prefix then
      local nodes = {}
      for node, s in pairs(m) do if s == "ready" then nodes[#nodes + 1] = node end end
      table.sort(nodes)
      out[#out + 1] = id .. " " .. (nodes[1] or "-")
    end
  end
  return table.concat(out, "\n")
end

return true
