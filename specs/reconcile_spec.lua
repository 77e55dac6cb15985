local reconcile = require "pogo.reconcile"

-- Unit specs per rule, then a deterministic simulation (#sim).

local function spec(id, t)
  t = t or {}
  return { id = id, partition = t.partition or "available", handoff = t.handoff or "make_before_break",
    cmd = t.cmd or "run" }
end

local function want(id, clock, node, t)
  return { spec = spec(id, t), version = { clock = clock or 1, node = node or "a" } }
end

local function inst(node, gen, state, t)
  t = t or {}
  return { node = node, generation = gen, state = state or "running", home = t.home,
    version = t.version }
end

-- A view for node `self` over nodes a, b, c with quorum.
local function view(self, t)
  return {
    self = self,
    nodes = t.nodes or { "a", "b", "c" },
    desired = t.desired or {},
    running = t.running or {},
    assigned = t.assigned or {},
    quorum = t.quorum ~= false,
    history = t.history,
    now = 0,
  }
end

local function ops(actions)
  local s = {}
  for _, a in ipairs(actions) do s[#s + 1] = a.op .. ":" .. a.id .. (a.generation and ("@" .. a.generation) or "") end
  return table.concat(s, " ")
end

local function reason_of(waiting, id)
  for _, w in ipairs(waiting) do if w.id == id then return w.reason end end
end

describe("pogo.reconcile", function()
  describe("versions", function()
    it("orders by clock, then node name", function()
      assert.is_true(reconcile.newer({ clock = 2, node = "a" }, { clock = 1, node = "z" }))
      assert.is_true(reconcile.newer({ clock = 1, node = "b" }, { clock = 1, node = "a" }))
      assert.is_false(reconcile.newer({ clock = 1, node = "a" }, { clock = 1, node = "a" }))
      assert.is_true(reconcile.newer({ clock = 1, node = "a" }, nil))
    end)

    it("lets a later stop beat a start and a later start beat a stop", function()
      local start = want("x", 1, "a")
      local stop = { spec = spec("x"), version = { clock = 2, node = "b" }, stopped = true }
      local again = want("x", 3, "a")
      assert.equal(stop, reconcile.winner({ start, stop }))
      assert.equal(again, reconcile.winner({ stop, again, start }))
    end)
  end)

  describe("rule 1: assigned here, running nowhere", function()
    it("starts with a generation above running and history", function()
      local acts, waiting = reconcile.decide(view("a", {
        desired = { x = want("x") }, assigned = { x = "a" }, history = { x = 7 } }))
      assert.equal("start:x@8", ops(acts))
      assert.same({ clock = 1, node = "a" }, acts[1].version)
      assert.same({}, waiting)
    end)

    it("accepts a list of desired entries and picks the winner", function()
      local stop = { spec = spec("x"), version = { clock = 2, node = "b" }, stopped = true }
      local acts = reconcile.decide(view("a", { desired = { x = { want("x", 1), stop } }, assigned = { x = "a" } }))
      assert.equal("", ops(acts))
      acts = reconcile.decide(view("a", { desired = { x = { want("x", 3), stop } }, assigned = { x = "a" } }))
      assert.equal("start:x@1", ops(acts))
    end)

    it("does nothing on the other nodes", function()
      local acts, waiting = reconcile.decide(view("b", { desired = { x = want("x") }, assigned = { x = "a" } }))
      assert.equal("", ops(acts))
      assert.equal("assigned to a", reason_of(waiting, "x"))
    end)
  end)

  describe("rule 2: assigned here, running elsewhere", function()
    it("starts here first (make-before-break)", function()
      local acts = reconcile.decide(view("a", { desired = { x = want("x") }, assigned = { x = "a" },
        running = { x = { inst("b", 4) } } }))
      assert.equal("start:x@5", ops(acts))
      assert.matches("moving from b", acts[1].reason)
    end)

    it("waits for the other copy to go with stop_first", function()
      local v = view("a", { desired = { x = want("x", 1, "a", { handoff = "stop_first" }) }, assigned = { x = "a" },
        running = { x = { inst("b", 4, "stopping") } } })
      local acts, waiting = reconcile.decide(v)
      assert.equal("", ops(acts))
      assert.matches("stop_first", reason_of(waiting, "x"))
      v.running = {}
      assert.equal("start:x@1", ops((reconcile.decide(v))))
    end)

    it("waits when the other node claims it too (placement disagreement)", function()
      local acts, waiting = reconcile.decide(view("a", { desired = { x = want("x") }, assigned = { x = "a" },
        running = { x = { inst("b", 4, "running", { home = true }) } } }))
      assert.equal("", ops(acts))
      assert.matches("disagreement", reason_of(waiting, "x"))
    end)

    it("waits for a local copy that is still stopping", function()
      local acts, waiting = reconcile.decide(view("a", { desired = { x = want("x") }, assigned = { x = "a" },
        running = { x = { inst("a", 2, "stopping") } } }))
      assert.equal("", ops(acts))
      assert.matches("local copy", reason_of(waiting, "x"))
    end)
  end)

  describe("rule 3: running here, assigned elsewhere", function()
    local function v3(state_b, t)
      t = t or {}
      local running = { inst("a", 1, "ready", { home = t.home }) }
      if state_b then running[2] = inst("b", 2, state_b, { home = true }) end
      return view("a", { desired = { x = want("x", 1, "a", t) }, assigned = { x = "b" },
        running = { x = running }, nodes = t.nodes })
    end

    it("keeps the copy until the assigned node reports it running", function()
      local acts, waiting = reconcile.decide(v3(nil))
      assert.equal("", ops(acts))
      assert.matches("make%-before%-break", reason_of(waiting, "x"))
      assert.equal("", ops((reconcile.decide(v3("starting")))))
      assert.equal("stop:x@1", ops((reconcile.decide(v3("running")))))
      assert.equal("stop:x@1", ops((reconcile.decide(v3("ready")))))
    end)

    it("withdraws its home claim while it waits", function()
      local acts = reconcile.decide(v3(nil, { home = true }))
      assert.equal("claim:x@1", ops(acts))
      assert.is_false(acts[1].home)
    end)

    it("stops at once with stop_first", function()
      assert.equal("stop:x@1", ops((reconcile.decide(v3(nil, { handoff = "stop_first" })))))
    end)

    it("stops at once when the assigned node is not connected", function()
      assert.equal("stop:x@1", ops((reconcile.decide(v3(nil, { nodes = { "a", "c" } })))))
    end)
  end)

  describe("rule 4: duplicates", function()
    local function stops(self, running, assigned)
      return ops((reconcile.decide(view(self, { desired = { x = want("x") }, assigned = { x = assigned },
        running = { x = running } }))))
    end

    it("keeps the copy on the assigned node", function()
      local running = { inst("a", 9, "running"), inst("b", 3, "running", { home = true }) }
      assert.equal("stop:x@9", stops("a", running, "b"))
      assert.equal("", stops("b", running, "b"))
    end)

    it("keeps the highest generation when nobody or everybody claims it", function()
      local running = { inst("a", 3, "running", { home = true }), inst("b", 5, "ready", { home = true }),
        inst("c", 4, "running") }
      -- a and b disagree on the placement; c ignores both answers.
      assert.equal("stop:x@3", stops("a", running, "a"))
      assert.equal("", stops("b", running, "b"))
      assert.equal("stop:x@4", stops("c", running, "c"))
    end)

    it("breaks equal generations by the lowest node name", function()
      local running = { inst("b", 5, "running"), inst("c", 5, "running") }
      assert.equal("", stops("b", running, "a"))
      assert.equal("stop:x@5", stops("c", running, "a"))
    end)

    it("ignores copies that are still starting", function()
      local running = { inst("a", 1, "running"), inst("b", 2, "starting", { home = true }) }
      assert.equal("", stops("a", running, "b"))
    end)

    it("converges to one instance when every node has its own assigned map", function()
      -- Both a and b think they are assigned, c thinks it is c: round by round.
      local mine = { a = "a", b = "b", c = "c" }
      local running = {}
      for _ = 1, 6 do
        local starts, stopped = {}, {}
        for _, n in ipairs({ "a", "b", "c" }) do
          local acts = reconcile.decide(view(n, { desired = { x = want("x") }, assigned = { x = mine[n] },
            running = { x = running } }))
          for _, a in ipairs(acts) do
            if a.op == "start" then starts[#starts + 1] = inst(n, a.generation, "starting", { home = true })
            elseif a.op == "stop" then stopped[n .. a.generation] = true end
          end
        end
        local nxt = {}
        for _, i in ipairs(running) do
          if not stopped[i.node .. i.generation] then
            nxt[#nxt + 1] = inst(i.node, i.generation, "running", { home = i.home })
          end
        end
        for _, i in ipairs(starts) do nxt[#nxt + 1] = i end
        running = nxt
      end
      assert.equal(1, #running)
      assert.equal("a", running[1].node)   -- equal generations 1: lowest name
    end)
  end)

  describe("rule 5: not desired", function()
    it("stops local copies of a removed or stopped child", function()
      local running = { x = { inst("a", 1) }, y = { inst("a", 2), inst("b", 3) } }
      local acts = reconcile.decide(view("a", { running = running,
        desired = { y = { spec = spec("y"), version = { clock = 2, node = "c" }, stopped = true } } }))
      assert.equal("stop:x@1 stop:y@2", ops(acts))
      assert.equal("not desired", acts[1].reason)
      assert.equal("stopped by request", acts[2].reason)
    end)

    it("leaves stopping copies alone", function()
      assert.equal("", ops((reconcile.decide(view("a", { running = { x = { inst("a", 1, "stopping") } } })))))
    end)
  end)

  describe("rule 6: quorum", function()
    it("never starts without quorum and fences local copies", function()
      local q = want("x", 1, "a", { partition = "quorum" })
      local acts, waiting = reconcile.decide(view("a", { desired = { x = q }, assigned = { x = "a" }, quorum = false }))
      assert.equal("", ops(acts))
      assert.matches("quorum", reason_of(waiting, "x"))
      acts = reconcile.decide(view("a", { desired = { x = q }, assigned = { x = "a" }, quorum = false,
        running = { x = { inst("a", 1) } } }))
      assert.equal("stop:x@1", ops(acts))
      assert.matches("fence", acts[1].reason)
    end)

    it("does not fence available children", function()
      local acts = reconcile.decide(view("a", { desired = { x = want("x") }, assigned = { x = "a" }, quorum = false }))
      assert.equal("start:x@1", ops(acts))
    end)
  end)

  describe("rule 7: no eligible node", function()
    it("runs it nowhere and explains why", function()
      local acts, waiting = reconcile.decide(view("a", { desired = { x = want("x") },
        assigned = { x = { node = nil, reason = "no node has tag gpu" } }, running = { x = { inst("a", 1) } } }))
      assert.equal("stop:x@1", ops(acts))
      assert.equal("pending: no node has tag gpu", reason_of(waiting, "x"))
    end)
  end)

  describe("replace and claims", function()
    it("replaces a local copy running an older spec version", function()
      local acts = reconcile.decide(view("a", { desired = { x = want("x", 2, "b") }, assigned = { x = "a" },
        running = { x = { inst("a", 3, "ready", { home = true, version = { clock = 1, node = "a" } }) } } }))
      assert.equal("replace:x@4", ops(acts))
      assert.equal(3, acts[1].old)
      assert.same({ clock = 2, node = "b" }, acts[1].version)
    end)

    it("claims home for a kept copy assigned here", function()
      local acts = reconcile.decide(view("a", { desired = { x = want("x") }, assigned = { x = "a" },
        running = { x = { inst("a", 3, "ready", { version = { clock = 1, node = "a" } }) } } }))
      assert.equal("claim:x@3", ops(acts))
      assert.is_true(acts[1].home)
    end)

    it("sorts actions by id, then op", function()
      local acts = reconcile.decide(view("a", {
        desired = { b = want("b"), a = want("a"), c = want("c") },
        assigned = { a = "a", b = "a", c = "a" },
        running = { a = { inst("a", 1, "ready", { home = true, version = { clock = 0, node = "a" } }) },
          z = { inst("a", 1) } } }))
      assert.equal("replace:a@2 start:b@1 start:c@1 stop:z@1", ops(acts))
    end)
  end)
end)

-- Simulation -------------------------------------------------------------------
--
-- N virtual nodes (3-7) in one Lua state. Each node holds a store of desired
-- entries (what it has learned; the agent republishes what it learns, so an
-- entry outlives its requester) and its own instances. A node's view is the
-- union of what the nodes it is connected to advertise: connected = both
-- alive and on the same side of the current partition. Placement is
-- rendezvous hashing by id over the node's visible nodes (FNV-1a below);
-- in "disagree" mode every node salts the hash differently.
--
-- A round: starting instances become running; stores merge within each
-- side; every live node decides from its view; then all stops are applied
-- (the process is gone at once), then claims, replaces and starts. Stops
-- before starts is how the simulation models the fence time: the minority
-- has stopped its quorum children before the majority starts them. The real
-- timing argument (lease, fence time, watchdog) is the agent's job.
--
-- After each random event, rounds run until one produces no action and
-- leaves nothing starting ("quiet"), at most MAX_ROUNDS. Invariants are
-- checked after every phase of every round and at quiet.

local MAX_ROUNDS = 12
local IDS = { "c1", "c2", "c3", "c4", "c5", "c6" }

local function fnv(s)
  local h = 2166136261
  for i = 1, #s do
    h = ((h ~ s:byte(i)) * 16777619) & 0xffffffff
  end
  return h
end

-- A small deterministic generator (LCG), independent of math.random.
local function rng(seed)
  local state = seed & 0x7fffffff
  return function(n)
    state = (state * 1103515245 + 12345) & 0x7fffffff
    return (state >> 8) % n + 1
  end
end

local function new_sim(seed, opts)
  opts = opts or {}
  local rand = rng(seed)
  local sim = { n = rand(5) + 2, nodes = {}, names = {}, rounds = {}, events = 0, log = {}, tally = {} }
  for i = 1, sim.n do
    local name = "n" .. i
    sim.names[i] = name
    sim.nodes[name] = { name = name, alive = true, side = 1, store = {}, instances = {}, history = {},
      salt = opts.disagree and tostring(i) or "" }
  end

  local function connected(a, b)
    local x, y = sim.nodes[a], sim.nodes[b]
    return x.alive and y.alive and x.side == y.side
  end

  local function visible(name)
    local out = {}
    for _, m in ipairs(sim.names) do if connected(name, m) then out[#out + 1] = m end end
    return out
  end

  local function merge(store, id, e)
    if reconcile.newer(e.version, store[id] and store[id].version) then store[id] = e end
  end

  -- Stores merge within each side (anti-entropy: every node republishes).
  local function sync()
    for _, a in ipairs(sim.names) do
      if sim.nodes[a].alive then
        for _, b in ipairs(visible(a)) do
          for id, e in pairs(sim.nodes[b].store) do merge(sim.nodes[a].store, id, e) end
        end
      end
    end
  end

  local function place(name, id, vis)
    local best, bh
    for _, m in ipairs(vis) do
      local h = fnv(sim.nodes[name].salt .. id .. "/" .. m)
      if best == nil or h > bh then best, bh = m, h end
    end
    return best
  end

  function sim.view(name)
    local vis = visible(name)
    local running, desired, assigned = {}, {}, {}
    for _, m in ipairs(vis) do
      for _, i in ipairs(sim.nodes[m].instances) do
        running[i.id] = running[i.id] or {}
        table.insert(running[i.id], i)
      end
    end
    for id, e in pairs(sim.nodes[name].store) do
      desired[id] = e
      assigned[id] = place(name, id, vis)
    end
    return { self = name, nodes = vis, desired = desired, running = running, assigned = assigned,
      quorum = #vis > sim.n // 2, history = sim.nodes[name].history, now = 0 }
  end

  local function fail(msg)
    error(("seed %d: %s\nevents:\n  %s"):format(seed, msg, table.concat(sim.log, "\n  ")), 0)
  end
  sim.fail = fail

  -- Quorum children never run on two sides at once; never on a side
  -- without quorum once its nodes have decided (checked after stops).
  local function check_safety(after_stops)
    for _, id in ipairs(IDS) do
      local side_of
      for _, name in ipairs(sim.names) do
        local node = sim.nodes[name]
        for _, i in ipairs(node.instances) do
          -- A quorum child: started as one, and still one in the winner known
          -- here (a spec change to "available" that wins on one side lifts
          -- the guarantee on that side, by request).
          local e = node.store[id]
          if i.id == id and i.partition == "quorum" and e and e.spec.partition == "quorum" then
            if side_of and side_of ~= node.side then fail(id .. ": quorum child on two sides") end
            side_of = node.side
            if after_stops and #visible(name) <= sim.n // 2 then
              fail(id .. ": quorum child running on a minority side at " .. name)
            end
          end
        end
      end
    end
  end

  -- One round; returns the number of actions taken.
  function sim.round()
    for _, name in ipairs(sim.names) do
      for _, i in ipairs(sim.nodes[name].instances) do
        if i.state == "starting" then i.state = "running" end
      end
    end
    sync()
    local decided = {}
    local count = 0
    for _, name in ipairs(sim.names) do
      if sim.nodes[name].alive then
        local v = sim.view(name)
        local acts = reconcile.decide(v)
        decided[name] = { acts = acts, view = v }
        count = count + #acts
        for _, a in ipairs(acts) do
          local kind = a.op == "stop" and a.reason:match("^(%a+)") or a.op
          sim.tally[kind] = (sim.tally[kind] or 0) + 1
        end
      end
    end
    -- stops, everywhere, first
    for name, d in pairs(decided) do
      local node = sim.nodes[name]
      for _, a in ipairs(d.acts) do
        if a.op == "stop" then
          for k, i in ipairs(node.instances) do
            if i.id == a.id and i.generation == a.generation then table.remove(node.instances, k); break end
          end
        end
      end
    end
    check_safety(true)
    for _, name in ipairs(sim.names) do
      local d = decided[name]
      local node = sim.nodes[name]
      for _, a in ipairs(d and d.acts or {}) do
        local e = node.store[a.id]
        if a.op == "start" or a.op == "replace" then
          for _, i in ipairs(d.view.running[a.id] or {}) do
            if i.generation >= a.generation then fail(a.id .. ": generation not above " .. i.node) end
          end
          node.history[a.id] = math.max(node.history[a.id] or 0, a.generation)
        end
        if a.op == "start" then
          table.insert(node.instances, { id = a.id, node = name, generation = a.generation, state = "starting",
            home = true, version = a.version, partition = e.spec.partition })
        else
          for _, i in ipairs(node.instances) do
            if i.id == a.id and i.generation == (a.old or a.generation) then
              if a.op == "claim" then i.home = a.home
              elseif a.op == "replace" then
                i.generation, i.version, i.state, i.partition = a.generation, a.version, "starting", e.spec.partition
              end
            end
          end
        end
      end
    end
    check_safety(false)
    return count
  end

  -- Quiet: per side, every desired child has exactly one instance, on the
  -- node the side's placement picks (in disagree mode: exactly one); quorum
  -- children only on a side with quorum; nothing undesired runs.
  function sim.check_quiet()
    local sides = {}
    for _, name in ipairs(sim.names) do
      local node = sim.nodes[name]
      if node.alive then
        sides[node.side] = sides[node.side] or {}
        table.insert(sides[node.side], name)
      end
    end
    for _, members in pairs(sides) do
      local first = members[1]
      local v = sim.view(first)
      local views = {}
      if opts.disagree then
        for _, m in ipairs(members) do views[m] = sim.view(m) end
      end
      for _, m in ipairs(members) do
        for id, e in pairs(v.desired) do
          if not reconcile.same_version(sim.nodes[m].store[id].version, e.version) then
            fail(id .. ": stores differ on a side at " .. m)
          end
        end
      end
      for _, id in ipairs(IDS) do
        local e = v.desired[id]
        local insts = v.running[id] or {}
        local should = e and not e.stopped and (e.spec.partition ~= "quorum" or v.quorum)
        if not should then
          if #insts > 0 then fail(id .. ": runs on " .. insts[1].node .. " but should not") end
        else
          -- With disagreeing policies a child may be assigned by every node
          -- to another one, so nobody starts it: the guarantee there is no
          -- duplicate, and one instance as soon as some node claims it.
          local claimed = not opts.disagree
          for m, mv in pairs(views) do
            if mv.assigned[id] == m then claimed = true end
          end
          if #insts > 1 or (claimed and #insts ~= 1) then
            fail(("%s: %d instances on side of %s"):format(id, #insts, first))
          end
          if #insts == 0 then sim.unclaimed = (sim.unclaimed or 0) + 1
          elseif not opts.disagree and insts[1].node ~= v.assigned[id] then
            fail(id .. ": on " .. insts[1].node .. ", assigned " .. v.assigned[id])
          end
          if #insts == 1 and not reconcile.same_version(insts[1].version, e.version) then
            fail(id .. ": old spec version runs")
          end
        end
      end
    end
  end

  function sim.settle()
    for r = 1, MAX_ROUNDS do
      local count = sim.round()
      local starting = false
      for _, name in ipairs(sim.names) do
        for _, i in ipairs(sim.nodes[name].instances) do
          if i.state == "starting" then starting = true end
        end
      end
      if count == 0 and not starting then
        sim.rounds[#sim.rounds + 1] = r
        sim.check_quiet()
        return r
      end
    end
    fail("no convergence within " .. MAX_ROUNDS .. " rounds")
  end

  local function live_names()
    local out = {}
    for _, name in ipairs(sim.names) do if sim.nodes[name].alive then out[#out + 1] = name end end
    return out
  end

  -- The oracle: the newest request per id, to check nothing is lost.
  sim.oracle = {}

  function sim.event()
    local live = live_names()
    local k = rand(100)
    local name = live[rand(#live)]
    local node = sim.nodes[name]
    local id = IDS[rand(#IDS)]
    local msg
    if k <= 45 then
      -- a request at a live node: start (or spec change) 2/3, stop 1/3
      local top = 0
      for _, e in pairs(node.store) do top = math.max(top, e.version.clock) end
      local version = { clock = top + 1, node = name }
      local e
      if rand(3) == 1 then
        e = { spec = spec(id), version = version, stopped = true }
        msg = "stop " .. id .. " at " .. name
      else
        e = { spec = spec(id, { partition = rand(3) == 1 and "quorum" or "available",
          handoff = rand(3) == 1 and "stop_first" or "make_before_break", cmd = "v" .. rand(1000) }),
          version = version }
        msg = ("start %s (%s, %s) at %s"):format(id, e.spec.partition, e.spec.handoff, name)
      end
      node.store[id] = e
      local o = sim.oracle[id]
      if o == nil or reconcile.newer(version, o.version) then sim.oracle[id] = e end
    elseif k <= 57 and #live > 1 then
      node.alive, node.instances, node.store = false, {}, {}
      msg = "crash " .. name
    elseif k <= 67 then
      local dead = {}
      for _, n in ipairs(sim.names) do if not sim.nodes[n].alive then dead[#dead + 1] = n end end
      if #dead == 0 then return sim.event() end
      local d = sim.nodes[dead[rand(#dead)]]
      d.alive = true -- back empty; its generation history survives on disk
      msg = "restart " .. d.name
    elseif k <= 77 then
      for _, n in ipairs(sim.names) do sim.nodes[n].side = rand(2) end
      local s = {}
      for _, n in ipairs(sim.names) do s[#s + 1] = n .. "=" .. sim.nodes[n].side end
      msg = "partition " .. table.concat(s, " ")
    elseif k <= 87 then
      for _, n in ipairs(sim.names) do sim.nodes[n].side = 1 end
      msg = "heal"
    else
      local all = {}
      for _, n in ipairs(sim.names) do
        for x, i in ipairs(sim.nodes[n].instances) do all[#all + 1] = { n, x, i.id } end
      end
      if #all == 0 then return sim.event() end
      local pick = all[rand(#all)]
      table.remove(sim.nodes[pick[1]].instances, pick[2])
      msg = "process " .. pick[3] .. " exits on " .. pick[1] .. " (gave up)"
    end
    sim.log[#sim.log + 1] = msg
    sim.events = sim.events + 1
  end

  -- Nothing desired is lost: once connected, the newest request held by a
  -- live node is every live node's winner (and check_quiet runs it).
  function sim.check_not_lost()
    for _, name in ipairs(sim.names) do
      if sim.nodes[name].alive and sim.nodes[name].side ~= sim.nodes[sim.names[1]].side then return end
    end
    for id, o in pairs(sim.oracle) do
      local held = false
      for _, name in ipairs(sim.names) do
        local e = sim.nodes[name].alive and sim.nodes[name].store[id]
        if e and reconcile.same_version(e.version, o.version) then held = true end
      end
      if held then
        for _, name in ipairs(sim.names) do
          local e = sim.nodes[name].alive and sim.nodes[name].store[id]
          if sim.nodes[name].alive and not (e and reconcile.same_version(e.version, o.version)) then
            fail(id .. ": newest request lost at " .. name)
          end
        end
      end
    end
  end

  return sim
end

local function run_seed(seed, events, opts)
  local sim = new_sim(seed, opts)
  sim.settle()
  for _ = 1, events do
    sim.event()
    sim.settle()
    sim.check_not_lost()
  end
  -- finally heal and restart everything: one connected cluster
  for _, name in ipairs(sim.names) do sim.nodes[name].side = 1; sim.nodes[name].alive = true end
  sim.log[#sim.log + 1] = "final heal"
  sim.settle()
  sim.check_not_lost()
  return sim
end

describe("pogo.reconcile simulation #sim", function()
  local env_seed = tonumber(os.getenv("POGO_RECONCILE_SEED") or "")
  local seeds = {}
  if env_seed then seeds = { env_seed } else for s = 1, 50 do seeds[s] = s * 7919 end end

  local function summary(label, sims)
    local total, worst, rounds, events, tally = 0, 0, 0, 0, {}
    for _, sim in ipairs(sims) do
      for _, r in ipairs(sim.rounds) do
        total = total + r; rounds = rounds + 1
        if r > worst then worst = r end
      end
      events = events + sim.events
      for k, n in pairs(sim.tally) do tally[k] = (tally[k] or 0) + n end
    end
    local kinds = {}
    for k, n in pairs(tally) do kinds[#kinds + 1] = k .. "=" .. n end
    table.sort(kinds)
    print(("reconcile sim %s: %d seeds, %d events, rounds to quiet mean %.2f max %d (bound %d)\n  actions: %s")
      :format(label, #sims, events, total / math.max(rounds, 1), worst, MAX_ROUNDS, table.concat(kinds, " ")))
  end

  it("converges to one instance per child on the assigned node, seeds " .. (env_seed or "7919 x 1..50"), function()
    local sims = {}
    print(("reconcile sim seeds: %s (set POGO_RECONCILE_SEED=<seed> to rerun one)"):format(
      env_seed and tostring(env_seed) or (seeds[1] .. ", " .. seeds[2] .. ", ... " .. seeds[#seeds])))
    for _, seed in ipairs(seeds) do sims[#sims + 1] = run_seed(seed, 60) end
    summary("agreeing placement", sims)
  end)

  it("converges to one instance per child when every node's placement disagrees", function()
    local sims = {}
    for i, seed in ipairs(seeds) do
      if i <= 20 then sims[#sims + 1] = run_seed(seed, 60, { disagree = true }) end
    end
    summary("disagreeing placement", sims)
  end)

  it("reproduces a failure from its seed", function()
    local ok, err = pcall(function()
      local sim = new_sim(42)
      sim.settle()
      sim.fail("forced")
    end)
    assert.is_false(ok)
    assert.matches("^seed 42: forced", err)
  end)
end)
