-- pogo.reconcile: the decision function of the distributed supervisor.
-- Pure Lua, no I/O, no clock, no globals: the agent builds a view from the
-- replicated state (pogo.pg), calls decide(view) and executes the returned
-- actions for its own node. There is no leader: every node looks at the
-- same replicated state and decides only about its own processes; the
-- rules below are written so that nodes that decide independently from
-- equal views converge to one instance per child.
--
--   local reconcile = require "pogo.reconcile"
--   local actions, waiting = reconcile.decide(view)
--
-- View (plain tables, never modified)
--   self      this node's name
--   nodes     sorted list of live, connected nodes: names or { name=, meta= }
--   desired   id -> entry, or id -> list of entries (the winner is chosen
--             here, see winner()); entry = { spec =, version = { clock =,
--             node = }, stopped = true|nil, fp = digest|nil }. spec is
--             normalised: spec.id,
--             spec.partition = "available" | "quorum", spec.handoff =
--             "make_before_break" | "stop_first".
--   running   id -> list of instances advertised in pg by every node,
--             ours included: { node =, generation =, state = "starting" |
--             "running" | "ready" | "stopping" | "failed", version = {
--             clock, node } (the spec version it runs), fp = the digest of
--             that spec or nil, home = bool (its node believed it was the
--             assigned node, see claim below) }. A failed instance gave up
--             after its restart intensity: it neither counts as a copy nor
--             blocks one elsewhere, and is dropped once the assigned node
--             runs the child.
--   assigned  id -> node name | { node = name|nil, reason = string }: the
--             placement answer, computed by the caller with the policy.
--             Placement stays out of this module.
--   quorum    bool: this side sees a majority of the expected cluster
--   history   optional, id -> highest generation this node ever used
--   now       passed through to the waiting entries (`since`)
--
-- Versions. The winner for an id is the entry with the highest (clock,
-- node) pair; two entries with the same pair are the same request. A stop
-- request is an entry with stopped = true and its own version, so a later
-- start beats it and vice versa. A requester uses clock = 1 + the highest
-- clock it has seen (Lamport).
--
-- Actions, for view.self only, sorted by (id, op, generation); ops in the
-- order stop, replace, claim, start:
--   { op = "stop",    id =, generation =, reason = }  stop the local copy
--   { op = "replace", id =, generation = new, old =, version =, reason = }
--       the spec version changed for a child running here: restart it
--       locally with the new spec and the new generation
--   { op = "claim",   id =, generation =, home = bool, reason = }
--       re-advertise the local instance with this home flag
--   { op = "start",   id =, generation =, version =, reason = }
--       start here, advertised with home = true
-- Waiting: list of { id =, reason =, since = view.now } sorted by id, what
-- the decision waits for (for `pogo explain`).
--
-- "Active" instances are those neither stopping nor failed; "up" ones are
-- running or ready.
--
-- Rules, per id, in this order of precedence:
--  (5) Not desired (no entry, or the winner is stopped): stop local copies.
--  (6) partition = "quorum" and quorum is false: never start; stop local
--      copies (the fence). A quorum child always moves stop_first. How long the majority waits before it starts is
--      the agent's timing argument (lease/fence time), not this function's.
--  (7) assigned = nil: nothing runs it; stop local copies; explain
--      "pending: <reason>".
--  (4) Duplicates: when more than one instance is up, the keeper is chosen
--      from replicated data only, so every node computes the same one: among
--      the up instances whose node claims to be the assigned one (home),
--      else among all up instances: the highest generation, then the lowest
--      node name. Each node stops its own non-keepers. It does not read
--      `assigned`, so it holds even when nodes disagree on placement.
--  (3) Running here, assigned to another node A: stop at once if A is not in
--      nodes or handoff = "stop_first"; otherwise (make-before-break) only
--      once A reports an up instance, and only if rule 4 would not keep
--      this copy (else A stops its own and none is left): withdraw the home
--      claim first. Until then: wait.
--  (2) Assigned here, active elsewhere: with stop_first, wait until no other
--      instance exists (stopping ones included). If another active instance
--      claims home, its node believes it is assigned: the nodes disagree on
--      placement, so wait rather than ping-pong (rule 4 already guarantees a
--      single survivor). Otherwise start here (make-before-break).
--  (1) Assigned here, not running anywhere: start.
--   Kept local instance (assigned here, or waiting to hand over): its home
--   flag is re-claimed when it differs from (assigned == self), and it is
--   replaced when its spec differs from the winner's: by fp when both carry
--   one (a new version of an equal spec restarts nothing), else by version.
--   A local copy that is stopping blocks a new local start (wait).
--
-- What the agent must advertise. An instance's pg value carries generation,
-- state, version and home; home starts true (a node only starts what it is
-- assigned) and follows the claim actions. The home flag is how "keep the
-- copy on the assigned node" stays a function of replicated data: when the
-- nodes disagree on placement several copies claim home and the generation
-- decides, so there is never a permanent duplicate. Disagreement can leave
-- a child where it is, or (if every node assigns it to another one) not
-- started, until the policies agree; the waiting list says so.
--
-- Generations: a start or replace uses 1 + the highest generation of that id
-- in running and in view.history. Two sides of a partition may pick the same
-- number; (generation, node) is unique, and is the order rule 4 uses.

