-- bench/scale/growth.lua - how the cluster layer's costs grow with N: the
-- real lua/pogo/cluster.lua over a simulated network (1 ms latency, no CPU
-- cost, no loss), and pogo.placement timed for the re-placement a node
-- change causes. From the repository root:
--
--   lua5.4 bench/scale/growth.lua [N ...]        (default 10 30 100)
--
-- Per N, the cluster layer (simulated): the time until every node sees every
-- other up when all start at once from one seed (latency only: no CPU is
-- modelled); the frames and bytes (MessagePack plus the 20 bytes of frame
-- header and AEAD tag) each node sends during that formation; the same per
-- node and second over 10 s of idle; handshakes and links per node. Then
-- the distributed supervisor's state for C = 10,000 children, from unit
-- costs measured here: every node advertises every request in pogo.desired
-- (N * C members on every node, ~B bytes each as stored by a real pogo.pg),
-- so a submission of C children makes each node send and receive C * (N - 1)
-- joins; and the CPU seconds one node spends re-placing the C children with
-- the default policy when a node joins or leaves (every node does it).

package.path = "lua/?.lua;lua/?/init.lua;specs/?.lua;" .. package.path
require("helper").stub_core()
local cluster = require "pogo.cluster"
local placement = require "pogo.placement"

local STEP, LATENCY, FRAME = 0.001, 0.001, 20

-- Size of a value as MessagePack would encode it (close enough to count).
local function size(v)
  local t = type(v)
  if t == "string" then return #v + (#v < 32 and 1 or #v < 256 and 2 or 3) end
  if t == "number" then
    if math.type(v) == "integer" and v >= -32 and v < 128 then return 1 end
    return 9
  end
  if t ~= "table" then return 1 end
  local n, s = 0, 0
  for k, x in pairs(v) do
    n = n + 1
    s = s + size(x) + (math.type(k) == "integer" and 0 or size(k))
  end
  return s + (n < 16 and 1 or 3)
end

