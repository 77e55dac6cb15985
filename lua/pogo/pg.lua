-- pogo.pg: Erlang :pg process groups over pogo's cluster layer.
--
--   local pg = require "pogo.pg"
--   pg.attach(cluster)                     -- the agent does this once
--   pg.join("children", "web", 7, { pid = 123 })
--   pg.members("children", "web")          --> { { node=, key=, value= }, ... }
--   local cancel = pg.monitor("children", nil, function(ev) ... end)
--
-- Scopes hold groups, groups hold members; a member is (node, key) with an
-- optional value. Every node is the only writer of its own members: it
-- applies a change locally, then sends it to every peer in order; when a
-- link comes up it streams a full snapshot of its members over it; when a
-- peer goes down all of that peer's members vanish here. There is no
-- consensus: each node's view of a peer converges to that peer's own set.
--
-- The transport is injected (pg.new(cluster)), so specs drive it without
-- sockets. `cluster` (pogo.cluster, or a fake) has the methods
-- self_name(), send(node, msg) -> true | nil, err (ordered per node),
-- broadcast(msg) (to every node that is up), on("up" | "down", fn(node)) ->
-- cancel where node = { name=, incarnation=, ... }, handle(kind, fn(from,
-- msg)) for messages whose msg.t == kind, and defer(fn) (run fn on a later
-- loop iteration). It must fire "up" on both ends of every new link, and
-- deliver nothing from an old link after that.
--
-- Storage. Each node's members live in a per-node log: parallel arrays
-- (group, key, value, snapshot mark, size) indexed by a slot number,
-- appended on a new join, tombstoned (false) on a leave, compacted when the
-- dead slots outnumber the live ones. Groups index the slots:
-- G.nodes[node][key] = slot. The log gives cursors that stay valid while
-- members come and go, which is what lets snapshots be sent and swept in
-- small steps, and a deterministic order (join order) for the leaves of a
-- node that goes down.
--
-- The arrays are cut into blocks of M.BLOCK slots. Lua's collector
-- traverses a table in one go, and re-traverses a table written after it
-- was marked in its atomic phase; a table grows by doubling, copying the
-- whole array at once. With one array of 100,000 slots each of those is a
-- pause of milliseconds in the agent's loop; with blocks each is small.
--
-- A local join stores a copy of its value; members() and monitor events
-- hand out the stored value itself, which callers must not modify.

local log = require "pogo.log"

local L = log.sub("pg")

local M = {}

M.CHUNK = 50            -- members per snapshot message
M.CHUNK_BYTES = 1 << 20 -- and about this many bytes, at most one member over
M.SWEEP = 2000          -- log slots per step of a snapshot sweep or of a drop's leaves
M.BLOCK = 4096          -- log slots per block of the log's arrays
M.NAME_MAX = 255        -- bytes in a scope or group name
M.VALUE_DEPTH = 56      -- nesting of a value (the codec allows 64 in all)
M.VALUE_MAX = 1 << 20   -- bytes of a key and value, roughly as encoded
M.COMPACT_MIN = 1024    -- dead log slots before a log may be compacted

local KIND = "pg"
local NIL = setmetatable({}, { __name = "pogo.pg.nil", __tostring = function() return "nil" end })

local function box(v) if v == nil then return NIL end return v end
local function unbox(v) if v == NIL then return nil end return v end

-- Validation ------------------------------------------------------------------
-- The public functions call these directly, so level 3 is their caller.