local M = {}

local OP_RANK = { stop = 1, replace = 2, claim = 3, start = 4 }

-- Versions --------------------------------------------------------------------

-- Is version a newer than version b? (nil is older than anything.)
function M.newer(a, b)
  if a == nil then return false end
  if b == nil then return true end
  if a.clock ~= b.clock then return a.clock > b.clock end
  return a.node > b.node
end

function M.same_version(a, b)
  if a == nil or b == nil then return a == b end
  return a.clock == b.clock and a.node == b.node
end

-- The winning entry of a list of entries (or of a single entry).
function M.winner(entries)
  if entries == nil then return nil end
  if entries.version ~= nil or entries.spec ~= nil or entries.stopped ~= nil then
    return entries
  end
  local best
  for _, e in ipairs(entries) do
    if best == nil or M.newer(e.version, best.version) then best = e end
  end
  return best
end

-- Helpers ---------------------------------------------------------------------

local function is_up(inst) return inst.state == "running" or inst.state == "ready" end
local function is_active(inst) return inst.state ~= "stopping" and inst.state ~= "failed" end

-- (generation, node) order: is a preferred to b as a keeper?
local function better(a, b)
  local ga, gb = a.generation or 0, b.generation or 0
  if ga ~= gb then return ga > gb end
  return a.node < b.node
end