-- The simulation: a clock in steps of 1 ms, events in per-step buckets.
local function new_sim()
  local sim = { step = 0, buckets = {}, hosts = {}, procs = {} }
  function sim.now() return sim.step * STEP end
  function sim.at(after, fn)
    local k = sim.step + math.max(1, math.ceil(after / STEP - 1e-9))
    local b = sim.buckets[k]
    if not b then b = {} sim.buckets[k] = b end
    b[#b + 1] = fn
  end
  function sim.run(secs)
    local last = sim.step + math.floor(secs / STEP + 0.5)
    while sim.step < last do
      sim.step = sim.step + 1
      local b = sim.buckets[sim.step]
      sim.buckets[sim.step] = nil
      if b then for _, fn in ipairs(b) do fn() end end
    end
  end
  return sim
end

local function count(p, kind, bytes)
  p.frames = p.frames + 1
  p.bytes = p.bytes + bytes
  p.kinds[kind] = (p.kinds[kind] or 0) + 1
end

local function new_end(sim, p, fields)
  local e = fields
  e.proc, e.open = p, false
  function e.send(_, msg)
    if not e.open then return nil, "link closed" end
    count(p, msg.t, size(msg) + FRAME)
    local other = e.other
    sim.at(LATENCY, function() if other.open then other.proc.cbs.message(other, msg) end end)
    return true
  end
  function e.close(_, reason)
    if not e.open then return end
    e.open = false
    local other = e.other
    sim.at(LATENCY, function()
      if other.open then other.open = false other.proc.cbs.down(other, tostring(reason)) end
    end)
  end
  return e
end

local function linked(a, b)
  for _, e in ipairs(a.ends) do
    if e.open and e.peer == b.name then return true end
  end
  return false
end

local function link_api(sim, p)
  return {
    on = function(cbs) p.cbs = cbs end,
    listen = function(_, port) return { port = function() return port end, close = function() end } end,
    dial = function(host, port)
      local l = new_end(sim, p, { initiator = true, addr = host .. ":" .. port })
      sim.at(2 * LATENCY, function()
        local tp = sim.hosts[l.addr]
        if not tp or linked(p, tp) then
          sim.at(LATENCY, function() p.cbs.failed(host, port, "already linked", l) end)
          return
        end
        p.handshakes, tp.handshakes = p.handshakes + 1, tp.handshakes + 1
        local r = new_end(sim, tp, { initiator = false, peer = p.name, incarnation = p.incarnation,
                                      addr = p.ip .. ":40000" })
        l.peer, l.incarnation, l.other, r.other = tp.name, tp.incarnation, r, l
        l.open, r.open = true, true
        p.ends[#p.ends + 1], tp.ends[#tp.ends + 1] = l, r
        sim.at(LATENCY, function() if l.open then p.cbs.up(l) end end)
        sim.at(LATENCY, function() if r.open then tp.cbs.up(r) end end)
      end)
      return l
    end,
  }
end

local quiet = { debug = function() end, info = function() end, warn = function() end, error = function() end }

local function start(sim, i, seed)
  local ip = ("10.%d.%d.%d"):format(i >> 16 & 255, i >> 8 & 255, i & 255)
  local p = { name = ("n%04d"):format(i), ip = ip, incarnation = i, ends = {},
              frames = 0, bytes = 0, kinds = {}, handshakes = 0 }
  sim.hosts[ip .. ":4370"] = p
  sim.procs[#sim.procs + 1] = p
  local seed_state = i * 2654435761 % 2147483647
  p.cluster = cluster.new {
    name = p.name, incarnation = i, listen = ip .. ":4370", seeds = { seed },
    meta = { tags = {}, weight = 1 }, link = link_api(sim, p),
    timer = function(after, rep, fn)
      local h = { closed = false }
      local function fire()
        if h.closed then return end
        if rep > 0 then sim.at(rep, fire) else h.closed = true end
        fn()
      end
      sim.at(after, fire)
      function h.close() h.closed = true end
      return h
    end,
    now = sim.now,
    random = function()
      seed_state = seed_state * 48271 % 2147483647
      return seed_state / 2147483647
    end,
    log = quiet,
  }
  assert(p.cluster:start())
end

local function all_up(sim)
  local n = #sim.procs
  for _, p in ipairs(sim.procs) do
    if #p.cluster:up_nodes() ~= n then return false end
  end
  return true
end

local function reset(sim)
  for _, p in ipairs(sim.procs) do p.frames, p.bytes, p.kinds, p.handshakes = 0, 0, {}, 0 end
end

local function per_node(sim, field, kind)
  local s = 0
  for _, p in ipairs(sim.procs) do s = s + (kind and (p.kinds[kind] or 0) or p[field]) end
  return s / #sim.procs
end

local function kinds_line(sim, scale)
  local all = {}
  for _, p in ipairs(sim.procs) do for k in pairs(p.kinds) do all[k] = true end end
  local names = {}
  for k in pairs(all) do names[#names + 1] = k end
  table.sort(names)
  local out = {}
  for _, k in ipairs(names) do out[#out + 1] = ("%s %.0f"):format(k, per_node(sim, nil, k) * scale) end
  return table.concat(out, ", ")
end

-- CPU seconds to place `children` children over n nodes with the default
-- policy: what every node does when a node joins or leaves.
-- Bytes a peer's pogo.desired member takes in a real pogo.pg (Lua heap).
local function member_bytes()
  local pg = require "pogo.pg"
  local cbs, handler = {}, nil
  local fake = {
    self_name = function() return "n0000" end,
    send = function() return true end, broadcast = function() return 0 end,
    on = function(_, ev, fn) cbs[ev] = fn return function() end end,
    handle = function(_, _, fn) handler = fn end,
    defer = function(_, fn) fn() return function() end end,
  }
  local p = pg.new(fake)
  cbs.up { name = "n0001", incarnation = 1 }
  collectgarbage() collectgarbage()
  local k0, n = collectgarbage("count"), 50000
  for i = 1, n do
    handler("n0001", { t = "pg", op = "join", scope = "pogo.desired", group = "c-" .. i, key = 0,
      value = { c = 1, n = "n0001", src = ("%032x"):format(i // 100), name = "children.lua",
                fp = ("%032x"):format(i) } })
  end
  collectgarbage() collectgarbage()
  assert(p:count("pogo.desired") == n)
  return (collectgarbage("count") - k0) * 1024 / n
end

local function replace_cost(n, children)
  local nodes = {}
  for i = 1, n do nodes[i] = { name = ("n%04d"):format(i), meta = { tags = {}, weight = 1 } } end
  local sample = math.min(children, 2000)
  local t0 = os.clock()
  for i = 1, sample do placement.default({ id = "c-" .. i, tags = {} }, nodes) end
  return (os.clock() - t0) * children / sample
end

local sizes = {}
for _, a in ipairs(arg) do sizes[#sizes + 1] = assert(math.tointeger(tonumber(a)), "N must be an integer") end
if #sizes == 0 then sizes = { 10, 30, 100 } end

local C = 10000
local B = member_bytes()
print(("%6s %9s %11s %12s %10s %11s %9s %7s"):format("N", "mesh (s)", "form fr/nd", "form KB/nd",
  "idle fr/s", "idle B/s", "hs/node", "links"))
local details, dsup = {}, {}
for _, n in ipairs(sizes) do
  local sim = new_sim()
  local seed = "10.0.0.1:4370"
  for i = 1, n do start(sim, i, seed) end
  local formed
  for _ = 1, 3000 do
    sim.run(0.01)
    if all_up(sim) then formed = sim.now() break end
  end
  sim.run(1)
  local form_frames, form_bytes = per_node(sim, "frames"), per_node(sim, "bytes")
  local hs = per_node(sim, "handshakes")
  details[#details + 1] = ("N=%d formation, frames per node by kind: %s"):format(n, kinds_line(sim, 1))
  reset(sim)
  sim.run(10)
  details[#details + 1] = ("N=%d idle, frames per node per second by kind: %s"):format(n, kinds_line(sim, 0.1))
  print(("%6d %9s %11.0f %12.1f %10.1f %11.0f %9.1f %7d"):format(n,
    formed and ("%.2f"):format(formed) or "never", form_frames, form_bytes / 1024,
    per_node(sim, "frames") / 10, per_node(sim, "bytes") / 10, hs, n - 1))
  dsup[#dsup + 1] = ("%6d %14d %12.0f %16d %14.2f s"):format(n, n * C, n * C * B / 2 ^ 20, C * (n - 1),
    replace_cost(n, C))
end
for _, d in ipairs(details) do print(d) end
print(("\nC = %d children; a pogo.desired member takes %.0f bytes in pogo.pg"):format(C, B))
print(("%6s %14s %12s %16s %16s"):format("N", "desired/node", "MiB/node", "joins/node/submit", "re-place C"))
for _, d in ipairs(dsup) do print(d) end
