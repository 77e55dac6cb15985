-- pogo.dsup: the distributed supervisor. Every node keeps the desired set
-- and the running instances in process groups (pogo.pg), places every child
-- with the policy (pogo.placement), decides with pogo.reconcile what to do
-- about its own processes and does it through the local supervisor. There
-- is no leader: each node acts on the replicated state for itself only.
--
-- Three scopes, one member per (node, group), key 0:
--
--   pogo.desired  group = child id, value = { c = clock, n = node, src =
--                 source digest, name = chunk name, fp = spec digest, stop =
--                 true|nil }: a start (or, with stop, a stop) request.
--                 Version (c, n): the higher clock wins, then the higher node
--                 name. Every node adopts the newest request it sees and
--                 re-advertises it as its own member, so the desired set
--                 lives as long as one node that saw it does. A requester
--                 uses 1 + the highest clock it has seen (Lamport).
--   pogo.sources  group = digest, value = { text =, name = }: the Lua source
--                 a spec came from (a whole spec file, or a table written
--                 out as Lua). Joined before the requests that use it, so a
--                 peer always has it first; loaded on every node in the same
--                 sandbox as local spec files, so hooks (Lua functions)
--                 travel as their source. Left when no request uses it.
--   pogo.running  group = child id, value = { g = generation, s = "starting"
--                 | "ready" | "stopping" | "failed", c, n = the version it
--                 runs, f = its fp, h = home (see pogo.reconcile), p = pid,
--                 r = restarts, t = start time }: this node's instance.
--
-- Reconciliation is event-driven: a change in any of the scopes, a node up
-- or down, a local state change, a request or a policy reload marks child
-- ids dirty and schedules one pass on the next loop iteration, which
-- places and decides only the dirty ids (all of them when the node set or
-- the policy changed). A backstop sweep decides every child once per
-- M.ANTI_ENTROPY seconds, a slice every M.SWEEP_TICK, so it costs the same
-- every tick however many children there are. Placement answers are kept
-- per child until the node set, the metadata, the policy or the spec
-- changes (S.epoch counts the first three).
--
-- Quorum children (partition = "quorum") need `expect` in the node config.
-- A node has quorum while it has heard, within the last M.FRESH seconds,
-- from a majority of `expect` nodes (itself included). It starts quorum
-- children only then, stops them as soon as it loses quorum, and renews a
-- watchdog lease of `lease` seconds every M.RENEW while it has quorum; the
-- watchdog, a separate process, SIGKILLs the quorum children's groups when
-- the lease runs out, so a frozen agent's children die too. A node cut off
-- at t0 renews at the latest at t0 + FRESH, so its quorum children are dead
-- by t0 + FRESH + lease. The other side cannot notice the loss before t0,
-- and starts a quorum child whose instance vanished with a node only
-- M.fence() = FRESH + lease + MARGIN after that: never two at once, with no
-- assumption on clocks beyond rates. See README "Partitions".

local hooks = require "pogo.hooks"
local log = require "pogo.log"
local loop = require "pogo.core.loop"
local placement = require "pogo.placement"
local proc = require "pogo.core.proc"
local reconcile = require "pogo.reconcile"
local spec_mod = require "pogo.spec"
local supervisor = require "pogo.supervisor"
local sys = require "pogo.core.sys"

local L = log.sub("dsup")

local M = {}

M.DESIRED, M.SOURCES, M.RUNNING = "pogo.desired", "pogo.sources", "pogo.running"
M.KEY = 0
M.KIND = "dsup"          -- cluster message kind (restart forwarding)
M.ANTI_ENTROPY = 5       -- seconds for the backstop to go once over every child
M.SWEEP_TICK = 0.5       -- the backstop decides a slice of the children this often
M.SYNC_WAIT = 2          -- seconds a starting node waits for its peers' state
M.FRESH = 1.5            -- a majority heard from within this long is a quorum
M.MARGIN = 0.5           -- added to the quorum fence
M.RENEW = 0.25           -- how often the quorum lease is renewed
M.PASS_MAX = 500         -- child ids decided per loop iteration
M.STARTS_MAX = 100       -- local starts per loop iteration
M.REQUEST_BATCH = 500    -- requests made per loop iteration
M.STALL_HOLD = 1         -- seconds without local starts after this agent stalled
M.HOLD_RETRY = 0.05      -- held starts are decided again this much later

local S = nil            -- the running instance (start/stop)

local function now() return loop.now() end

--- The quorum fence: how long after a node went down the majority waits
--- before starting a quorum child that ran there.
function M.fence()
  return M.FRESH + (S and S.lease or 2) + M.MARGIN
end

-- Versions and entries --------------------------------------------------------------

local function newer(a, b)
  if a == nil then return false end
  if b == nil then return true end
  if a.c ~= b.c then return a.c > b.c end
  return a.n > b.n
end