local function check_name(v, what)
  if type(v) ~= "string" then
    error(("pogo.pg: %s must be a string, got %s"):format(what, type(v)), 3)
  end
  if #v == 0 or #v > M.NAME_MAX then
    error(("pogo.pg: %s must be 1 to %d bytes, got %d"):format(what, M.NAME_MAX, #v), 3)
  end
end

local function check_key(k)
  if type(k) ~= "string" and math.type(k) ~= "integer" then
    error(("pogo.pg: key must be a string or an integer, got %s"):format(
      math.type(k) == "float" and "a float" or type(k)), 3)
  end
end

-- About the size of v in MessagePack (an upper bound for scalars).
local function scalar_size(v)
  if type(v) == "string" then return #v + 5 end
  return 9
end

-- Returns nil, size if v can go on the wire, else what is wrong and where.
local function value_problem(v, depth, path, where)
  local t = type(v)
  if t == "nil" or t == "boolean" or t == "number" or t == "string" then return nil, scalar_size(v) end
  if t ~= "table" then return ("a %s at %s"):format(t, where) end
  if depth > M.VALUE_DEPTH then return ("nesting deeper than %d at %s"):format(M.VALUE_DEPTH, where) end
  if path[v] then return "a table that contains itself at " .. where end
  if getmetatable(v) ~= nil then return "a table with a metatable at " .. where end
  path[v] = true
  local size = 5
  for k, x in next, v do
    local kt = math.type(k) or type(k)
    if kt ~= "string" and kt ~= "integer" and kt ~= "boolean" then
      path[v] = nil
      return ("a %s table key at %s"):format(kt, where)
    end
    local p, n = value_problem(x, depth + 1, path, ("%s[%s]"):format(where, kt == "string" and ("%q"):format(k) or tostring(k)))
    if p then path[v] = nil; return p end
    size = size + scalar_size(k) + n
  end
  path[v] = nil
  return nil, size
end

local function deep_copy(v)
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in next, v do out[k] = deep_copy(x) end
  return out
end

-- Returns the value to store and the member's size on the wire. The value
-- is a copy, so that the caller changing its table later cannot change what
-- this node holds without telling the others.
local function check_value(key, v)
  local p, size = value_problem(v, 1, {}, "value")
  if p then error("pogo.pg: value cannot be sent to other nodes: " .. p, 3) end
  size = size + scalar_size(key)
  if size > M.VALUE_MAX then
    error(("pogo.pg: key and value too large (about %d bytes, at most %d)"):format(size, M.VALUE_MAX), 3)
  end
  return deep_copy(v), size
end

-- Remote messages are checked too, but a bad one is logged, never raised.
local function good_name(v) return type(v) == "string" and #v > 0 and #v <= M.NAME_MAX end
local function good_key(k) return type(k) == "string" or math.type(k) == "integer" end

-- Comparing -------------------------------------------------------------------

local function equal(a, b, depth)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" or depth > 64 then return false end
  for k, x in next, a do
    if not equal(x, b[k], depth + 1) then return false end
  end
  for k in next, b do
    if a[k] == nil then return false end
  end
  return true
end

-- Integers before strings; each in natural order.
local function key_less(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then return ta == "number" end
  return a < b
end

-- Instance --------------------------------------------------------------------

local Pg = {}
Pg.__index = Pg
Pg.__name = "pogo.pg"

-- One block of a log: slot s of the log is index s - base of block
-- (s - 1) // B + 1, where base = (that index - 1) * B.
local function new_block()
  return {
    G = {},          -- index -> group record, false once the member left
    k = {},          -- index -> key
    v = {},          -- index -> boxed value
    mark = {},       -- index -> id of the snapshot that last confirmed it
    size = {},       -- index -> bytes on the wire (this node's log only)
  }
end

-- The log of one node's members.
local function new_rec(name, B)
  return {
    name = name,
    B = B,           -- slots per block
    blocks = {},     -- block number -> block
    top = 0,         -- highest slot used
    live = 0,
    dead = 0,
    groups = {},     -- group record -> true, for dropping a node at once
  }
end

-- The block that holds `slot`, and the slot's index in it.
local function locate(rec, slot)
  local b = (slot - 1) // rec.B
  return rec.blocks[b + 1], slot - b * rec.B
end

local function rec_of(self, node)
  local rec = self.recs[node]
  if not rec then
    rec = new_rec(node, self.block)
    self.recs[node] = rec
  end
  return rec
end

local function group_of(self, scope, group)
  local S = self.by_scope[scope]
  if not S then
    S = { name = scope, groups = {}, ngroups = 0, count = 0, sorted = nil }
    self.by_scope[scope] = S
    self.nscopes = self.nscopes + 1
    self.sorted_scopes = nil
  end
  local G = S.groups[group]
  if not G then
    G = { S = S, name = group, nodes = {}, n = {}, count = 0, sorted = nil }
    S.groups[group] = G
    S.ngroups = S.ngroups + 1
    S.sorted = nil
  end
  return G
end

local function find_group(self, scope, group)
  local S = self.by_scope[scope]
  return S and S.groups[group]
end

-- Forgets an empty group, and its scope once that is empty too.
local function drop_if_empty(self, G)
  if G.count > 0 then return end
  local S = G.S
  S.groups[G.name] = nil
  S.ngroups = S.ngroups - 1
  S.sorted = nil
  if S.ngroups == 0 then
    self.by_scope[S.name] = nil
    self.nscopes = self.nscopes - 1
    self.sorted_scopes = nil
  end
end

-- Events ----------------------------------------------------------------------

-- Calls the monitors of one event, each with its own copy.
local function deliver(self, ev, mons)
  for j = 1, #mons do
    local m = mons[j]
    if m.active and (m.group == nil or m.group == ev.group) then
      local copy = {
        op = ev.op, scope = ev.scope, group = ev.group, node = ev.node,
        key = ev.key, value = ev.value, reason = ev.reason,
      }
      local ok, err = xpcall(m.fn, debug.traceback, copy)
      if not ok then
        self.monitor_failures = self.monitor_failures + 1
        L.error("monitor of scope '%s'%s failed on %s of %s/%s: %s", ev.scope,
          m.group and (" group '" .. m.group .. "'") or "", ev.op, ev.node,
          tostring(ev.key), tostring(err))
      end
    end
  end
end

-- Delivers the leaves of a dropped node, up to self.sweep log slots.
-- Returns true when they are all out.
local function drop_step(self, job)
  local rec, reason, mons = job.rec, job.reason, job.mons
  local i = job.cursor
  local limit = math.min(rec.top, i + self.sweep - 1)
  while i <= limit do
    local blk, o = locate(rec, i)
    local g = blk.G[o]
    local ms = g and mons[g.S.name]
    if ms then
      job.cursor = i + 1     -- a monitor may re-enter dispatch: never repeat a slot
      deliver(self, {
        op = "leave", scope = g.S.name, group = g.name, node = rec.name,
        key = blk.k[o], value = unbox(blk.v[o]), reason = reason,
      }, ms)
    end
    i = i + 1
  end
  job.cursor = i
  return i > rec.top
end

-- Events are queued and delivered in order; a monitor that joins or leaves
-- sees its own change after every monitor has seen the current one. The
-- queue holds (event, monitors) pairs and, for a node that went down, one
-- job that yields its leaves a step at a time: the events behind it wait.
local function dispatch(self)
  if self.dispatching or self.waiting then return end
  self.dispatching = true
  local q = self.events
  while self.ev_head <= self.ev_tail do
    local i = self.ev_head
    local ev, mons = q[i], q[i + 1]
    if mons == false then
      if not drop_step(self, ev) then
        -- One step per loop iteration, whoever calls dispatch meanwhile.
        self.dispatching, self.waiting = false, true
        self.cluster:defer(function()
          self.waiting = false
          dispatch(self)
        end)
        return
      end
    else
      deliver(self, ev, mons)
    end
    q[i], q[i + 1] = nil, nil
    self.ev_head = i + 2
  end
  self.ev_head, self.ev_tail = 1, -1
  self.dispatching = false
end

local function emit(self, op, G, node, key, value, reason)
  local mons = self.monitors[G.S.name]
  if not mons then return end
  local t = self.ev_tail + 2
  self.events[t] = {
    op = op, scope = G.S.name, group = G.name, node = node, key = key,
    value = value, reason = reason,
  }
  self.events[t + 1] = mons   -- the monitors at the time of the change
  self.ev_tail = t
end

-- Applying changes ------------------------------------------------------------

-- Moves the live members down over the tombstones, in order, block by
-- block, into new blocks (the marks are dropped: no snapshot is running).
local function compact(self, rec)
  local B, old, name = rec.B, rec.blocks, rec.name
  local blocks, nb, j = {}, 0, B
  local to      -- the block being filled
  for b = 1, (rec.top + B - 1) // B do
    local blk = old[b]
    local G, k, v, size = blk.G, blk.k, blk.v, blk.size
    for o = 1, math.min(B, rec.top - (b - 1) * B) do
      local g = G[o]
      if g then
        if j == B then
          to = new_block()
          nb, j = nb + 1, 0
          blocks[nb] = to
        end
        j = j + 1
        to.G[j], to.k[j], to.v[j], to.size[j] = g, k[o], v[o], size[o]
        g.nodes[name][k[o]] = (nb - 1) * B + j
      end
    end
    old[b] = nil
  end
  rec.blocks = blocks
  rec.top, rec.dead = rec.live, 0
end

-- Compacts unless a cursor (a snapshot being sent or swept) is on the log.
local function maybe_compact(self, rec)
  if rec.dead < self.compact_min or rec.dead <= rec.live then return end
  if rec.name == self.me then
    if self.nstreams > 0 then return end
  else
    local peer = self.peers[rec.name]
    if peer and peer.sync then return end
  end
  compact(self, rec)
end

-- Adds or updates a member. Returns true if anything visible changed.
local function put(self, node, scope, group, key, value, mark, size)
  local rec = rec_of(self, node)
  local G = group_of(self, scope, group)
  local keys = G.nodes[node]
  local slot = keys and keys[key]
  if slot then
    local blk, o = locate(rec, slot)
    blk.mark[o] = mark
    if equal(unbox(blk.v[o]), value, 1) then return false end
    blk.v[o], blk.size[o] = box(value), size
    G.sorted = nil
    emit(self, "join", G, node, key, value)
    return true
  end
  if not keys then
    keys = {}
    G.nodes[node] = keys
    G.n[node] = 0
    rec.groups[G] = true
  end
  slot = rec.top + 1
  rec.top = slot
  local blk, o = locate(rec, slot)
  if not blk then
    blk = new_block()
    rec.blocks[(slot - 1) // rec.B + 1] = blk
  end
  blk.G[o], blk.k[o], blk.v[o], blk.mark[o], blk.size[o] = G, key, box(value), mark, size
  rec.live = rec.live + 1
  keys[key] = slot
  G.n[node] = G.n[node] + 1
  G.count = G.count + 1
  G.S.count = G.S.count + 1
  G.sorted = nil
  self.total = self.total + 1
  emit(self, "join", G, node, key, value)
  return true
end

-- Takes the member in `slot` out of the group indexes (not out of the log).
local function unlink(self, rec, slot, reason)
  local blk, o = locate(rec, slot)
  local G, key = blk.G[o], blk.k[o]
  local node = rec.name
  local keys = G.nodes[node]
  keys[key] = nil
  local n = G.n[node] - 1
  if n == 0 then
    G.nodes[node], G.n[node] = nil, nil
    rec.groups[G] = nil
  else
    G.n[node] = n
  end
  G.count = G.count - 1
  G.S.count = G.S.count - 1
  G.sorted = nil
  self.total = self.total - 1
  emit(self, "leave", G, node, key, unbox(blk.v[o]), reason)
  drop_if_empty(self, G)
end

-- Tombstones the slot of a member that unlink() took out.
local function bury(rec, slot)
  local blk, o = locate(rec, slot)
  blk.G[o], blk.k[o], blk.v[o], blk.mark[o], blk.size[o] = false, false, false, nil, nil
  rec.live = rec.live - 1
  rec.dead = rec.dead + 1
end

local function remove(self, rec, slot, reason)
  unlink(self, rec, slot, reason)
  bury(rec, slot)
  maybe_compact(self, rec)
end
local function remove_key(self, node, scope, group, key, reason)
  local G = find_group(self, scope, group)
  local keys = G and G.nodes[node]
  local slot = keys and keys[key]
  if not slot then return false end
  remove(self, self.recs[node], slot, reason)
  return true
end

-- Removes every member of `node` at once, group by group, without a walk
-- over the members. If anyone monitors the scopes involved, a job queued
-- behind the pending events delivers one leave per member, in join order,
-- a bounded number per loop iteration.
local function drop_node(self, node, reason)
  local rec = self.recs[node]
  if not rec then return end
  self.recs[node] = nil
  local mons = nil
  for G in next, rec.groups do
    local scope = G.S.name
    local n = G.n[node]
    G.nodes[node], G.n[node] = nil, nil
    G.count = G.count - n
    G.S.count = G.S.count - n
    G.sorted = nil
    self.total = self.total - n
    drop_if_empty(self, G)
    local ms = self.monitors[scope]
    if ms then
      mons = mons or {}
      mons[scope] = ms           -- the monitors at the time of the change
    end
  end
  if mons then
    local t = self.ev_tail + 2
    self.events[t] = { rec = rec, cursor = 1, reason = reason, mons = mons }
    self.events[t + 1] = false
    self.ev_tail = t
  end
  dispatch(self)
end

-- Sending snapshots -----------------------------------------------------------

local function end_stream(self, peer)
  if not peer.stream then return end
  peer.stream = nil
  self.nstreams = self.nstreams - 1
  maybe_compact(self, rec_of(self, self.me))
end

-- Sends the next chunk of our log to the peer; defers the rest. A member
-- that joins while the stream runs lands past `stop` and reaches the peer
-- as an ordinary join; one that leaves is a tombstone the cursor skips.
local function stream_step(self, peer, st)
  if self.closed or peer.stream ~= st then return end
  local rec = rec_of(self, self.me)
  local chunk, n, bytes = {}, 0, 0
  local i, stop = st.cursor, st.stop
  local limit = math.min(stop, i + 4 * self.chunk - 1)   -- bounds the skipping of tombstones
  while i <= limit and n < self.chunk and bytes < self.chunk_bytes do
    local blk, o = locate(rec, i)
    local g = blk.G[o]
    if g then
      n = n + 1
      chunk[n] = { g.S.name, g.name, blk.k[o], unbox(blk.v[o]) }
      bytes = bytes + #g.S.name + #g.name + 8 + (blk.size[o] or 0)
    end
    i = i + 1
  end
  st.cursor = i
  -- The first step always sends something, so that the receiver sees the
  -- snapshot begin before any join that follows it.
  if n > 0 or (not st.begun and i <= stop) then
    st.begun = true
    st.sent = st.sent + n
    local ok, err = self.cluster:send(peer.name, { t = KIND, op = "snap", id = st.id, m = chunk })
    if not ok then
      L.debug("snapshot to %s stopped: %s", peer.name, tostring(err))
      return end_stream(self, peer)
    end
  end
  if i > stop then
    self.cluster:send(peer.name, { t = KIND, op = "snap_end", id = st.id, n = st.sent })
    return end_stream(self, peer)
  end
  self.cluster:defer(function() stream_step(self, peer, st) end)
end

local function start_stream(self, peer)
  end_stream(self, peer)
  self.stream_seq = self.stream_seq + 1
  local st = { id = self.stream_seq, cursor = 1, stop = rec_of(self, self.me).top, sent = 0 }
  peer.stream = st
  self.nstreams = self.nstreams + 1
  -- The first chunk (or the end marker) goes out now, before any later
  -- join: the receiver must see the snapshot start before those joins.
  stream_step(self, peer, st)
end

-- Receiving snapshots ---------------------------------------------------------

-- A snapshot from `peer` is in progress from its first message to the end of
-- the sweep that removes what it did not confirm.
local function begin_sync(self, peer, id)
  peer.awaiting = nil
  self.mark_seq = self.mark_seq + 1
  peer.sync = { id = id, mark = self.mark_seq, cursor = nil, stop = nil, received = 0 }
  return peer.sync
end

local function sweep_step(self, peer, sync)
  if self.closed or peer.sync ~= sync then return end
  local rec = self.recs[peer.name]
  if rec then
    local want = sync.mark
    local i = sync.cursor
    local limit = math.min(sync.stop, i + self.sweep - 1)
    while i <= limit do
      local blk, o = locate(rec, i)
      if blk.G[o] and blk.mark[o] ~= want then
        unlink(self, rec, i, "snapshot")
        bury(rec, i)
      end
      i = i + 1
    end
    sync.cursor = i
    dispatch(self)
    if i <= sync.stop then
      self.cluster:defer(function() sweep_step(self, peer, sync) end)
      return
    end
  end
  peer.sync = nil
  if rec and self.recs[peer.name] == rec then maybe_compact(self, rec) end
end

-- Message handlers ------------------------------------------------------------

local function bad(from, msg, why)
  L.warn("ignored a malformed pg message from %s (op %s): %s", from, tostring(msg.op), why)
end

local function current_mark(peer)
  return peer.sync and peer.sync.mark
end

local handlers = {}

function handlers.join(self, peer, msg)
  if not good_name(msg.scope) or not good_name(msg.group) or not good_key(msg.key) then
    return bad(peer.name, msg, "scope, group or key")
  end
  put(self, peer.name, msg.scope, msg.group, msg.key, msg.value, current_mark(peer))
end

function handlers.leave(self, peer, msg)
  if not good_name(msg.scope) or not good_name(msg.group) or not good_key(msg.key) then
    return bad(peer.name, msg, "scope, group or key")
  end
  remove_key(self, peer.name, msg.scope, msg.group, msg.key, nil)
end

function handlers.snap(self, peer, msg)
  if type(msg.m) ~= "table" then return bad(peer.name, msg, "no members") end
  local sync = peer.sync
  if not sync or sync.id ~= msg.id then sync = begin_sync(self, peer, msg.id) end
  if sync.cursor then return bad(peer.name, msg, "a chunk after the end") end
  local mark, node = sync.mark, peer.name
  local m = msg.m
  for i = 1, #m do
    local e = m[i]
    if type(e) == "table" and good_name(e[1]) and good_name(e[2]) and good_key(e[3]) then
      put(self, node, e[1], e[2], e[3], e[4], mark)
    else
      bad(node, msg, "member " .. i)
    end
  end
  sync.received = sync.received + #m
end

function handlers.snap_end(self, peer, msg)
  local sync = peer.sync
  if not sync or sync.id ~= msg.id then sync = begin_sync(self, peer, msg.id) end  -- an empty snapshot
  if sync.cursor then return bad(peer.name, msg, "a second end") end
  if math.type(msg.n) == "integer" and msg.n ~= sync.received then
    L.warn("snapshot from %s: %d members announced, %d received", peer.name, msg.n, sync.received)
  end
  local rec = self.recs[peer.name]
  sync.cursor, sync.stop = 1, rec and rec.top or 0
  sweep_step(self, peer, sync)
end

local function on_message(self, from, msg)
  if self.closed then return end
  if from == self.me then
    L.warn("ignored a pg message claiming to come from this node")
    return
  end
  local peer = self.peers[from]
  if not peer or not peer.up then
    L.debug("ignored a pg message from %s, which is not up", tostring(from))
    return
  end
  if type(msg) ~= "table" then return end
  local h = handlers[msg.op]
  if not h then return bad(from, msg, "unknown op") end
  h(self, peer, msg)
  dispatch(self)
end

local function on_up(self, node)
  if self.closed or type(node) ~= "table" or node.name == self.me then return end
  local name = node.name
  local peer = self.peers[name]
  if not peer then
    peer = { name = name, up = false, incarnation = nil, sync = nil, stream = nil }
    self.peers[name] = peer
  end
  if peer.incarnation ~= nil and node.incarnation ~= nil and peer.incarnation ~= node.incarnation then
    peer.sync = nil
    drop_node(self, name, "node down")   -- the old incarnation is gone
  end
  peer.incarnation = node.incarnation
  peer.up = true
  peer.sync = nil       -- a new link: whatever arrives next is a new snapshot
  peer.awaiting = true  -- until its first snapshot message: see syncing()
  start_stream(self, peer)
end

local function on_down(self, node)
  if self.closed or type(node) ~= "table" or node.name == self.me then return end
  local peer = self.peers[node.name]
  if peer then
    peer.up = false
    peer.sync = nil
    end_stream(self, peer)
  end
  drop_node(self, node.name, "node down")
end

--- A pg instance over `cluster` (see the header). opts: chunk and
--- chunk_bytes (bounds of a snapshot message), sweep (log slots per step of
--- a sweep or a drop), block (log slots per block), compact_min.
function M.new(cluster, opts)
  if type(cluster) ~= "table" then
    error("pogo.pg.new: cluster must be a table, got " .. type(cluster), 2)
  end
  for _, f in ipairs { "self_name", "send", "broadcast", "on", "handle", "defer" } do
    if type(cluster[f]) ~= "function" then
      error(("pogo.pg.new: cluster:%s must be a method"):format(f), 2)
    end
  end
  opts = opts or {}
  local me = cluster:self_name()
  if not good_name(me) then error("pogo.pg.new: cluster:self_name() must return a name", 2) end
  local self = setmetatable({
    cluster = cluster,
    me = me,
    chunk = opts.chunk or M.CHUNK,
    chunk_bytes = opts.chunk_bytes or M.CHUNK_BYTES,
    sweep = opts.sweep or M.SWEEP,
    block = opts.block or M.BLOCK,
    compact_min = opts.compact_min or M.COMPACT_MIN,
    by_scope = {},        -- scope name -> { groups = name -> group record, ... }
    nscopes = 0, sorted_scopes = nil,
    recs = {},            -- node name -> log
    total = 0,            -- members of every node
    peers = {},           -- node name -> { up, incarnation, sync, stream }
    monitors = {},        -- scope -> array of { group, fn, active } (copied on change)
    events = {}, ev_head = 1, ev_tail = -1, dispatching = false,
    waiting = false,      -- a dropped node's leaves wait for the next loop iteration
    monitor_failures = 0,
    nstreams = 0, stream_seq = 0, mark_seq = 0,
    closed = false,
    cancels = {},
  }, Pg)
  self.cancels[1] = cluster:on("up", function(node) on_up(self, node) end)
  self.cancels[2] = cluster:on("down", function(node) on_down(self, node) end)
  cluster:handle(KIND, function(from, msg) on_message(self, from, msg) end)
  return self
end

--- Stops listening to the cluster (the state stays readable).
function Pg:close()
  if self.closed then return end
  self.closed = true
  for _, cancel in ipairs(self.cancels) do
    if type(cancel) == "function" then cancel() end
  end
  for _, peer in next, self.peers do end_stream(self, peer) end
end

-- API -------------------------------------------------------------------------

--- Joins (scope, group) as (this node, key) with an optional value. Joining
--- again with another value updates it (a join event with the new value);
--- with an equal value it changes nothing. Returns true.
function Pg:join(scope, group, key, value)
  check_name(scope, "scope")
  check_name(group, "group")
  check_key(key)
  local size
  value, size = check_value(key, value)
  if put(self, self.me, scope, group, key, value, nil, size) then
    self.cluster:broadcast { t = KIND, op = "join", scope = scope, group = group, key = key, value = value }
    dispatch(self)
  end
  return true
end

--- Leaves (scope, group) as (this node, key). Returns true | nil, "not a member".
function Pg:leave(scope, group, key)
  check_name(scope, "scope")
  check_name(group, "group")
  check_key(key)
  if not remove_key(self, self.me, scope, group, key, nil) then
    return nil, "not a member"
  end
  self.cluster:broadcast { t = KIND, op = "leave", scope = scope, group = group, key = key }
  dispatch(self)
  return true
end

local function sorted_members(G)
  if G.sorted then return G.sorted end
  local nodes = {}
  for node in next, G.nodes do nodes[#nodes + 1] = node end
  table.sort(nodes)
  local out, n = {}, 0
  for _, node in ipairs(nodes) do
    local keys, start = {}, n
    for key in next, G.nodes[node] do keys[#keys + 1] = key end
    table.sort(keys, key_less)
    for _, key in ipairs(keys) do
      n = n + 1
      out[n] = { node, key }
    end
    assert(n - start == G.n[node])
  end
  G.sorted = out
  return out
end

--- Members of (scope, group): { { node=, key=, value= }, ... } sorted by
--- node, then key (integers before strings).
function Pg:members(scope, group)
  check_name(scope, "scope")
  check_name(group, "group")
  local G = find_group(self, scope, group)
  if not G then return {} end
  local list = sorted_members(G)
  local out = {}
  for i = 1, #list do
    local node, key = list[i][1], list[i][2]
    local slot = G.nodes[node][key]
    local blk, o = locate(self.recs[node], slot)
    out[i] = { node = node, key = key, value = unbox(blk.v[o]) }
  end
  return out
end

--- This node's members of (scope, group), sorted by key.
function Pg:local_members(scope, group)
  check_name(scope, "scope")
  check_name(group, "group")
  local G = find_group(self, scope, group)
  local keys = G and G.nodes[self.me]
  if not keys then return {} end
  local list = {}
  for key in next, keys do list[#list + 1] = key end
  table.sort(list, key_less)
  local rec = self.recs[self.me]
  for i, key in ipairs(list) do
    local blk, o = locate(rec, keys[key])
    list[i] = { node = self.me, key = key, value = unbox(blk.v[o]) }
  end
  return list
end

local function sorted_names(t)
  local out = {}
  for name in next, t do out[#out + 1] = name end
  table.sort(out)
  return out
end

local function copy(list)
  return table.move(list, 1, #list, 1, {})
end

--- Names of the groups of `scope` that have at least one member, sorted.
function Pg:groups(scope)
  check_name(scope, "scope")
  local S = self.by_scope[scope]
  if not S then return {} end
  if not S.sorted then S.sorted = sorted_names(S.groups) end
  return copy(S.sorted)
end

--- Names of the scopes that have at least one member, sorted.
function Pg:scopes()
  if not self.sorted_scopes then self.sorted_scopes = sorted_names(self.by_scope) end
  return copy(self.sorted_scopes)
end

--- Members of (scope, group), or of the whole scope when group is nil.
function Pg:count(scope, group)
  check_name(scope, "scope")
  local S = self.by_scope[scope]
  if group == nil then return S and S.count or 0 end
  check_name(group, "group")
  local G = S and S.groups[group]
  return G and G.count or 0
end

--- Calls fn(event) for every change in `scope` (in `group` only, unless nil):
--- event = { op = "join" | "leave", scope, group, node, key, value,
--- reason = nil | "node down" | "snapshot" }. Returns a cancel function.
--- Events come in the order the changes were applied, normally before the
--- call that applied them returns; the leaves of a node that went down come
--- a bounded number per loop iteration, and later events wait behind them.
function Pg:monitor(scope, group, fn)
  check_name(scope, "scope")
  if group ~= nil then check_name(group, "group") end
  if type(fn) ~= "function" then
    error(("pogo.pg: monitor needs a function, got %s"):format(type(fn)), 2)
  end
  local m = { group = group, fn = fn, active = true }
  -- Copied on change, so an event queued earlier keeps the list it had.
  local old = self.monitors[scope] or {}
  local list = copy(old)
  list[#list + 1] = m
  self.monitors[scope] = list
  return function()
    if not m.active then return end
    m.active = false
    local cur, new = self.monitors[scope] or {}, {}
    for _, x in ipairs(cur) do
      if x ~= m then new[#new + 1] = x end
    end
    self.monitors[scope] = #new > 0 and new or nil
  end
end

--- Whether what we know of some peer is incomplete: a link came up and its
--- snapshot has not begun, or is still arriving (or being swept).
function Pg:syncing()
  for _, p in next, self.peers do
    if p.up and (p.awaiting or p.sync ~= nil) then return true end
  end
  return false
end

--- What this instance holds and is doing, for the REPL and for specs.
function Pg:status()
  local peers = {}
  for name, p in next, self.peers do
    local rec = self.recs[name]
    peers[name] = {
      up = p.up, incarnation = p.incarnation,
      members = rec and rec.live or 0,
      receiving = p.sync ~= nil, sending = p.stream ~= nil,
    }
  end
  local own = self.recs[self.me]
  return {
    node = self.me,
    members = self.total,
    local_members = own and own.live or 0,
    log_slots = own and own.top or 0,     -- live members plus tombstones
    scopes = self.nscopes,
    peers = peers,
    monitor_failures = self.monitor_failures,
  }
end

-- The agent's instance ------------------------------------------------------

local default = nil

--- Makes a new instance over `cluster` the one the module functions use
--- (closing the previous one). Returns it.
function M.attach(cluster, opts)
  if default then default:close() end
  default = M.new(cluster, opts)
  return default
end

--- The attached instance, or nil.
function M.instance() return default end

local function current()
  if not default then error("pogo.pg: not attached to a cluster (pg.attach)", 3) end
  return default
end

-- Tail calls, so an error raised for bad arguments names the caller's line.
function M.join(...) return current():join(...) end
function M.leave(...) return current():leave(...) end
function M.members(...) return current():members(...) end
function M.local_members(...) return current():local_members(...) end
function M.groups(...) return current():groups(...) end
function M.scopes(...) return current():scopes(...) end
function M.count(...) return current():count(...) end
function M.monitor(...) return current():monitor(...) end
function M.status(...) return current():status(...) end
function M.syncing(...) return current():syncing(...) end

return M