-- The keeper among the up instances of an id (rule 4), or nil if fewer
-- than two are up. Reads only replicated data.
function M.keeper(instances)
  local up, homes = {}, {}
  for _, inst in ipairs(instances or {}) do
    if is_up(inst) then
      up[#up + 1] = inst
      if inst.home then homes[#homes + 1] = inst end
    end
  end
  if #up < 2 then return nil end
  local pool = #homes > 0 and homes or up
  local best = pool[1]
  for i = 2, #pool do
    if better(pool[i], best) then best = pool[i] end
  end
  return best
end

local function node_set(nodes)
  local set = {}
  for _, n in ipairs(nodes or {}) do
    if type(n) == "table" then set[n.name] = true else set[n] = true end
  end
  return set
end

local function assignment(a)
  if type(a) == "table" then return a.node, a.reason end
  return a, nil
end

local function next_generation(id, instances, history)
  local g = history and history[id] or 0
  for _, inst in ipairs(instances) do
    if (inst.generation or 0) > g then g = inst.generation end
  end
  return g + 1
end

local function sorted_keys(...)
  local seen, keys = {}, {}
  for i = 1, select("#", ...) do
    for k in pairs(select(i, ...) or {}) do
      if not seen[k] then seen[k] = true; keys[#keys + 1] = k end
    end
  end
  table.sort(keys)
  return keys
end

-- One id ----------------------------------------------------------------------

local function decide_one(view, id, live, out, wait)
  local self = view.self
  local entry = M.winner((view.desired or {})[id])
  local spec = entry and entry.spec or {}
  -- Instances on nodes we cannot see are gone as far as we know.
  local instances, locals, others = {}, {}, {}
  for _, inst in ipairs((view.running or {})[id] or {}) do
    if inst.node == self then
      instances[#instances + 1] = inst
      locals[#locals + 1] = inst
    elseif live[inst.node] then
      instances[#instances + 1] = inst
      others[#others + 1] = inst
    end
  end

  local function stop_all(reason)
    for _, inst in ipairs(locals) do
      if inst.state ~= "stopping" then
        out[#out + 1] = { op = "stop", id = id, generation = inst.generation, reason = reason }
      end
    end
  end

  -- (5) not desired
  if entry == nil or entry.stopped then
    stop_all(entry and "stopped by request" or "not desired")
    return
  end
  -- (6) quorum fence
  if spec.partition == "quorum" and not view.quorum then
    stop_all("fence: no quorum")
    wait(id, "quorum: this side does not see a majority")
    return
  end
  -- (7) no eligible node
  local target, why = assignment((view.assigned or {})[id])
  if target == nil then
    why = "pending: " .. (why or "no eligible node")
    stop_all(why)
    wait(id, why)
    return
  end

  local function replace_if_old(inst)
    local changed
    if inst.fp ~= nil and entry.fp ~= nil then
      changed = inst.fp ~= entry.fp
    else
      changed = inst.version ~= nil and not M.same_version(inst.version, entry.version)
    end
    if changed then
      out[#out + 1] = { op = "replace", id = id, old = inst.generation,
        generation = next_generation(id, instances, view.history), version = entry.version,
        reason = "spec version changed" }
    end
  end

  -- A quorum child never has two copies, not even while it moves.
  local stop_first = spec.handoff == "stop_first" or spec.partition == "quorum"
  local keeper = M.keeper(instances)
  local kept_here = false
  for _, inst in ipairs(locals) do
    if is_active(inst) then
      if keeper and is_up(inst) and inst ~= keeper then
        -- (4) duplicate, not the keeper
        out[#out + 1] = { op = "stop", id = id, generation = inst.generation,
          reason = "duplicate: keeping " .. keeper.node .. " generation " .. tostring(keeper.generation) }
      elseif target ~= self then
        -- (3) assigned elsewhere
        local target_up = false
        for _, o in ipairs(others) do
          if o.node == target and is_up(o) then target_up = true end
        end
        if not live[target] then
          out[#out + 1] = { op = "stop", id = id, generation = inst.generation,
            reason = "assigned to " .. target .. ", which is not connected" }
        elseif stop_first then
          out[#out + 1] = { op = "stop", id = id, generation = inst.generation,
            reason = "stop_first: assigned to " .. target }
        elseif target_up and keeper ~= inst then
          out[#out + 1] = { op = "stop", id = id, generation = inst.generation,
            reason = "moved: " .. target .. " reports it running" }
        else
          -- Waiting for the target; or the target runs it too but rule 4
          -- would keep this copy (it claims home with a higher
          -- generation): the target's node then stops its own copy, so
          -- stopping here as well would leave none. Withdraw the claim
          -- first; the keeper is the target's copy once that is seen.
          kept_here = true
          if inst.home then
            out[#out + 1] = { op = "claim", id = id, generation = inst.generation, home = false,
              reason = "assigned to " .. target }
          end
          wait(id, target_up and ("handing over to " .. target .. ": withdrawing the home claim first")
            or ("make-before-break: waiting for " .. target .. " to report it running"))
          replace_if_old(inst)
        end
      else
        -- assigned here and kept
        kept_here = true
        if not inst.home then
          out[#out + 1] = { op = "claim", id = id, generation = inst.generation, home = true,
            reason = "assigned here" }
        end
        replace_if_old(inst)
      end
    end
  end
  if target ~= self then
    -- A copy that failed here is dropped once the assigned node runs it.
    for _, inst in ipairs(locals) do
      if inst.state == "failed" then
        for _, o in ipairs(others) do
          if o.node == target and is_up(o) then
            out[#out + 1] = { op = "stop", id = id, generation = inst.generation,
              reason = "failed here; " .. target .. " runs it" }
            break
          end
        end
      end
    end
  end
  if kept_here or target ~= self then
    if target ~= self and not kept_here then
      local up = false
      for _, o in ipairs(others) do if is_up(o) then up = true end end
      if not up then wait(id, "assigned to " .. target) end
    end
    return
  end

  -- Assigned here, no active local copy: rules (2) and (1).
  for _, inst in ipairs(locals) do
    if inst.state == "failed" then
      wait(id, "failed here: retried after its cool-down")
      return
    elseif not is_active(inst) then
      wait(id, "waiting for the local copy to stop")
      return
    end
  end
  if stop_first and #others > 0 then
    wait(id, "stop_first: waiting for " .. others[1].node .. " to stop it")
    return
  end
  for _, o in ipairs(others) do
    if is_active(o) and o.home then
      wait(id, "placement disagreement: " .. o.node .. " also claims it")
      return
    end
  end
  local moving = nil
  for _, o in ipairs(others) do
    if is_active(o) then moving = o.node; break end
  end
  out[#out + 1] = { op = "start", id = id, generation = next_generation(id, instances, view.history),
    version = entry.version,
    reason = moving and ("make-before-break: moving from " .. moving) or "assigned here" }
end

-- Decide ----------------------------------------------------------------------

function M.decide(view)
  assert(type(view) == "table" and type(view.self) == "string", "view.self required")
  local live = node_set(view.nodes)
  local out, waiting = {}, {}
  local function wait(id, reason)
    waiting[#waiting + 1] = { id = id, reason = reason, since = view.now }
  end
  for _, id in ipairs(sorted_keys(view.desired, view.running)) do
    decide_one(view, id, live, out, wait)
  end
  table.sort(out, function(a, b)
    if a.id ~= b.id then return a.id < b.id end
    if a.op ~= b.op then return OP_RANK[a.op] < OP_RANK[b.op] end
    return (a.generation or 0) < (b.generation or 0)
  end)
  return out, waiting
end

return M
