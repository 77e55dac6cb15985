-- pogo.cluster: membership, failure detection and the partition rule, as
-- Lua policy over the link layer. The C core (pogo.core.link) keeps
-- authenticated links, at most one up link per peer name; this module
-- decides whom to dial, when a peer counts as up, suspect, down or
-- excluded, and tells the rest of the agent through events.
--
-- Everything it touches is injected (cluster.new{ link, timer, now, random,
-- log, ...config }), so specs run many instances over a simulated network;
-- cluster.start(cfg) builds the agent's one instance from the real modules
-- and the module-level functions forward to it.
--
-- Membership. A node dials its seeds, retrying those that are down with
-- backoff and jitter. When a link comes up both ends send "hello": name,
-- incarnation, advertised address, metadata, the nodes they know (up, or
-- lost and for how long) and the nodes they cannot reach. A peer is up once
-- its hello has arrived, so the "up" event already knows its metadata. A
-- node that learns of a node it is not linked with dials it (full mesh);
-- when two learn of each other at once the smaller name dials first and the
-- other a little later (the link layer keeps one link either way). When a
-- peer comes up, the others are told ("nodes"), so joiners that meet
-- through the same seed at the same moment still find each other. Nodes
-- that are down are redialled with backoff and passed on in hellos, so two
-- halves can find each other again even when every seed is gone; after
-- forget_after a node is forgotten.
--
-- Failure detection. Every node sends each peer a heartbeat (a ping that
-- wants no answer: the peer's own heartbeats are the sign of life coming
-- back) every period P. Heartbeats are sent from the agent's loop, so a
-- frozen agent falls silent although its kernel still ACKs TCP. Any
-- message counts as a sign of life. P is one heartbeat (0.2 s) until that
-- would be more than ping_rate heartbeats a second; beyond, each peer gets
-- one every k heartbeats, k = ceil(peers / (ping_rate * heartbeat)), so a
-- node's detector costs the same at 100 nodes as at 21 instead of growing
-- with N (and the cluster's with N^2). Every heartbeat states its P, and
-- the silences a receiver tolerates grow by P - heartbeat. A peer silent
-- for suspect_after (+ P - heartbeat) is "suspect": it is pinged directly
-- and up to `indirect` other up peers are asked to ping it for us
-- (ping_req, answered by ping_ack); these pings want a pong. Any answer
-- within probe_timeout clears the suspicion; none, and the link is closed:
-- the peer is down, at most P + 1.1 s after its last message (heartbeat
-- 0.2, suspect_after 0.6, probe_timeout 0.5): 1.3 s up to 21 nodes, 1.7 s
-- at 50, 2.1 s at 100, 4.1 s at 300. A closed link is down at once. A link
-- that stays silent for link_timeout (+ P - heartbeat) while other nodes
-- keep vouching for the peer is broken (one way or both); it is closed as
-- well, and the partition rule below makes the views agree again. The
-- round trip comes from the heartbeats too: each echoes the last one
-- received and how long ago it arrived.
--
-- The partition rule (clean partitions, in the spirit of OTP 25's
-- prevent_overlapping_partitions):
--
--  1. Each node broadcasts the names it cannot reach ("unreachable"; hello
--     carries it too): known nodes it is not linked with after its failure
--     detector gave up on them or after two dials in a row failed. A node
--     that shut us out (rule 3) is not unreachable: it excludes us.
--  2. For a report "A cannot reach B" with A < B (string order), B is the
--     loser; every node computes the same one. A node C that holds the
--     report (C is up with A) and is up with B, hearing from it, tells B
--     why ("excluded") and closes its link ("excluded: A cannot reach B").
--     While the report stands C refuses B's links and does not dial it.
--     A node or reporter that came up less than exclude_grace ago is given
--     that long first: a node rejoining after a freeze or a restart reaches
--     every reporter within it, and stale reports do not exclude it.
--  3. The loser ignores reports about itself and does not report the nodes
--     that excluded it, so it excludes no one in turn. Isolated, it keeps
--     dialling its known nodes and seeds with backoff.
--  4. A keeps dialling B. When a link comes up A's report no longer names B,
--     the others let B in again and dial it at once: the cluster is whole.
--  5. A report by the greater name ("B cannot reach A", B > A) excludes no
--     one: B would be shut out, its report would vanish with its links and
--     B would be let in again, for ever. A reports B as well (A cannot be
--     linked with B either), and A's report is the one that is withdrawn
--     exactly when the two can talk again.
--  6. Reports of a node are forgotten when it goes down, so reports about a
--     dead node (no one is up with it) exclude no one.
--
-- The rule only ever removes the loser; an excluded node produces no
-- reports about its excluders and reports are withdrawn only by links that
-- work, so a standing cut settles in one round and stays settled, and a
-- heal is seen within one redial (backoff_max) of the winner.
--
-- Messages (tables with a field t; any other t goes to handle(kind, fn)):
--   hello        name, incarnation, addr, meta, nodes = { { name, addr,
--                incarnation, up, down_for } }, unreachable = { names }
--   nodes        nodes = { ... }: a peer just came up (as in hello)
--   ping         ts; a heartbeat: beat = true, period, echo and held
--                (the last ts received and its age, for the round trip);
--                a probe: via, id (indirect) or nothing (direct)
--   pong         ts, via, id: the answer to a probe, not to a heartbeat
--   ping_req     id, target: ping target for me; its pong with via/id
--   ping_ack     id, target: ... comes back as this
--   meta         meta
--   unreachable  nodes = { names }: this node's report (rule 1)
--   excluded     reporter, reason: sent before closing a loser's link
--   bye          reason: sent by stop() before closing
--
-- Advertised address: cfg.advertise, else cfg.listen. A wildcard listen
-- host (0.0.0.0, ::, empty) is replaced by 127.0.0.1 only as a last resort,
-- with a warning; peers that accept a link from a node advertising a
-- loopback or wildcard host record it under the host the link came from
-- instead, and pass that address on.

local grammar = require "pogo.grammar"

local M = {}

-- LAN defaults, in seconds.
M.DEFAULTS = {
  heartbeat = 0.2,      -- ping every peer this often ...
  ping_rate = 100,      -- ... unless that is more heartbeats a second than this
  suspect_after = 0.6,  -- silence before a peer is suspected and probed
  probe_timeout = 0.5,  -- how long a probe waits for a direct or indirect answer
  indirect = 3,         -- other up nodes asked to probe a suspect
  link_timeout = 3,     -- direct silence that closes a link others vouch for
  exclude_grace = 0.5,  -- a fresh node's time to reach the reporters (rule 2)
  join_wait = 0.5,      -- the greater name waits this long before dialling a new node
  backoff_min = 0.1,    -- first redial delay, doubling ...
  backoff_max = 5,      -- ... up to this
  jitter = 0.2,         -- +-20% on every redial delay
  dial_timeout = 10,    -- a dial the link layer never answers counts as failed
  forget_after = 3600,  -- a node down this long is no longer dialled or passed on
}

-- Message kinds of this protocol; handle() cannot take them.
M.KINDS = {
  hello = true, nodes = true, ping = true, pong = true, ping_req = true,
  ping_ack = true, meta = true, unreachable = true, excluded = true, bye = true,
}

local EVENTS = { up = true, down = true, meta = true }
local DEFAULT_PORT = 4370

-- Helpers -----------------------------------------------------------------------

local function format_addr(host, port)
  if host:find(":", 1, true) then return ("[%s]:%d"):format(host, port) end
  return ("%s:%d"):format(host, port)
end

-- "host:port" -> canonical "host:port", host, port; or nil, err.
local function parse_addr(s)
  local a, err = grammar.address(s, DEFAULT_PORT)
  if not a then return nil, err end
  return format_addr(a.host, a.port), a.host, a.port
end

-- The listen address may name port 0 (the system picks one; tests use it).
local function parse_listen(s)
  local addr, host, port = parse_addr(s)
  if addr then return addr, host, port end
  local head = type(s) == "string" and s:match("^(.*):0$")
  if head then
    local _, h = parse_addr(head .. ":1")
    if h then return format_addr(h, 0), h, 0 end
  end
  return addr, host
end

local WILDCARD = { [""] = true, ["0.0.0.0"] = true, ["::"] = true }

local function is_local(host)
  return WILDCARD[host] or host == "localhost" or host == "::1" or host:find("^127%.") ~= nil
end

-- A copy of plain data (metadata): what a peer would get over the wire.
local function copy(v, depth)
  if type(v) ~= "table" then return v end
  depth = (depth or 0) + 1
  if depth > 32 then error("metadata nested too deeply", 0) end
  local out = {}
  for k, x in pairs(v) do out[copy(k, depth)] = copy(x, depth) end
  return out
end

local function set_of(list)
  local s = {}
  if type(list) == "table" then
    for _, v in ipairs(list) do
      if type(v) == "string" then s[v] = true end
    end
  end
  return s
end

local function protect(log, what, fn, ...)
  local ok, err = xpcall(fn, debug.traceback, ...)
  if not ok then log.error("%s failed: %s", what, err) end
end

-- Instances -------------------------------------------------------------------------

local Cluster = {}
Cluster.__index = Cluster

local function check_tuning(given)
  local t = {}
  for k, v in pairs(M.DEFAULTS) do t[k] = v end
  for k, v in pairs(given or {}) do
    if M.DEFAULTS[k] == nil then error(("cluster: unknown tuning key '%s'"):format(k), 3) end
    if type(v) ~= "number" or v < 0 then
      error(("cluster: tuning.%s must be a number >= 0"):format(k), 3)
    end
    t[k] = v
  end
  return t
end

--- A cluster instance. opts: name, incarnation, listen ("host:port"),
--- advertise, seeds ({ "host:port", ... }), meta (table), tuning (see
--- DEFAULTS) and the injected link, timer(after, repeat, fn), now(),
--- random(), log. Nothing happens before :start().
function M.new(opts)
  assert(type(opts) == "table", "cluster.new: expected a table of options")
  if type(opts.name) ~= "string" or opts.name == "" then
    error("cluster.new: name must be a non-empty string", 2)
  end
  for _, dep in ipairs { "link", "timer", "now" } do
    if opts[dep] == nil then error(("cluster.new: opts.%s is required"):format(dep), 2) end
  end
  if type(opts.listen) ~= "string" then error("cluster.new: listen must be \"host:port\"", 2) end
  if opts.meta ~= nil and type(opts.meta) ~= "table" then error("cluster.new: meta must be a table", 2) end
  local self = setmetatable({
    name = opts.name,
    listen = opts.listen,
    advertise = opts.advertise,
    seed_list = opts.seeds or {},
    meta = copy(opts.meta or {}),
    tuning = check_tuning(opts.tuning),
    link = opts.link,
    timer = opts.timer,
    now = opts.now,
    random = opts.random or math.random,
    log = opts.log or require("pogo.log").sub("cluster"),
    peers = {},          -- name -> node record (see _node())
    seeds = {},          -- { addr, backoff, retry, joined, name, self }
    dialing = {},        -- addr -> { link, at }: dials in flight
    timers = {},         -- live timers, closed by stop()
    subs = { up = {}, down = {}, meta = {} },
    handlers = {},       -- message kind -> fn(from, msg)
    report = {},         -- our own "cannot reach" list, as last broadcast
    report_key = "",
    refused = {},        -- addresses the link layer would not dial (warned once)
    probe_seq = 0,
    started = false,
    stopped = false,
  }, Cluster)
  -- A fresh random id per start; the agent passes the one its links use.
  self.incarnation = opts.incarnation or math.floor(self.random() * 2 ^ 53)
  return self
end

function Cluster:_timer(after, rep, fn)
  local w = {}
  local h
  h = self.timer(after, rep, function()
    -- A fired one-shot is done: close it, or the callback (held by a
    -- registry ref) keeps w, and through w.close its own handle, for ever.
    if rep == 0 then w.close() end
    if self.stopped then return end
    fn()
  end)
  function w.close()
    if h then self.timers[w] = nil h:close() h = nil end
  end
  self.timers[w] = true
  return w
end

-- A node record: everything we know about one peer.
function Cluster:_node(name)
  local node = self.peers[name]
  if node then return node end
  node = {
    name = name,
    addr = nil,           -- where we dial it ("host:port")
    incarnation = nil,
    meta = {},
    state = "down",       -- "up" | "suspect" | "down" | "excluded"
    since = self.now(),   -- time of the last state change
    reason = nil,         -- why it is down or excluded
    rtt = nil,            -- smoothed round trip of pings, seconds
    link = nil,           -- our link to it, from link-up to close
    linked_at = nil,
    hello = false,        -- its hello arrived over this link: it is up
    up_at = nil,
    last_heard = nil,     -- last message of any kind over the link
    period = nil,         -- its heartbeat period, as its last heartbeat said
    beat_in = nil,        -- ticks until our next heartbeat to it
    echo = nil,           -- { ts, at }: its last heartbeat's ts, when it came
    vouched_at = nil,     -- last time another node answered a probe for it
    probe = nil,          -- { id, started, timer, helpers } while suspect
    report = nil,         -- set of names it cannot reach (its last report)
    unreachable = false,  -- our detector gave up on it, or our dials fail
    failures = 0,         -- dials in a row that failed
    excused = nil,        -- it excluded us: the reporter it named
    excluded = nil,       -- we excluded it: the reporter whose report stands
    backoff = nil,        -- next redial delay
    retry = nil,          -- redial timer
  }
  self.peers[name] = node
  return node
end

function Cluster:_sorted()
  local list = {}
  for _, node in pairs(self.peers) do list[#list + 1] = node end
  table.sort(list, function(a, b) return a.name < b.name end)
  return list
end

local function is_up(node) return node.link ~= nil and node.hello end

function Cluster:_set_state(node, state, reason)
  if node.state ~= state then node.state, node.since = state, self.now() end
  node.reason = reason
end

function Cluster:_view(node)
  return {
    name = node.name,
    addr = node.addr,
    state = node.state,
    incarnation = node.incarnation,
    rtt = node.rtt,
    meta = copy(node.meta),
    self = false,
    since = node.since,
    reason = node.reason,
  }
end

function Cluster:_emit(event, node, reason)
  local list = self.subs[event]
  if #list == 0 then return end
  local view = node == self and self:self() or self:_view(node)
  for _, sub in ipairs { table.unpack(list) } do
    if self.stopped then return end
    if not sub.cancelled then protect(self.log, ("'%s' callback"):format(event), sub.fn, view, reason) end
  end
end

-- Sends a protocol message to every linked peer (but `except`): our hello
-- went out when the link came up, so what changed since must follow it,
-- even where the peer's hello has not arrived yet.
function Cluster:_broadcast(msg, except)
  for _, node in ipairs(self:_sorted()) do
    if node.link and node ~= except then node.link:send(msg) end
  end
end

-- Dialling ----------------------------------------------------------------------------

function Cluster:_backoff(obj)
  local t = self.tuning
  local d = obj.backoff or t.backoff_min
  obj.backoff = math.min(d * 2, t.backoff_max)
  return d * (1 + t.jitter * (2 * self.random() - 1))
end

-- Dials addr unless a dial to it is already in flight; the outcome comes
-- back as link-up or failed.
function Cluster:_dial(addr)
  if self.stopped or self.dialing[addr] then return end
  local _, host, port = parse_addr(addr)
  local l, err = self.link.dial(host, port)
  if not l then
    -- Refused before any I/O (a host name where the link layer wants a
    -- numeric address, say): say so once, then back off like any failure.
    if not self.refused[addr] then
      self.refused[addr] = true
      self.log.warn("cannot dial %s: %s", addr, tostring(err))
    end
    self:_timer(0, 0, function() self:_dial_failed(addr, err or "dial refused") end)
    return
  end
  self.log.debug("dialling %s", addr)
  self.dialing[addr] = { link = l, at = self.now() }
end

function Cluster:_schedule_dial(node, delay)
  if self.stopped or node.link or node.excluded or not node.addr then return end
  delay = delay or self:_backoff(node)
  if node.retry then node.retry:close() end
  node.retry = self:_timer(delay, 0, function()
    node.retry = nil
    if not node.link and not node.excluded and node.addr then self:_dial(node.addr) end
  end)
end

-- A seed is joined once we are linked with the node at its address,
-- whichever side dialled.
function Cluster:_seed_linked(seed)
  for _, node in pairs(self.peers) do
    if node.link and (node.addr == seed.addr or node.name == seed.name) then
      seed.joined, seed.name = true, node.name
      return true
    end
  end
  return false
end

function Cluster:_schedule_seed(seed, delay)
  if self.stopped or seed.self or self:_seed_linked(seed) then return end
  delay = delay or self:_backoff(seed)
  if seed.retry then seed.retry:close() end
  seed.retry = self:_timer(delay, 0, function()
    seed.retry = nil
    if self:_seed_linked(seed) then return end
    local n = seed.name and self.peers[seed.name]
    if n and n.excluded then return end
    self:_dial(seed.addr)
  end)
end

-- With no peer left, every seed is tried again (an isolated node rejoins
-- through them as well as through its known nodes).
function Cluster:_rearm_seeds()
  for _, node in pairs(self.peers) do
    if node.link then return end
  end
  for _, seed in ipairs(self.seeds) do
    if seed.joined and not seed.retry then
      seed.joined = false
      self:_schedule_seed(seed)
    end
  end
end

function Cluster:_dial_failed(addr, reason)
  self.dialing[addr] = nil
  if self.stopped then return end
  self.log.debug("dial %s failed: %s", addr, tostring(reason))
  for _, node in ipairs(self:_sorted()) do
    if node.addr == addr and not node.link then
      node.failures = node.failures + 1
      -- Unreachable, not shutting us out: a node that excludes us accepts the dial.
      node.excused = nil
      if node.failures >= 2 then node.unreachable = true end
      node.last_error = reason
      self:_schedule_dial(node)
    end
  end
  for _, seed in ipairs(self.seeds) do
    if seed.addr == addr and not seed.joined then self:_schedule_seed(seed) end
  end
  self:_report_changed()
end

-- The dial that produced l is over; returns the address dialled.
function Cluster:_dial_done(l)
  for addr, d in pairs(self.dialing) do
    if d.link == l then self.dialing[addr] = nil return addr end
  end
  local addr = type(l.addr) == "string" and parse_addr(l.addr) or nil
  if addr and self.dialing[addr] then self.dialing[addr] = nil end
  return addr
end

-- Links ----------------------------------------------------------------------------------

function Cluster:_hello()
  local known, now = {}, self.now()
  for _, node in ipairs(self:_sorted()) do
    if node.addr then
      local up = is_up(node)
      known[#known + 1] = { name = node.name, addr = node.addr, incarnation = node.incarnation,
        up = up, down_for = not up and now - node.since or nil }
    end
  end
  return {
    t = "hello", name = self.name, incarnation = self.incarnation, addr = self.addr,
    meta = self.meta, nodes = known, unreachable = self.report,
  }
end

function Cluster:_refuse(node, l)
  local reason = ("excluded: %s cannot reach %s"):format(node.excluded, node.name)
  l:send { t = "excluded", reporter = node.excluded, reason = reason }
  l:close(reason)
end

function Cluster:_on_up(l)
  if self.stopped then l:close("stopping") return end
  local addr = l.initiator and self:_dial_done(l) or nil
  local name = l.peer
  if name == self.name then
    -- Our own address in the seed list (all nodes often share one).
    for _, seed in ipairs(self.seeds) do
      if seed.addr == addr then seed.self = true end
    end
    l:close("connected to itself")
    return
  end
  if addr then
    for _, seed in ipairs(self.seeds) do
      if seed.addr == addr then
        -- Its backoff is reset by the hello, not here: a node that keeps
        -- refusing us (rule 2) must not be dialled at backoff_min for ever.
        seed.joined, seed.name = true, name
        if seed.retry then seed.retry:close() seed.retry = nil end
      end
    end
    -- Another node used to live at this address: keep trying it where it was.
    for _, other in ipairs(self:_sorted()) do
      if other.addr == addr and other.name ~= name and not other.link then self:_schedule_dial(other) end
    end
  end
  local node = self:_node(name)
  if node.link then self:_close(node, "replaced by a newer link") end
  if node.incarnation ~= nil and node.incarnation ~= l.incarnation then
    self.log.info("node %s restarted (incarnation %s, was %s)", name, tostring(l.incarnation), tostring(node.incarnation))
    node.meta, node.rtt, node.report = {}, nil, nil
    node.unreachable, node.failures, node.excused, node.excluded = false, 0, nil, nil
  end
  node.incarnation = l.incarnation
  if not node.addr and addr then node.addr = addr end
  if node.excluded then self:_refuse(node, l) return end
  local now = self.now()
  node.link, node.linked_at, node.last_heard, node.hello, node.vouched_at = l, now, now, false, nil
  -- A random phase, so that the heartbeats of one period spread over its ticks.
  node.period, node.echo = nil, nil
  node.beat_in = 1 + math.floor(self.random() * (self.every or 1))
  if node.retry then node.retry:close() node.retry = nil end
  l:send(self:_hello())
end

function Cluster:_on_down(l, reason)
  if self.stopped then return end
  local node = l.peer and self.peers[l.peer]
  if not node or node.link ~= l then return end   -- a link we already let go
  self:_lost(node, "link closed: " .. tostring(reason))
end

-- Closes our link to node (if any) and records why.
function Cluster:_close(node, reason, opts)
  local l = node.link
  if l then
    node.link = nil       -- before close(): a down callback from inside it is ignored
    l:close(reason)
  end
  self:_lost(node, reason, opts)
end

-- node lost its link; opts: unreachable (our detector gave up), excused
-- (it excluded us), excluded (we excluded it).
function Cluster:_lost(node, reason, opts)
  opts = opts or {}
  local was_up = node.hello
  node.link, node.hello, node.linked_at = nil, false, nil
  if node.probe then node.probe.timer:close() node.probe = nil end
  local had_report = node.report ~= nil and next(node.report) ~= nil
  node.report = nil
  if opts.unreachable then node.unreachable = true end
  if opts.excused then node.excused = opts.excused end
  if opts.excluded then node.excluded = opts.excluded end
  self:_set_state(node, node.excluded and "excluded" or "down", reason)
  if was_up then
    self.log.info("node %s down: %s", node.name, reason)
    self:_emit("down", node, reason)
  end
  if self.stopped then return end
  self:_schedule_dial(node)
  self:_report_changed()
  if had_report then self:_evaluate() end
  self:_rearm_seeds()
end

-- The address to record for a peer: what it advertises, unless that is a
-- loopback or wildcard host and it reached us from elsewhere.
function Cluster:_peer_addr(node, advertised)
  local addr, host, port = nil, nil, nil
  if type(advertised) == "string" then addr, host, port = parse_addr(advertised) end
  if not addr then return node.addr end
  local l = node.link
  if is_local(host) and l and not l.initiator and type(l.addr) == "string" then
    local _, from = parse_addr(l.addr)
    if from and not is_local(from) then return format_addr(from, port) end
  end
  return addr
end

function Cluster:_on_hello(node, msg)
  local now = self.now()
  local first = not node.hello
  node.addr = self:_peer_addr(node, msg.addr)
  node.meta = type(msg.meta) == "table" and msg.meta or {}
  node.report = set_of(msg.unreachable)
  node.hello = true
  node.unreachable, node.failures, node.excused, node.backoff = false, 0, nil, nil
  for _, seed in ipairs(self.seeds) do
    if seed.name == node.name then seed.backoff = nil end
  end
  if first then
    node.up_at = now
    self:_set_state(node, "up", nil)
  end
  self:_learn(msg.nodes)
  if first then
    self.log.info("node %s up at %s", node.name, tostring(node.addr))
    self:_broadcast({ t = "nodes", nodes = { { name = node.name, addr = node.addr,
      incarnation = node.incarnation, up = true } } }, node)
    self:_emit("up", node)
    if self.stopped then return end
  end
  self:_report_changed()
  self:_evaluate()
end

-- Nodes a peer knows. Those it is up with and we are not linked with are
-- dialled now (full mesh). Those it lost are remembered and dialled with
-- backoff, so that the cluster can merge again through them even after
-- every seed is gone.
function Cluster:_learn(entries)
  if type(entries) ~= "table" then return end
  local t, now = self.tuning, self.now()
  for _, e in ipairs(entries) do
    local addr = type(e) == "table" and type(e.name) == "string" and type(e.addr) == "string"
      and e.name ~= self.name and parse_addr(e.addr) or nil
    local known = addr and self.peers[e.name]
    -- (nothing to learn from an entry that is malformed or about this node)
    if addr and e.up == false then
      local down_for = type(e.down_for) == "number" and math.max(0, e.down_for) or 0
      if not known and down_for < t.forget_after then
        local node = self:_node(e.name)
        node.addr, node.incarnation = addr, e.incarnation
        node.since, node.reason = now - down_for, "learned from a peer that lost it"
        self.log.debug("learned of %s at %s (down)", e.name, addr)
        self:_schedule_dial(node)
      end
    elseif addr then
      local node = self:_node(e.name)
      if not node.link then
        if not known then
          self.log.debug("learned of %s at %s", e.name, addr)
        elseif node.incarnation ~= e.incarnation then
          -- It restarted while we were apart: what we knew is stale.
          node.unreachable, node.failures, node.excused = false, 0, nil
        end
        node.addr, node.incarnation = addr, e.incarnation
        -- Both may learn at once: the smaller name dials first.
        local delay = self.name < e.name and 0 or t.join_wait
        if not node.excluded and not self.dialing[addr] then self:_schedule_dial(node, delay) end
      end
    end
  end
end

-- Failure detection ------------------------------------------------------------------------

function Cluster:_suspect(node, silence)
  local t, now = self.tuning, self.now()
  self:_set_state(node, "suspect", ("silent for %.2fs"):format(silence))
  self.probe_seq = self.probe_seq + 1
  local probe = { id = self.probe_seq, started = now, helpers = {} }
  node.probe = probe
  -- Up to `indirect` other peers that are up and not suspect themselves.
  local pool = {}
  for _, other in ipairs(self:_sorted()) do
    if other ~= node and is_up(other) and other.state == "up" then pool[#pool + 1] = other end
  end
  for _ = 1, math.min(t.indirect, #pool) do
    local i = math.floor(self.random() * #pool) + 1
    local helper = table.remove(pool, i)
    probe.helpers[#probe.helpers + 1] = helper.name
    helper.link:send { t = "ping_req", id = probe.id, target = node.name }
  end
  node.link:send { t = "ping", ts = now }
  self.log.debug("%s silent for %.2fs: probing through %s", node.name, silence,
    #probe.helpers > 0 and table.concat(probe.helpers, ", ") or "no one")
  probe.timer = self:_timer(t.probe_timeout, 0, function()
    if node.probe ~= probe then return end
    node.probe = nil
    local silent = self.now() - node.last_heard
    self:_close(node, ("no answer for %.2fs, nor through %d other node(s)"):format(silent, #probe.helpers),
      { unreachable = true })
  end)
end

function Cluster:_clear_suspicion(node)
  if node.probe then node.probe.timer:close() node.probe = nil end
  if node.state == "suspect" then self:_set_state(node, "up", nil) end
end

-- Our heartbeat period in heartbeats: 1, or more when a heartbeat to each
-- linked peer every tick would exceed ping_rate a second (0: no limit).
function Cluster:_every(sorted)
  local t, linked = self.tuning, 0
  for _, node in ipairs(sorted) do
    if node.link then linked = linked + 1 end
  end
  if t.ping_rate == 0 then return 1 end
  return math.max(1, math.ceil(linked / (t.ping_rate * t.heartbeat)))
end

-- How much longer than with one heartbeat per tick node may stay silent:
-- the extra length of the period its last heartbeat announced.
function Cluster:_slack(node)
  return math.max(0, (node.period or self.tuning.heartbeat) - self.tuning.heartbeat)
end

function Cluster:_tick()
  local t, now = self.tuning, self.now()
  -- A tick far too late means this agent did not run (frozen, starved):
  -- the silence it measures is its own.
  local gap = self.last_tick and now - self.last_tick or 0
  self.last_tick = now
  local stalled = gap > t.heartbeat + t.suspect_after
  if stalled then
    self.log.warn("this agent did not run for %.2fs: restarting the peers' silence clocks", gap)
    self.stalled_at = now
  end
  local sorted = self:_sorted()
  self.every = self:_every(sorted)
  local period = self.every * t.heartbeat
  for _, node in ipairs(sorted) do
    local l = node.link
    if l then
      if stalled then node.last_heard, node.linked_at = now, now end
      node.beat_in = (node.beat_in or 1) - 1
      if node.beat_in <= 0 then
        node.beat_in = self.every
        local echo = node.echo
        l:send { t = "ping", beat = true, ts = now, period = period,
                 echo = echo and echo.ts, held = echo and now - echo.at }
      end
      local silence, slack = now - node.last_heard, self:_slack(node)
      if not node.hello then
        if now - node.linked_at > t.suspect_after + t.probe_timeout then
          self:_close(node, "no hello over the new link", { unreachable = true })
        end
      elseif silence >= t.link_timeout + slack then
        self:_close(node, ("link silent for %.2fs while other nodes reach it"):format(silence),
          { unreachable = true })
      elseif silence >= t.suspect_after + slack and not node.probe
          and (not node.vouched_at or now - node.vouched_at >= t.suspect_after + slack) then
        self:_suspect(node, silence)
      end
    end
  end
  local forgot = false
  for _, node in ipairs(self:_sorted()) do
    if not node.link and node.state == "down" and now - node.since > t.forget_after then
      self.log.info("forgetting %s: down for %.0fs", node.name, now - node.since)
      if node.retry then node.retry:close() end
      self.peers[node.name] = nil
      forgot = true
    end
  end
  if forgot then self:_report_changed() end
  local late = {}
  for addr, d in pairs(self.dialing) do
    if now - d.at > t.dial_timeout then late[#late + 1] = addr end
  end
  table.sort(late)
  for _, addr in ipairs(late) do self:_dial_failed(addr, "no answer from the link layer") end
  self:_evaluate()
end

-- The partition rule --------------------------------------------------------------------

-- Our report: known nodes we are not linked with because our detector gave
-- up on them or dials fail; not those that excluded us or that we excluded.
function Cluster:_own_report()
  local list = {}
  for name, node in pairs(self.peers) do
    if not node.link and node.unreachable and not node.excused and not node.excluded then
      list[#list + 1] = name
    end
  end
  table.sort(list)
  return list
end

function Cluster:_report_changed()
  if self.stopped then return end
  local list = self:_own_report()
  local key = table.concat(list, "\0")
  if key == self.report_key then return end
  self.report, self.report_key = list, key
  if #list > 0 then self.log.info("cannot reach: %s", table.concat(list, ", ")) end
  self:_broadcast { t = "unreachable", nodes = list }
end

-- Applies rule 2 and lets excluded nodes back in once no report stands.
function Cluster:_evaluate()
  if self.stopped then return end
  local t, now = self.tuning, self.now()
  local standing = {}   -- loser -> the smallest reporter naming it
  local sorted = self:_sorted()
  for _, r in ipairs(sorted) do
    if is_up(r) and r.report then
      for name in pairs(r.report) do
        if name ~= self.name and r.name < name and not standing[name] then standing[name] = r end
      end
    end
  end
  for _, node in ipairs(sorted) do
    local r = standing[node.name]
    if r then
      if node.excluded then
        node.excluded = r.name
      elseif is_up(node) and node.state == "up" and now - node.last_heard < t.suspect_after + self:_slack(node)
          and now - node.up_at >= t.exclude_grace and now - r.up_at >= t.exclude_grace then
        local reason = ("excluded: %s cannot reach %s"):format(r.name, node.name)
        self.log.warn("%s (partition rule: this node reaches both; %s loses)", reason, node.name)
        node.link:send { t = "excluded", reporter = r.name, reason = reason }
        self:_close(node, reason, { excluded = r.name })
        -- Closing changes the reports we hold: start over from them.
        return self:_evaluate()
      end
    elseif node.excluded then
      self.log.info("node %s let in again: no report against it stands", node.name)
      node.excluded, node.backoff = nil, nil
      self:_set_state(node, "down", "let in again")
      self:_schedule_dial(node, 0)
    end
  end
end

-- Protocol messages ---------------------------------------------------------------------------

local PROTO = {}

function PROTO.hello(self, node, msg) self:_on_hello(node, msg) end

function PROTO.nodes(self, node, msg)
  if node.hello then self:_learn(msg.nodes) end
end

local function sample_rtt(node, sample)
  if sample >= 0 then node.rtt = node.rtt and (0.8 * node.rtt + 0.2 * sample) or sample end
end

function PROTO.ping(self, node, msg, now)
  if not msg.beat then
    node.link:send { t = "pong", ts = msg.ts, via = msg.via, id = msg.id }
    return
  end
  node.period = type(msg.period) == "number" and msg.period or nil
  if type(msg.ts) == "number" then node.echo = { ts = msg.ts, at = now } end
  if type(msg.echo) == "number" and type(msg.held) == "number" then
    sample_rtt(node, now - msg.echo - msg.held)
  end
end

function PROTO.pong(self, node, msg, now)
  if type(msg.ts) == "number" then sample_rtt(node, now - msg.ts) end
  if type(msg.via) == "string" then
    local asker = self.peers[msg.via]
    if asker and is_up(asker) then asker.link:send { t = "ping_ack", id = msg.id, target = node.name } end
  end
end

function PROTO.ping_req(self, node, msg, now)
  local target = type(msg.target) == "string" and self.peers[msg.target]
  if target and target ~= node and is_up(target) then
    target.link:send { t = "ping", ts = now, via = node.name, id = msg.id }
  end
end

function PROTO.ping_ack(self, node, msg, now)
  local target = type(msg.target) == "string" and self.peers[msg.target]
  if target and target.probe and target.probe.id == msg.id then
    self.log.debug("%s is silent here but %s reaches it", target.name, node.name)
    target.vouched_at = now
    self:_clear_suspicion(target)
  end
end

function PROTO.meta(self, node, msg)
  if node.hello and type(msg.meta) == "table" then
    node.meta = msg.meta
    self:_emit("meta", node)
  end
end

function PROTO.unreachable(self, node, msg)
  if node.hello then
    node.report = set_of(msg.nodes)
    self:_evaluate()
  end
end

function PROTO.excluded(self, node, msg)
  local reporter = type(msg.reporter) == "string" and msg.reporter or "?"
  self.log.warn("excluded by %s: %s cannot reach this node", node.name, reporter)
  self:_close(node, ("excluded by %s: %s cannot reach %s"):format(node.name, reporter, self.name),
    { excused = reporter })
end

function PROTO.bye(self, node, msg)
  self:_close(node, "left: " .. tostring(msg.reason or "stopped"))
end

function Cluster:_on_message(l, msg)
  if self.stopped then return end
  local node = l.peer and self.peers[l.peer]
  if not node or node.link ~= l then return end
  if type(msg) ~= "table" or type(msg.t) ~= "string" then
    self.log.warn("%s sent a message without a kind: dropped", node.name)
    return
  end
  local now = self.now()
  node.last_heard = now
  if node.state == "suspect" then self:_clear_suspicion(node) end
  local proto = PROTO[msg.t]
  if proto then return proto(self, node, msg, now) end
  if not node.hello then return end
  local fn = self.handlers[msg.t]
  if not fn then
    self.log.debug("no handler for '%s' messages (from %s)", msg.t, node.name)
    return
  end
  protect(self.log, ("handler of '%s' messages"):format(msg.t), fn, node.name, msg)
end

-- Public API ------------------------------------------------------------------------------

function Cluster:_advertise(port)
  if self.advertise then
    local addr, err = parse_addr(self.advertise)
    if not addr then error("cluster: advertise: " .. err, 3) end
    return addr
  end
  local _, host = parse_listen(self.listen)
  if WILDCARD[host] then
    self.log.warn("listening on %s with no advertise address: advertising 127.0.0.1:%d, which only "
      .. "other nodes on this host can dial; set advertise = \"HOST:PORT\"", self.listen, port)
    host = "127.0.0.1"
  end
  return format_addr(host, port)
end

--- Listens, dials the seeds and starts the heartbeat. Returns self, or nil
--- and a message when the listen address cannot be bound.
function Cluster:start()
  assert(not self.started, "cluster: already started")
  self.started = true
  local _, host, port = parse_listen(self.listen)
  if not host then error("cluster: listen: " .. select(2, parse_listen(self.listen)), 2) end
  self.link.on {
    up = function(l) self:_on_up(l) end,
    message = function(l, msg) self:_on_message(l, msg) end,
    down = function(l, reason) self:_on_down(l, reason) end,
    failed = function(h, p, reason, l)
      if self.stopped then return end
      local addr = format_addr(h, p)
      for a, d in pairs(self.dialing) do
        if l ~= nil and d.link == l then addr = a end
      end
      self:_dial_failed(addr, reason)
    end,
  }
  local listener, err = self.link.listen(host == "" and "0.0.0.0" or host, port)
  if not listener then
    self.stopped = true
    return nil, ("cannot listen on %s: %s"):format(self.listen, tostring(err))
  end
  self.listener = listener
  local bound = listener.port and listener:port() or port
  self.addr = self:_advertise(bound)
  self.started_at = self.now()
  for _, s in ipairs(self.seed_list) do
    local addr, serr = parse_addr(s)
    if not addr then error(("cluster: seed %q: %s"):format(tostring(s), serr), 2) end
    local mine = addr == self.addr or addr == format_addr(host, bound)
    self.seeds[#self.seeds + 1] = { addr = addr, self = mine or nil }
  end
  local t = self.tuning
  self.tick = self:_timer(t.heartbeat, t.heartbeat, function() self:_tick() end)
  for _, seed in ipairs(self.seeds) do
    if not seed.self then self:_dial(seed.addr) end
  end
  self.log.info("node %s (incarnation %s) at %s, %d seed(s)", self.name, tostring(self.incarnation),
    self.addr, #self.seeds)
  return self
end

--- This node: { name, incarnation, addr, meta, state = "up", self = true }.
function Cluster:self()
  return {
    name = self.name, incarnation = self.incarnation, addr = self.addr, meta = copy(self.meta),
    state = "up", self = true, since = self.started_at,
  }
end

function Cluster:self_name() return self.name end

--- Every node known, this one included, sorted by name: { name, addr,
--- state, incarnation, rtt, meta, self, since, reason }.
function Cluster:nodes()
  local list = { self:self() }
  for _, node in pairs(self.peers) do list[#list + 1] = self:_view(node) end
  table.sort(list, function(a, b) return a.name < b.name end)
  return list
end

--- Sorted names of the nodes up here (a suspect is still up), this one included.
function Cluster:up_nodes()
  local list = { self.name }
  for name, node in pairs(self.peers) do
    if is_up(node) then list[#list + 1] = name end
  end
  table.sort(list)
  return list
end

--- Names this node cannot reach (its own report) that some up peer does
--- not report: a cut that is not transitive yet, where those nodes may run
--- what this node cannot see. Only smaller names: for a greater one this
--- node's report makes the partition rule shut that node out everywhere.
--- Sorted.
function Cluster:unseen()
  local out = {}
  for _, name in ipairs(self.report or {}) do
    if name < self.name then
      for _, node in pairs(self.peers) do
        if is_up(node) and not (node.report and node.report[name]) then
          out[#out + 1] = name
          break
        end
      end
    end
  end
  return out
end

--- How many nodes, this one included, are up and were heard from within
--- the last `window` seconds: fresh evidence of a majority, which a node
--- that was frozen or cut off does not have however long its links stay.
function Cluster:fresh(window)
  local n, now = 1, self.now()
  for _, node in pairs(self.peers) do
    if is_up(node) and node.last_heard and now - node.last_heard <= window then n = n + 1 end
  end
  return n
end

--- on("up" | "down" | "meta", fn) -> cancel. "up" fires once the hello
--- exchange is done (metadata known), "down" with a reason, "meta" when a
--- node (this one too) advertises new metadata.
function Cluster:on(event, fn)
  if not EVENTS[event] then error(("cluster.on: unknown event '%s'"):format(tostring(event)), 2) end
  if type(fn) ~= "function" then error("cluster.on: expected a function", 2) end
  local sub = { fn = fn }
  local list = self.subs[event]
  list[#list + 1] = sub
  return function()
    sub.cancelled = true
    for i, s in ipairs(list) do
      if s == sub then table.remove(list, i) break end
    end
  end
end

--- handle(kind, fn(from_name, msg)): messages of that kind from up peers
--- (fn = nil removes the handler).
function Cluster:handle(kind, fn)
  if type(kind) ~= "string" then error("cluster.handle: kind must be a string", 2) end
  if M.KINDS[kind] then error(("cluster.handle: '%s' is a message kind of the cluster protocol"):format(kind), 2) end
  if fn ~= nil and type(fn) ~= "function" then error("cluster.handle: expected a function", 2) end
  self.handlers[kind] = fn
end

local function check_msg(msg, fname)
  if type(msg) ~= "table" or type(msg.t) ~= "string" then
    error(("cluster.%s: a message is a table with a string field t"):format(fname), 3)
  end
  if M.KINDS[msg.t] then error(("cluster.%s: '%s' is a message kind of the cluster protocol"):format(fname, msg.t), 3) end
end

--- send(name, msg) -> true | nil, err.
function Cluster:send(name, msg)
  check_msg(msg, "send")
  local node = self.peers[name]
  if name == self.name then return nil, "cannot send to this node itself" end
  if self.stopped or not node or not is_up(node) then return nil, ("node %s is not up"):format(tostring(name)) end
  return node.link:send(msg)
end

--- broadcast(msg) -> number of up peers it was sent to.
function Cluster:broadcast(msg)
  check_msg(msg, "broadcast")
  if self.stopped then return 0 end
  local n = 0
  for _, node in ipairs(self:_sorted()) do
    if is_up(node) and node.link:send(msg) then n = n + 1 end
  end
  return n
end

--- Replaces this node's metadata and advertises it to every peer.
function Cluster:set_meta(meta)
  if type(meta) ~= "table" then error("cluster.set_meta: expected a table", 2) end
  self.meta = copy(meta)
  if self.stopped then return end
  self:_broadcast { t = "meta", meta = self.meta }
  self:_emit("meta", self)
end

--- Runs fn on a later loop iteration; returns a function that cancels it.
function Cluster:defer(fn)
  if type(fn) ~= "function" then error("cluster.defer: expected a function", 2) end
  local w = self:_timer(0, 0, function() protect(self.log, "deferred function", fn) end)
  return function() w:close() end
end

--- Leaves the cluster: says goodbye, closes every link, timer and the
--- listener. No event fires afterwards.
function Cluster:stop(reason)
  if self.stopped then return end
  reason = reason or "stopping"
  self.stopped = true
  for _, node in ipairs(self:_sorted()) do
    local l = node.link
    if l then
      node.link = nil
      l:send { t = "bye", reason = reason }
      l:close(reason)
    end
  end
  for w in pairs(self.timers) do w.close() end
  self.timers = {}
  if self.listener and self.listener.close then self.listener:close() end
  self.subs = { up = {}, down = {}, meta = {} }
  self.handlers = {}
  self.log.info("left the cluster: %s", reason)
end

-- The agent's instance ---------------------------------------------------------------------

local default

--- Starts the agent's instance from a node config (name, listen,
--- advertise, seeds, meta or tags/weight, tuning; keyfile, incarnation)
--- with the real link layer, loop and clock. With keyfile, the link layer
--- is initialised here (link.init) and the incarnation is the one it
--- returns; without, the caller has done it and passes the incarnation.
--- Returns the instance, or nil and a message.
function M.start(cfg)
  if default then default:stop("restarting") default = nil end
  -- Required here, not at the top: the link binding is only needed once
  -- the agent joins a cluster, and specs load this module without it.
  local link = require "pogo.core.link"
  local loop = require "pogo.core.loop"
  local sys = require "pogo.core.sys"
  local opts = {}
  for k, v in pairs(cfg) do opts[k] = v end
  if cfg.keyfile and link.init then
    -- Dial from the address we listen on, when it is a specific one.
    local host = (cfg.listen or ""):match("^%[?([^%]]*)%]?:%d+$")
    local source = host and host ~= "" and host ~= "0.0.0.0" and host ~= "::" and host or nil
    local inc, err = link.init { name = cfg.name, incarnation = cfg.incarnation,
                                 keyfile = cfg.keyfile, source = source }
    if not inc then return nil, err end
    opts.incarnation = inc
  end
  opts.meta = cfg.meta or { tags = cfg.tags, weight = cfg.weight }
  opts.link, opts.timer, opts.now = link, loop.timer, sys.monotonic
  opts.random = opts.random or math.random
  local inst = M.new(opts)
  local ok, err = inst:start()
  if not ok then return nil, err end
  default = inst
  return inst
end

--- The agent's instance (what pogo.pg attaches to), or nil before start().
function M.default() return default end

local function need(fname)
  if not default then error(("cluster.%s: the cluster is not started"):format(fname), 3) end
  return default
end

function M.self() return default and default:self() end
function M.self_name() return default and default.name end
function M.nodes() return default and default:nodes() or {} end
function M.up_nodes() return default and default:up_nodes() or {} end
for _, fname in ipairs { "on", "handle", "send", "broadcast", "set_meta", "defer" } do
  M[fname] = function(...) local d = need(fname) return d[fname](d, ...) end
end
function M.stop(reason)
  if default then default:stop(reason) default = nil end
end

return M