local function valid_entry(v)
  return type(v) == "table" and math.type(v.c) == "integer" and type(v.n) == "string"
    and (v.src == nil or type(v.src) == "string") and (v.fp == nil or type(v.fp) == "string")
    and (v.name == nil or type(v.name) == "string")
end

local function copy_entry(v)
  return { c = v.c, n = v.n, src = v.src, name = v.name, fp = v.fp, stop = v.stop and true or nil }
end

local function digest(text, name) return sys.digest(name .. "\n" .. text) end

-- Dirty ids and the pass ---------------------------------------------------------------

local pass, hold_starts  -- forward

local function schedule()
  if S.scheduled or S.closed then return end
  S.scheduled = true
  S.cluster:defer(function() pass() end)
end

local function dirty(id)
  S.dirty[id] = true
  schedule()
end

local function all_dirty()
  S.all = true
  schedule()
end

-- Sources ---------------------------------------------------------------------------

-- The text of a source: from our cache, else from any node's member.
local function source(d)
  local s = S.sources[d]
  if s then return s end
  for _, m in ipairs(S.pg:members(M.SOURCES, d)) do
    local v = m.value
    if type(v) == "table" and type(v.text) == "string" and type(v.name) == "string" then
      s = { text = v.text, name = v.name }
      S.sources[d] = s
      return s
    end
  end
  return nil
end

--- The specs of a source, id -> spec, or nil, err. Loaded once per digest.
local function specs_of(d)
  local s = source(d)
  if not s then return nil, "its spec source has not arrived here" end
  if not s.specs and not s.err then
    local list, err = spec_mod.load_file(s.name, {
      src = s.text, budget = S.budget, env = { pogo = require "pogo" },
    })
    if list then
      s.specs = {}
      for _, sp in ipairs(list) do s.specs[sp.id] = sp end
    else
      s.err = err
      L.error("%s (a spec from the cluster that cannot load here)", err)
    end
  end
  return s.specs, s.err
end

local function spec_of(id, entry)
  if not entry or not entry.src then return nil, "no spec" end
  local specs, err = specs_of(entry.src)
  if not specs then return nil, err end
  local sp = specs[id]
  if not sp then return nil, ("%s no longer defines child '%s'"):format(entry.name or "its source", id) end
  return sp
end

local function hold(d)
  local n = S.refs[d] or 0
  if n == 0 then
    local s = source(d)
    S.pg:join(M.SOURCES, d, M.KEY, { text = s.text, name = s.name })
  end
  S.refs[d] = n + 1
end

local function release(d)
  local n = (S.refs[d] or 1) - 1
  if n > 0 then S.refs[d] = n return end
  S.refs[d] = nil
  S.pg:leave(M.SOURCES, d, M.KEY)
  S.sources[d] = nil
end

-- The desired set ---------------------------------------------------------------------

-- Makes v this node's entry for id (its source first, so peers have it);
-- quiet: the caller decides id anyway.
local function adopt(id, v, quiet)
  local old = S.own[id]
  if v.src then hold(v.src) end
  S.own[id] = v
  S.pg:join(M.DESIRED, id, M.KEY, v)
  if old and old.src then release(old.src) end
  if v.c > S.clock then S.clock = v.c end
  if not quiet then dirty(id) end
end

-- Adopts the newest entry any node holds for id, if it is newer than ours.
-- Called from the pass (S.stale marks the ids to look at), so a burst of
-- requests from a peer is adopted PASS_MAX per loop iteration.
local function consider(id)
  local best = S.own[id]
  for _, m in ipairs(S.pg:members(M.DESIRED, id)) do
    local v = m.value
    if m.node ~= S.self and valid_entry(v) and newer(v, best) then best = v end
  end
  if best == nil or best == S.own[id] then return end
  if best.src and not source(best.src) then
    S.awaiting[best.src] = S.awaiting[best.src] or {}
    S.awaiting[best.src][id] = true
    return
  end
  adopt(id, copy_entry(best), true)
end

local function request(id, fields)
  S.clock = S.clock + 1
  adopt(id, {
    c = S.clock, n = S.self, src = fields.src, name = fields.name, fp = fields.fp,
    stop = fields.stop or nil,
  })
  L.debug("%s request for child '%s' (version %d@%s)", fields.stop and "stop" or "start", id, S.clock, S.self)
end

-- Requests are made REQUEST_BATCH per loop iteration: a file of 10,000
-- children must not stall heartbeats. A job is a list of functions, each
-- making one request, and done(), called after the last.
local function run_jobs()
  S.jobs_scheduled = false
  if S.closed then return end
  local budget = M.REQUEST_BATCH
  while budget > 0 and #S.jobs > 0 do
    local job = S.jobs[1]
    while budget > 0 and job.next <= #job do
      job[job.next]()
      job.next, budget = job.next + 1, budget - 1
    end
    if job.next > #job then
      table.remove(S.jobs, 1)
      if job.done then job.done() end
    end
  end
  if #S.jobs > 0 and not S.jobs_scheduled then
    S.jobs_scheduled = true
    S.cluster:defer(run_jobs)
  end
end

local function queue(job)
  job.next = 1
  S.jobs[#S.jobs + 1] = job
  if not S.jobs_scheduled then
    S.jobs_scheduled = true
    S.cluster:defer(run_jobs)
  end
end

-- Registers a source text as ours (cached, specs already known) -> digest.
local function publish(text, name, specs)
  local d = digest(text, name)
  local s = S.sources[d]
  if not s then
    s = { text = text, name = name }
    S.sources[d] = s
  end
  if specs and not s.specs then
    s.specs = {}
    for _, sp in ipairs(specs) do s.specs[sp.id] = sp end
  end
  return d
end

local function fp_of(sp) return sys.digest(spec_mod.fingerprint(sp)) end

--- Start requests for specs loaded from `text` (named `name`); returns
--- their ids. A child whose request already stands with an equal spec is
--- left alone. done(), if given, once every request is made.
local function request_specs(specs, text, name, done)
  local d = publish(text, name, specs)
  local ids, job, made = {}, {}, 0
  for i, sp in ipairs(specs) do
    ids[i] = sp.id
    job[i] = function()
      local fp = fp_of(sp)
      local cur = S.own[sp.id]
      if not cur or cur.stop or cur.fp ~= fp then
        request(sp.id, { src = d, name = name, fp = fp })
        made = made + 1
      end
    end
  end
  job.done = function()
    if made > 0 then L.info("start requests for %d of the %d children of %s", made, #specs, name) end
    if done then done() end
  end
  queue(job)
  return ids
end

-- Instances ---------------------------------------------------------------------------

local ADVERTISED = {
  starting = "starting", running = "starting", backoff = "starting",
  ready = "ready", stopping = "stopping", failed = "failed",
}

-- Publishes (or withdraws) this node's instance of id.
local function advertise(id)
  local e = supervisor.entries[id]
  local mine = S.mine[id]
  if S.markers[id] then return end
  local state = e and e.distributed and mine and ADVERTISED[e.rec.state]
  if not state then
    if S.advertised[id] then
      S.advertised[id] = nil
      S.pg:leave(M.RUNNING, id, M.KEY)
    end
    if not e then S.mine[id] = nil end
    return
  end
  local v = {
    g = e.generation or e.floor or mine.generation, s = state, c = mine.version.c,
    n = mine.version.n, f = mine.fp, h = mine.home, p = e.pid, r = e.restarts,
    t = e.started_at,
  }
  local old = S.advertised[id]
  if old and old.g == v.g and old.s == v.s and old.c == v.c and old.n == v.n and old.f == v.f
    and old.h == v.h and old.p == v.p and old.r == v.r then
    return
  end
  S.advertised[id] = v
  if v.g and v.g > (S.history[id] or 0) then S.history[id] = v.g end
  S.pg:join(M.RUNNING, id, M.KEY, v)
end

-- A start goes starting -> running -> ready within one call for most
-- children: the changes of one loop iteration are advertised once, at its
-- end, which divides the messages of a mass start by three.
local function flush_adverts()
  S.adverts_scheduled = false
  if S.closed then return end
  local ids = S.adverts
  S.adverts = {}
  for id in pairs(ids) do advertise(id) end
end

local function on_local_change(id)
  if S and not S.closed then
    S.adverts[id] = true
    if not S.adverts_scheduled then
      S.adverts_scheduled = true
      S.cluster:defer(flush_adverts)
    end
    dirty(id)
  end
end

-- A child that failed here stays advertised as failed for its cool-down, so
-- placement keeps it off this node while it runs elsewhere.
local function mark_failed(id, cooldown)
  local t = S.markers[id]
  if t then t:close() end
  S.markers[id] = loop.timer(cooldown, 0, function()
    S.markers[id] = nil
    advertise(id)
    dirty(id)
  end)
end

-- The view --------------------------------------------------------------------------

local function instances(id)
  local out = {}
  for _, m in ipairs(S.pg:members(M.RUNNING, id)) do
    local v = m.value
    if type(v) == "table" and math.type(v.g) == "integer" and type(v.s) == "string" then
      out[#out + 1] = {
        node = m.node, generation = v.g, state = v.s, fp = v.f, home = v.h and true or false,
        version = (math.type(v.c) == "integer" and type(v.n) == "string") and { clock = v.c, node = v.n } or nil,
        pid = v.p, restarts = v.r, started = v.t,
      }
    end
  end
  return out
end

-- Live nodes with their metadata, sorted by name; and the ones placement
-- may use (not draining, unless every one is).
local function live_nodes()
  local up = {}
  for _, name in ipairs(S.cluster:up_nodes()) do up[name] = true end
  local all, eligible = {}, {}
  for _, n in ipairs(S.cluster:nodes()) do
    if up[n.name] then
      local node = { name = n.name, meta = n.meta or {} }
      all[#all + 1] = node
      if not node.meta.draining then eligible[#eligible + 1] = node end
    end
  end
  if #eligible == 0 then eligible = all end
  return all, eligible
end

local function has_quorum()
  return S.expect ~= nil and S.cluster:fresh(M.FRESH) * 2 > S.expect
end

-- Where id should run: node | { node = nil, reason = }, and the inputs.
local function assign(id, sp, insts, eligible)
  if sp.partition == "quorum" then
    if not S.expect then
      return { reason = "quorum mode needs 'expect' in the node config" }
    end
    local lost = S.lost[id]
    if lost and #insts == 0 then
      local left = lost.at + M.fence() - now()
      if left > 0 then
        S.fence_timer(left)
        return { reason = ("quorum fence: %s went down %.1fs ago, waiting %.1fs more"):format(
          lost.node, now() - lost.at, left) }
      end
      S.lost[id] = nil
    end
    -- Started only from a view that has held still for the fence: right
    -- after links come and go (a non-transitive cut still converging), two
    -- overlapping sides can each hear a majority, and this node cannot see
    -- an instance on a node it has no link to.
    local settled = now() - S.view_since
    if #insts == 0 and settled < M.fence() then
      local left = M.fence() - settled
      S.fence_timer(left)
      return { reason = ("quorum fence: the set of nodes changed %.1fs ago, waiting %.1fs more"):format(
        settled, left) }
    end
    -- Nor while a node that other nodes still reach is cut off from this
    -- one: it may hold a copy that this node cannot see, and both sides
    -- can hear a majority (the partition rule settles it in seconds).
    local unseen = #insts == 0 and S.cluster:unseen() or {}
    if #unseen > 0 then
      return { reason = ("quorum: cannot reach %s, which other nodes still reach"):format(
        table.concat(unseen, ", ")) }
    end
  end
  -- Keep a child off the nodes where it failed, while others remain.
  local nodes = eligible
  local failed = {}
  for _, inst in ipairs(insts) do
    if inst.state == "failed" then failed[inst.node] = true end
  end
  local fp = S.own[id] and S.own[id].fp
  local cached = S.placed[id]
  if not next(failed) and cached and cached.epoch == S.epoch and cached.fp == fp then
    return cached.answer
  end
  if next(failed) then
    local rest = {}
    for _, n in ipairs(eligible) do
      if not failed[n.name] then rest[#rest + 1] = n end
    end
    if #rest > 0 then nodes = rest end
  end
  local name, info = placement.decide(S.policy, S.policy_good, sp, nodes)
  if info.error and not S.policy_errors[info.error] then
    S.policy_errors[info.error] = true
    L.error("%s (using %s)", info.error, info.policy)
  end
  local answer = name or { reason = info.reason or "the policy returned nil" }
  if not next(failed) and not info.error then
    S.placed[id] = { epoch = S.epoch, fp = fp, answer = answer }
  end
  return answer
end

-- The backstop: the next slice of every child id (a sorted snapshot,
-- taken again once used up).
local function sweep()
  local list = S.sweep_list
  if not list or S.sweep_at > #list then
    list = {}
    for id in pairs(S.own) do list[#list + 1] = id end
    for id, e in pairs(supervisor.entries) do
      if e.distributed and not S.own[id] then list[#list + 1] = id end
    end
    table.sort(list)
    S.sweep_list, S.sweep_at = list, 1
  end
  local n = math.ceil(#list * M.SWEEP_TICK / M.ANTI_ENTROPY)
  for i = S.sweep_at, math.min(#list, S.sweep_at + n - 1) do dirty(list[i]) end
  S.sweep_at = S.sweep_at + n
end

local function placement_changed(id, sp, from, to)
  if from == to or (from ~= S.self and to ~= S.self) then return end
  hooks.run("on_placement_change", sp.hooks, ("child '%s'"):format(id), supervisor.get(id) or { id = id }, from, to)
end

local function execute(a, specs)
  local id = a.id
  if a.op == "stop" then
    local e = supervisor.entries[id]
    if e and e.distributed then
      L.info("stopping child '%s' here: %s", id, a.reason)
      if e.rec.state == "failed" then mark_failed(id, e.spec.cooldown) end
      supervisor.remove(id)
    end
  elseif a.op == "claim" then
    local mine = S.mine[id]
    if mine then mine.home = a.home advertise(id) end
  elseif (a.op == "start" or a.op == "replace") and S.draining then
    S.waiting[id] = { reason = "this node is draining: it starts nothing", since = now() }
  elseif a.op == "start" or a.op == "replace" then
    local sp, err = specs[id], nil
    if not sp then sp, err = spec_of(id, S.own[id]) end
    if not sp then
      S.waiting[id] = { reason = "cannot start here: " .. tostring(err), since = now() }
      return
    end
    local entry = S.own[id]
    S.mine[id] = {
      version = { c = entry.c, n = entry.n }, fp = entry.fp, home = true, generation = a.generation,
    }
    if a.generation > (S.history[id] or 0) then S.history[id] = a.generation end
    L.info("%s child '%s' here, generation %d: %s", a.op == "start" and "starting" or "replacing",
      id, a.generation, a.reason)
    if S.markers[id] then S.markers[id]:close() S.markers[id] = nil end
    supervisor.run(sp, a.generation)
    advertise(id)
  end
end

-- Why starts must wait a moment, or nil. Until a new node is linked to
-- every node it knows of, or while a peer's snapshot is still arriving,
-- what runs there is not known yet; right after this agent was
-- frozen or starved, its links are being re-made and its view is old.
-- Either way a start now could only make a duplicate. Held ids are decided
-- again M.HOLD_RETRY later.
local function all_known_up()
  for _, n in ipairs(S.cluster:nodes()) do
    if not n.self and n.state ~= "up" then return false end
  end
  return true
end

hold_starts = function()
  -- A node that just started knows the others from its seeds before it
  -- has links to all of them (M.SYNC_WAIT at most).
  if not S.joined and (now() - S.started_at >= M.SYNC_WAIT or all_known_up()) then
    S.joined = true
  end
  local why
  if not S.joined then
    why = "joining: not linked to every known node yet"
  elseif S.pg:syncing() then
    why = "a peer's process groups are still arriving"
  elseif S.cluster.stalled_at and S.cluster.now() - S.cluster.stalled_at < M.STALL_HOLD then
    why = "this agent was just frozen or starved; its links are re-forming"
  end
  if why and not S.hold_t then
    S.hold_t = loop.timer(M.HOLD_RETRY, 0, function()
      S.hold_t = nil
      local held = S.held
      S.held = {}
      for id in pairs(held) do dirty(id) end
    end)
  end
  return why
end

-- Puts the request for id and where it should run into view (pass);
-- returns its spec when it is to run.
local function describe(view, id, eligible)
  local entry, insts = S.own[id], view.running[id]
  local sp, err
  if not entry.stop then sp, err = spec_of(id, entry) end
  view.desired[id] = {
    spec = sp or { id = id }, version = { clock = entry.c, node = entry.n },
    stopped = entry.stop, fp = entry.fp,
  }
  if entry.stop then
    view.assigned[id] = { reason = "stopped" }
    return nil
  elseif not sp then
    view.assigned[id] = { reason = "spec cannot load here: " .. tostring(err) }
    return nil
  end
  local live = {}
  for _, inst in ipairs(insts) do
    if inst.node == S.self or S.up_set[inst.node] then live[#live + 1] = inst end
  end
  local a = assign(id, sp, live, eligible)
  view.assigned[id] = a
  local to = type(a) == "string" and a or nil
  -- Where it was meant to be, or (first sight here) where it runs.
  local from = S.assigned[id]
  if from == nil then
    for _, inst in ipairs(live) do
      if inst.state == "ready" then from = inst.node break end
    end
  end
  if from ~= nil and from ~= to then placement_changed(id, sp, from, to) end
  S.assigned[id] = to
  S.reasons[id] = type(a) == "table" and a.reason or nil
  return sp
end

pass = function()
  if S == nil or S.closed then return end   -- a pass deferred before stop()
  S.scheduled = false
  local set = S.dirty
  if S.all then
    S.all = false
    for id in pairs(S.own) do set[id] = true end
    for _, id in ipairs(S.pg:groups(M.RUNNING)) do set[id] = true end
    for id, e in pairs(supervisor.entries) do if e.distributed then set[id] = true end end
  end
  -- At most PASS_MAX ids per loop iteration, so heartbeats and requests
  -- are served in between however many children there are.
  local ids = {}
  for id in pairs(set) do
    if #ids == M.PASS_MAX then schedule() break end
    ids[#ids + 1] = id
  end
  for _, id in ipairs(ids) do
    set[id] = nil
    if S.stale[id] then S.stale[id] = nil consider(id) end
  end
  if #ids == 0 then return end

  local all, eligible = live_nodes()
  local quorum = has_quorum()
  local key = table.concat(placement.names(all), ",")
  if key ~= S.view_key or (quorum and not S.quorum) then S.view_key, S.view_since = key, now() end
  S.quorum = quorum
  local view = {
    self = S.self, nodes = all, desired = {}, running = {}, assigned = {}, quorum = quorum,
    history = S.floors, now = now(),
  }
  local specs = {}
  for _, id in ipairs(ids) do
    view.running[id] = instances(id)
    if S.own[id] then specs[id] = describe(view, id, eligible) end
  end
  local actions, waiting = reconcile.decide(view)
  -- What each id waits for; a reason that stays keeps its first `since`.
  local before = {}
  for _, id in ipairs(ids) do before[id], S.waiting[id] = S.waiting[id], nil end
  for _, w in ipairs(waiting) do
    local old = before[w.id]
    S.waiting[w.id] = { reason = w.reason, since = old and old.reason == w.reason and old.since or w.since }
  end
  local starts = 0
  local held_by = hold_starts()
  for _, a in ipairs(actions) do
    if a.op == "start" or a.op == "replace" then starts = starts + 1 end
    if held_by and a.op == "start" then
      S.held[a.id] = true
      S.waiting[a.id] = { reason = "start held: " .. held_by, since = now() }
    elseif starts > M.STARTS_MAX then
      dirty(a.id)     -- decided again next iteration, after other events
    else
      local ok, err = xpcall(execute, debug.traceback, a, specs)
      if not ok then L.error("%s of child '%s' failed: %s", a.op, a.id, err) end
    end
  end
end

-- Events ------------------------------------------------------------------------------

local function on_desired(ev)
  if ev.node == S.self or ev.op ~= "join" then return end
  if valid_entry(ev.value) then
    if ev.value.c > S.clock then S.clock = ev.value.c end
    -- Every node re-advertises what it adopts: most joins carry the
    -- version this node already holds.
    if newer(ev.value, S.own[ev.group]) then
      S.stale[ev.group] = true
      dirty(ev.group)
    end
  else
    L.warn("ignoring a malformed desired entry for '%s' from %s", ev.group, ev.node)
  end
end

local function on_source(ev)
  if ev.op ~= "join" then return end
  local waiting = S.awaiting[ev.group]
  if not waiting then return end
  S.awaiting[ev.group] = nil
  for id in pairs(waiting) do
    S.stale[id] = true
    dirty(id)
  end
end

local function on_running(ev)
  local id = ev.group
  local v = ev.value
  if ev.op == "join" and type(v) == "table" and math.type(v.g) == "integer" then
    if v.g > (S.history[id] or 0) then S.history[id] = v.g end
    S.lost[id] = nil
  elseif ev.op == "leave" and ev.reason == "node down" then
    S.lost[id] = { node = ev.node, at = now() }
  end
  dirty(id)
end

local function on_message(from, msg)
  if msg.op == "restart" and type(msg.id) == "string" then
    local ok, err = supervisor.restart(msg.id)
    if not ok then L.warn("restart of '%s' asked by %s: %s", msg.id, from, err) end
  end
end

-- Start and stop ----------------------------------------------------------------------

--- Starts the distributed supervisor. opts: cluster (a pogo.cluster
--- instance), pg (its pg instance), budget, expect, lease, policy (path or nil).
function M.start(opts)
  S = {
    cluster = opts.cluster, pg = opts.pg, self = opts.cluster:self_name(), budget = opts.budget,
    expect = opts.expect, lease = opts.lease or 2,
    clock = 0, own = {}, sources = {}, refs = {}, awaiting = {}, mine = {}, advertised = {},
    markers = {}, history = {}, lost = {}, dirty = {}, all = false, scheduled = false,
    assigned = {}, reasons = {}, waiting = {}, up_set = {},
    policy = nil, policy_good = nil, policy_errors = {}, cancels = {},
    files = nil, synced = false, closed = false, stale = {}, jobs = {}, jobs_scheduled = false,
    held = {}, joined = false, started_at = loop.now(), adverts = {}, adverts_scheduled = false,
    epoch = 0, placed = {}, sweep_list = nil, sweep_at = 1, view_key = nil, view_since = loop.now(),
  }
  -- Generations: one more than any seen for the child, and never below the
  -- wall clock in milliseconds, so they keep growing across a restart of
  -- the whole cluster, which forgets what it saw.
  S.floors = setmetatable({}, { __index = function(_, id)
    return math.max(S.history[id] or 0, math.floor(loop.now() * 1000))
  end })
  S.fence_timer = function(left)
    if S.fence_at and S.fence_at <= now() + left then return end
    if S.fence_t then S.fence_t:close() end
    S.fence_at = now() + left
    S.fence_t = loop.timer(left + 0.01, 0, function() S.fence_t, S.fence_at = nil, nil all_dirty() end)
  end
  for _, name in ipairs(S.cluster:up_nodes()) do S.up_set[name] = true end
  supervisor.on_change = on_local_change
  supervisor.spawn_gate = function(e)
    if not (e.distributed and e.spec.partition == "quorum") then return nil end
    if not has_quorum() then return "quorum child on a node without quorum" end
    proc.watchdog_lease(S.lease)
    return nil
  end
  S.renew = loop.timer(M.RENEW, M.RENEW, function()
    local q = has_quorum()
    if q then proc.watchdog_lease(S.lease) end
    if S.expect and q ~= S.quorum then
      L.warn("%s quorum (%d of %s nodes heard from)", q and "gained" or "lost",
        S.cluster:fresh(M.FRESH), tostring(S.expect))
      all_dirty()
    end
  end)
  local c = S.cancels
  c[#c + 1] = S.pg:monitor(M.DESIRED, nil, on_desired)
  c[#c + 1] = S.pg:monitor(M.SOURCES, nil, on_source)
  c[#c + 1] = S.pg:monitor(M.RUNNING, nil, on_running)
  local function changed() S.epoch = S.epoch + 1 all_dirty() end
  c[#c + 1] = S.cluster:on("up", function(node) S.up_set[node.name] = true changed() end)
  c[#c + 1] = S.cluster:on("down", function(node) S.up_set[node.name] = nil changed() end)
  c[#c + 1] = S.cluster:on("meta", changed)
  S.cluster:handle(M.KIND, on_message)
  M.set_policy(opts.policy)
  S.ticker = loop.timer(M.SWEEP_TICK, M.SWEEP_TICK, sweep)
  -- Our own spec files wait until the peers' state has arrived, so an
  -- unchanged file does not re-request what the cluster already has.
  local started = now()
  S.sync_timer = loop.timer(0.05, 0.05, function()
    local st = S.pg:status()
    local busy = false
    for _, p in pairs(st.peers) do if p.receiving then busy = true end end
    local alone = #S.cluster:up_nodes() == 1 and opts.seeds and #opts.seeds > 0
    if now() - started >= M.SYNC_WAIT or (not busy and not alone) then
      S.sync_timer:close()
      S.sync_timer = nil
      S.synced = true
      if S.files then M.apply_files(S.files.desired, S.files.files) end
    end
  end)
  return true
end

function M.running() return S ~= nil and not S.closed end

function M.close()
  if not S then return end
  S.closed = true
  for _, cancel in ipairs(S.cancels) do cancel() end
  S.cluster:handle(M.KIND, nil)
  for _, t in pairs(S.markers) do t:close() end
  for _, name in ipairs { "ticker", "sync_timer", "fence_t", "drain_timer", "renew", "hold_t" } do
    if S[name] then S[name]:close() end
  end
  supervisor.on_change, supervisor.spawn_gate = nil, nil
  S = nil
end

-- Policy ------------------------------------------------------------------------------

--- Loads the placement policy file (nil: the default policy). A broken file
--- keeps the policy in force. Returns true | nil, err.
function M.set_policy(path)
  if not path then
    S.policy, S.policy_good = nil, nil
  else
    local p, err = placement.load(path, { budget = S.budget })
    if not p then
      S.policy_err = err
      L.error("%s (keeping the previous placement policy)", err)
      return nil, err
    end
    S.policy_err = nil
    if S.policy and S.policy.digest == p.digest then return true end
    S.policy_good = S.policy
    S.policy = p
    L.info("placement policy %s loaded (digest %s)", path, p.digest)
  end
  S.policy_errors = {}
  S.epoch = S.epoch + 1
  local meta = S.cluster:self().meta or {}
  local d = S.policy and S.policy.digest or "default"
  if meta.policy ~= d then
    meta.policy = d
    S.cluster:set_meta(meta)
  end
  all_dirty()
  return true
end

--- true | false, the error of the last load of the policy file.
function M.policy_error() return S.policy_err == nil, S.policy_err end

-- Requests ----------------------------------------------------------------------------

--- The children directory changed: desired (id -> spec) and files (path ->
--- { src = text }). New and changed children are start requests; children
--- gone from the directory are stop requests.
function M.apply_files(desired, files)
  if not S.synced then
    S.files = { desired = desired, files = files }
    return
  end
  local by_file = {}
  for _, sp in pairs(desired) do
    local list = by_file[sp.file] or {}
    list[#list + 1] = sp
    by_file[sp.file] = list
  end
  for path, list in pairs(by_file) do
    table.sort(list, function(a, b) return a.id < b.id end)
    request_specs(list, files[path].src, path)
  end
  local stops = {}
  for id in pairs(S.dir_ids or {}) do
    if not desired[id] then
      stops[#stops + 1] = function()
        local cur = S.own[id]
        if cur and not cur.stop then
          request(id, { stop = true, src = cur.src, name = cur.name, fp = cur.fp })
        end
      end
    end
  end
  if #stops > 0 then
    L.info("stop requests for %d children gone from the children directory", #stops)
    queue(stops)
  end
  S.dir_ids = {}
  for id in pairs(desired) do S.dir_ids[id] = true end
end

--- Start requests for specs (from a file or a table). text/name: the
--- source. Returns the ids; done() once the requests are all made.
function M.start_specs(specs, text, name, done)
  return request_specs(specs, text, name, done)
end

--- A start request for a known child that was stopped.
function M.start_id(id)
  local cur = S.own[id]
  if not cur then return nil, ("no child '%s'"):format(tostring(id)) end
  if not cur.stop then return nil, ("child '%s' is already started"):format(id) end
  request(id, { src = cur.src, name = cur.name, fp = cur.fp })
  return true
end

function M.stop_id(id)
  local cur = S.own[id]
  if not cur then return nil, ("no child '%s'"):format(tostring(id)) end
  if cur.stop then return nil, ("child '%s' is not running"):format(id) end
  request(id, { stop = true, src = cur.src, name = cur.name, fp = cur.fp })
  return true
end

--- Restarts a child where it runs (this node or another).
function M.restart_id(id)
  if not S.own[id] or S.own[id].stop then return nil, ("no child '%s' is running"):format(tostring(id)) end
  for _, inst in ipairs(instances(id)) do
    if inst.state ~= "stopping" then
      if inst.node == S.self then return supervisor.restart(id) end
      return S.cluster:send(inst.node, { t = M.KIND, op = "restart", id = id })
    end
  end
  return nil, ("child '%s' is not running anywhere"):format(id)
end

-- Views -------------------------------------------------------------------------------

local function row(id, entry, inst)
  local t = now()
  return {
    id = id, node = inst and inst.node, state = inst and inst.state or (entry.stop and "stopped" or "pending"),
    pid = inst and inst.pid, generation = inst and inst.generation, restarts = inst and inst.restarts,
    uptime = inst and inst.started and inst.pid and (t - inst.started) or nil,
    reason = not inst and (S.waiting[id] and S.waiting[id].reason or S.reasons[id]) or nil,
  }
end

--- Every child of the cluster, one row per instance (a child without one
--- has a row with state "pending" or "stopped"), sorted by id then node.
--- opts.match: a Lua pattern on the id.
function M.children(opts)
  opts = opts or {}
  local rows = {}
  local ids = {}
  for id in pairs(S.own) do ids[#ids + 1] = id end
  table.sort(ids)
  for _, id in ipairs(ids) do
    if not opts.match or id:find(opts.match) then
      local entry = S.own[id]
      local insts = instances(id)
      if #insts == 0 then
        rows[#rows + 1] = row(id, entry, nil)
      else
        for _, inst in ipairs(insts) do rows[#rows + 1] = row(id, entry, inst) end
      end
    end
  end
  return rows
end

--- The node where child id runs and is ready, or nil.
function M.where(id)
  for _, inst in ipairs(instances(id)) do
    if inst.state == "ready" and (inst.node == S.self or S.up_set[inst.node]) then return inst.node end
  end
  return nil
end

--- Why a child is where it is: the request, the policy's inputs and
--- answer, the instances, and what this node is waiting for.
function M.explain(id)
  local entry = S.own[id]
  if not entry then return nil, ("no child '%s'"):format(tostring(id)) end
  local out = {
    id = id,
    request = { version = ("%d@%s"):format(entry.c, entry.n), stopped = entry.stop or false,
      source = entry.name, fp = entry.fp },
    instances = instances(id),
    waiting = S.waiting[id],
    quorum = S.quorum,
  }
  local sp, err = spec_of(id, entry)
  if not sp then
    out.error = err
    return out
  end
  local _, eligible = live_nodes()
  out.partition, out.handoff, out.tags = sp.partition, sp.handoff, sp.tags
  out.placement = placement.explain(S.policy or placement.DEFAULT, sp, eligible)
  out.nodes = placement.names(eligible)
  out.assigned = S.assigned[id]
  out.pending = S.reasons[id]
  return out
end

--- What would move if the policy in file were loaded: { { id, from, to } }
--- sorted by id (from: where the policy in force places it), or nil, err.
function M.preview(path)
  local new, err = placement.load(path, { budget = S.budget })
  if not new then return nil, err end
  local _, eligible = live_nodes()
  local children = {}
  for id, entry in pairs(S.own) do
    if not entry.stop then
      local sp = spec_of(id, entry)
      if sp then children[#children + 1] = sp end
    end
  end
  return placement.preview(S.policy or placement.DEFAULT, new, children, eligible)
end

-- Drain -------------------------------------------------------------------------------

local function local_count()
  local n = 0
  for _, e in pairs(supervisor.entries) do
    if e.distributed and e.rec.state ~= "stopped" then n = n + 1 end
  end
  return n
end

--- Hands this node's children to the others (it advertises draining, so
--- placement skips it; the moves are make-before-break), then calls
--- done(handed_over, left_here). With no other node up, nothing can move:
--- done is called at once. timeout bounds the wait.
function M.drain(timeout, done)
  S.draining = true
  local meta = S.cluster:self().meta or {}
  meta.draining = true
  S.cluster:set_meta(meta)
  all_dirty()
  local t0 = now()
  local before = local_count()
  if #S.cluster:up_nodes() <= 1 then done(0, before) return end
  L.info("draining %d children to the other nodes", before)
  -- Nobody to hand over to once every other node drains too (a whole
  -- cluster stopped at once): then stop here without waiting.
  local function takers()
    for _, n in ipairs(S.cluster:nodes()) do
      if not n.self and n.state == "up" and not (n.meta and n.meta.draining) then return true end
    end
    return false
  end
  S.drain_timer = loop.timer(0.02, 0.02, function()
    local left = local_count()
    if left == 0 or now() - t0 >= timeout or not takers() then
      S.drain_timer:close()
      S.drain_timer = nil
      if left > 0 then
        L.warn("drain ends with %d children still here: %s", left,
          takers() and "timed out" or "no other node takes children")
      end
      done(before - left, left)
    end
  end)
end

return M
