local helper = require "helper"

describe("#unit pogo.child", function()
  local child, spec

  before_each(function()
    helper.stub_core()
    spec = helper.fresh "pogo.spec"
    child = helper.fresh "pogo.child"
  end)

  local function make_spec(fields)
    local t = { id = "web", cmd = "web" }
    for k, v in pairs(fields or {}) do t[k] = v end
    return assert(spec.normalise(t))
  end

  local function new(fields)
    return child.new(make_spec(fields))
  end

  local CRASH = { code = 1 }
  local HALF = function() return 0.5 end -- no jitter: 1 + j * (2 * 0.5 - 1) = 1

  -- Steps and asserts the event was valid; returns the actions.
  local function step(c, event, ctx)
    ctx = ctx or {}
    ctx.now = ctx.now or 0
    ctx.random = ctx.random or HALF
    local actions, err = child.step(c, event, ctx)
    assert.is_nil(err)
    return actions
  end

  -- The events that bring a fresh child to each state.
  local PATHS = {
    stopped = {},
    starting = { { "start" } },
    running = { { "start" }, { "spawned", { pid = 7 } } },
    ready = { { "start" }, { "spawned", { pid = 7 } }, { "ready" } },
    stopping = { { "start" }, { "spawned", { pid = 7 } }, { "stop" } },
    backoff = { { "start" }, { "spawned", { pid = 7 } }, { "exit", { status = CRASH } } },
    failed = { { "start" }, { "spawned", { pid = 7 } }, { "exit", { status = CRASH } } },
  }

  local function at(state, fields)
    fields = fields or {}
    if state == "failed" then fields.max_restarts = 0 end
    local c = new(fields)
    for _, e in ipairs(PATHS[state]) do step(c, e[1], e[2]) end
    assert.are.equal(state, c.state)
    return c
  end

  local function deep_copy(v)
    if type(v) ~= "table" then return v end
    local out = {}
    for k, x in pairs(v) do out[k] = deep_copy(x) end
    return out
  end

  describe("the transition table", function()
    local ACTIONS = {
      spawn = true, start_readiness = true, signal_stop = true, kill = true,
      arm_stop_timer = true, arm_backoff_timer = true, arm_cooldown_timer = true,
      arm_reset_timer = true, cancel_timer = true, count_restart = true,
      ["run_hook:on_start"] = true, ["run_hook:on_ready"] = true, ["run_hook:on_exit"] = true,
      ["run_hook:on_restart"] = true, ["run_hook:on_give_up"] = true, ["run_hook:on_stop"] = true,
    }

    local function entries(e)
      if e.branches then
        local list = {}
        for name, b in pairs(e.branches) do list[#list + 1] = { name, b } end
        return list
      end
      return { { "", e } }
    end

    it("has a row for every state and only known events, states and actions", function()
      local states, events = {}, {}
      for _, s in ipairs(child.STATES) do states[s] = true end
      for _, e in ipairs(child.EVENTS) do events[e] = true end
      for _, s in ipairs(child.STATES) do assert.is_table(child.TRANSITIONS[s], s) end
      for s, row in pairs(child.TRANSITIONS) do
        assert.is_true(states[s], s)
        for event, e in pairs(row) do
          assert.is_true(events[event], event)
          for _, b in ipairs(entries(e)) do
            assert.is_true(states[b[2].to], s .. "/" .. event .. "/" .. b[1])
            for _, a in ipairs(b[2].actions) do
              assert.is_true(ACTIONS[a], ("%s/%s: unknown action %s"):format(s, event, a))
            end
          end
        end
      end
    end)

    it("never arms a timer before cancelling, nor two timers in one step", function()
      for s, row in pairs(child.TRANSITIONS) do
        for event, e in pairs(row) do
          for _, b in ipairs(entries(e)) do
            local armed, cancelled_after = 0, false
            for _, a in ipairs(b[2].actions) do
              if a:match("^arm_") then armed = armed + 1 end
              if a == "cancel_timer" and armed > 0 then cancelled_after = true end
            end
            assert.is_true(armed <= 1, s .. "/" .. event)
            assert.is_false(cancelled_after, s .. "/" .. event)
          end
        end
      end
    end)

    -- { from, event, ctx, to, actions, spec fields }: every defined pair, and
    -- every branch of the guarded ones.
    local CASES = {
      { "stopped", "start", nil, "starting", { "spawn" } },
      { "stopped", "restart", nil, "starting", { "spawn" } },
      { "starting", "spawned", { pid = 9 }, "running", { "run_hook:on_start", "start_readiness" } },
      { "starting", "spawn_failed", { error = "ENOENT: no such file" }, "backoff",
        { "count_restart", "arm_backoff_timer", "run_hook:on_exit", "run_hook:on_restart" } },
      { "starting", "spawn_failed", { error = "ENOENT" }, "stopped", { "run_hook:on_exit" }, { restart = "temporary" } },
      { "starting", "exit", { status = CRASH }, "backoff",
        { "count_restart", "arm_backoff_timer", "run_hook:on_exit", "run_hook:on_restart" } },
      { "starting", "stop", nil, "stopping", { "run_hook:on_stop" } },
      { "starting", "restart", nil, "stopping", { "run_hook:on_stop" } },
      { "running", "ready", nil, "ready", { "cancel_timer", "arm_reset_timer", "run_hook:on_ready" } },
      { "running", "exit", { status = CRASH }, "backoff",
        { "cancel_timer", "count_restart", "arm_backoff_timer", "run_hook:on_exit", "run_hook:on_restart" } },
      { "running", "exit", { status = { code = 0 } }, "stopped", { "cancel_timer", "run_hook:on_exit" },
        { restart = "transient" } },
      { "running", "exit", { status = CRASH }, "failed",
        { "cancel_timer", "arm_cooldown_timer", "run_hook:on_exit", "run_hook:on_give_up" }, { max_restarts = 0 } },
      { "running", "stop", nil, "stopping", { "cancel_timer", "signal_stop", "arm_stop_timer", "run_hook:on_stop" } },
      { "running", "stop", nil, "stopping", { "cancel_timer", "kill", "run_hook:on_stop" }, { shutdown = "brutal_kill" } },
      { "running", "restart", nil, "stopping", { "cancel_timer", "signal_stop", "arm_stop_timer", "run_hook:on_stop" } },
      { "running", "restart", nil, "stopping", { "cancel_timer", "kill", "run_hook:on_stop" }, { shutdown = "brutal_kill" } },
      { "ready", "exit", { status = CRASH }, "backoff",
        { "cancel_timer", "count_restart", "arm_backoff_timer", "run_hook:on_exit", "run_hook:on_restart" } },
      { "ready", "exit", { status = CRASH }, "stopped", { "cancel_timer", "run_hook:on_exit" }, { restart = "temporary" } },
      { "ready", "exit", { status = CRASH }, "failed",
        { "cancel_timer", "arm_cooldown_timer", "run_hook:on_exit", "run_hook:on_give_up" }, { max_restarts = 0 } },
      { "ready", "stop", nil, "stopping", { "cancel_timer", "signal_stop", "arm_stop_timer", "run_hook:on_stop" } },
      { "ready", "stop", nil, "stopping", { "cancel_timer", "kill", "run_hook:on_stop" }, { shutdown = "brutal_kill" } },
      { "ready", "restart", nil, "stopping", { "cancel_timer", "signal_stop", "arm_stop_timer", "run_hook:on_stop" } },
      { "ready", "reset", nil, "ready", {} },
      { "stopping", "exit", { status = { signal = 15 } }, "stopped", { "cancel_timer", "run_hook:on_exit" } },
      { "stopping", "stop_timeout", nil, "stopping", { "kill" } },
      { "stopping", "stop", nil, "stopping", {} },
      { "stopping", "start", nil, "stopping", {} },
      { "stopping", "restart", nil, "stopping", {} },
      { "stopping", "spawned", { pid = 9 }, "stopping", { "signal_stop", "arm_stop_timer" } },
      { "stopping", "spawned", { pid = 9 }, "stopping", { "kill" }, { shutdown = "brutal_kill" } },
      { "stopping", "spawn_failed", { error = "EACCES" }, "stopped", {} },
      { "backoff", "timer", nil, "starting", { "spawn" } },
      { "backoff", "start", nil, "starting", { "cancel_timer", "spawn" } },
      { "backoff", "restart", nil, "starting", { "cancel_timer", "spawn" } },
      { "backoff", "stop", nil, "stopped", { "cancel_timer" } },
      { "failed", "timer", nil, "starting", { "spawn" } },
      { "failed", "start", nil, "starting", { "cancel_timer", "spawn" } },
      { "failed", "restart", nil, "starting", { "cancel_timer", "spawn" } },
      { "failed", "stop", nil, "stopped", { "cancel_timer" } },
    }

    for _, case in ipairs(CASES) do
      local from, event, ctx, to, actions, fields = table.unpack(case, 1, 6)
      local name = ("%s --%s--> %s%s"):format(from, event, to,
        fields and (" (" .. tostring(next(fields)) .. ")") or "")
      it(name, function()
        local c = at(from, deep_copy(fields))
        assert.are.same(actions, step(c, event, deep_copy(ctx)))
        assert.are.equal(to, c.state)
      end)
    end

    it("has a case above for every defined pair", function()
      local covered = {}
      for _, case in ipairs(CASES) do covered[case[1] .. "/" .. case[2]] = true end
      for s, row in pairs(child.TRANSITIONS) do
        for event in pairs(row) do
          assert.is_true(covered[s .. "/" .. event], s .. "/" .. event)
        end
      end
    end)

    it("stopping --exit--> starting when a restart is pending", function()
      local c = at("running")
      step(c, "restart")
      assert.are.same({ "cancel_timer", "run_hook:on_exit", "spawn" }, step(c, "exit", { status = { signal = 15 } }))
      assert.are.equal("starting", c.state)
      assert.is_nil(c.pending)
    end)

    it("stopping --spawn_failed--> starting when a restart is pending", function()
      local c = at("starting")
      step(c, "restart")
      assert.are.same({ "spawn" }, step(c, "spawn_failed", { error = "ENOENT" }))
      assert.are.equal("starting", c.state)
    end)
  end)

  describe("invalid events", function()
    it("are refused in every state where they are not defined, leaving the record as it was", function()
      local refused = 0
      for _, s in ipairs(child.STATES) do
        for _, event in ipairs(child.EVENTS) do
          if not child.TRANSITIONS[s][event] then
            local c = at(s)
            local before = deep_copy(c)
            local actions, err = child.step(c, event, { now = 99, status = CRASH })
            assert.is_nil(actions)
            assert.are.equal(("event %s is not valid in state %s"):format(event, s), err)
            assert.are.same(before, c)
            refused = refused + 1
          end
        end
      end
      assert.is_true(refused > 0)
    end)

    it("reads the message the operator sees", function()
      local _, err = child.step(new(), "exit", { now = 0, status = CRASH })
      assert.are.equal("event exit is not valid in state stopped", err)
    end)

    it("raises on an unknown event or a missing ctx.now or exit status, which are bugs", function()
      assert.has_error(function() child.step(new(), "explode", { now = 0 }) end, "step: unknown event 'explode'")
      assert.has_error(function() child.step(new(), "start", {}) end, "step: ctx.now (monotonic seconds) is required")
      assert.has_error(function() child.step(new(), "start") end)
      local c = at("running")
      assert.has_error(function() child.step(c, "exit", { now = 1 }) end)
      assert.are.equal("running", c.state)
    end)
  end)

  describe("the record", function()
    it("starts stopped with empty history", function()
      local c = new()
      assert.are.equal("stopped", c.state)
      assert.are.equal("web", c.id)
      assert.are.same({}, c.restarts)
      assert.are.equal(0, c.attempt)
      assert.are.equal(0, c.restart_count)
      assert.are.equal(0, c.starts)
      assert.is_nil(c.last_exit)
      assert.is_nil(c.pending)
    end)

    it("keeps pid, times, starts and the last exit", function()
      local c = new()
      step(c, "start", { now = 1 })
      assert.are.equal(1, c.starts)
      assert.are.equal(1, c.since)
      step(c, "spawned", { now = 2, pid = 42 })
      assert.are.equal(42, c.pid)
      assert.are.equal(2, c.up_since)
      step(c, "ready", { now = 3 })
      assert.are.equal(3, c.ready_since)
      step(c, "reset", { now = 13 })
      assert.are.equal(3, c.since) -- no state change
      step(c, "exit", { now = 20, status = { signal = 9, signame = "KILL" } })
      assert.is_nil(c.pid)
      assert.is_nil(c.up_since)
      assert.are.same({ signal = 9, signame = "KILL", at = 20 }, c.last_exit)
      assert.are.equal(20, c.since)
    end)

    it("records a spawn error as the last exit", function()
      local c = at("starting")
      step(c, "spawn_failed", { now = 5, error = "ENOENT: no such file or directory" })
      assert.are.same({ error = "ENOENT: no such file or directory", at = 5 }, c.last_exit)
    end)
  end)

  describe("restart decision", function()
    local KINDS = {
      { "exit code 0", { code = 0 } },
      { "exit code 1", { code = 1 } },
      { "listed success code 143", { code = 143 } },
      { "signal TERM (number)", { signal = 15 } },
      { "signal KILL (name)", { signal = 9, signame = "KILL" } },
      { "listed success signal HUP", { signal = 1, signame = "HUP" } },
      { "spawn error", { error = "ENOENT" } },
    }
    local FIELDS = { success_codes = { 0, 143 }, success_signals = { "HUP" } }
    local EXPECT = {
      permanent = { true, true, true, true, true, true, true },
      transient = { false, true, false, true, true, false, true },
      temporary = { false, false, false, false, false, false, false },
    }

    for _, restart in ipairs { "permanent", "transient", "temporary" } do
      for i, kind in ipairs(KINDS) do
        it(("%s after %s: %s"):format(restart, kind[1], EXPECT[restart][i] and "restart" or "no restart"), function()
          local fields = deep_copy(FIELDS)
          fields.restart = restart
          local s = make_spec(fields)
          assert.are.equal(EXPECT[restart][i], child.should_restart(s, kind[2]))
          -- And the state machine follows it.
          local c = at("running", fields)
          local status = kind[2]
          if status.error then
            c = at("starting", fields)
            step(c, "spawn_failed", { error = status.error })
          else
            step(c, "exit", { status = deep_copy(status) })
          end
          assert.are.equal(EXPECT[restart][i] and "backoff" or "stopped", c.state)
        end)
      end
    end

    it("reads what a normal exit is from the spec", function()
      local s = make_spec { success_codes = { 0, 3 }, success_signals = { "SIGTERM" } }
      assert.is_true(child.is_normal_exit(s, { code = 0 }))
      assert.is_true(child.is_normal_exit(s, { code = 3 }))
      assert.is_false(child.is_normal_exit(s, { code = 1 }))
      assert.is_true(child.is_normal_exit(s, { signal = 15 }))
      assert.is_true(child.is_normal_exit(s, { signal = "TERM" }))
      assert.is_true(child.is_normal_exit(s, { signal = 15, signame = "SIGTERM" }))
      assert.is_false(child.is_normal_exit(s, { signal = 2 }))
      assert.is_false(child.is_normal_exit(s, { error = "EACCES" }))
      assert.is_false(child.is_normal_exit(s, {}))
    end)

    it("does not count stops the operator asked for", function()
      local c = at("ready")
      step(c, "stop", { now = 1 })
      step(c, "exit", { now = 2, status = { signal = 15 } })
      assert.are.equal("stopped", c.state)
      assert.are.same({}, c.restarts)
      assert.are.equal(0, c.restart_count)
    end)
  end)

  describe("restart intensity", function()
    -- One crash cycle at time now: exit, then the backoff timer and a new spawn.
    local function crash(c, now)
      step(c, "exit", { now = now, status = CRASH })
      if c.state == "backoff" then
        step(c, "timer", { now = now })
        step(c, "spawned", { now = now, pid = 1 })
        step(c, "ready", { now = now })
      end
    end

    it("never trips for restarts spread out, however old the child", function()
      local c = at("ready", { max_restarts = 5, max_seconds = 10 })
      for i = 1, 2000 do
        crash(c, i * 2) -- five restarts in any 10 s window: allowed
        assert.are.equal("ready", c.state, "crash " .. i)
        assert.is_true(#c.restarts <= 6)
      end
      assert.are.equal(2000, c.restart_count)
    end)

    it("trips on a burst: more than max_restarts within max_seconds", function()
      local c = at("ready", { max_restarts = 5, max_seconds = 10 })
      for i = 1, 5 do
        crash(c, 100 + i)
        assert.are.equal("ready", c.state)
      end
      step(c, "exit", { now = 106, status = CRASH })
      assert.are.equal("failed", c.state)
      assert.are.equal(106, c.gave_up_at)
    end)

    it("trips on a burst late in a long life", function()
      local c = at("ready", { max_restarts = 2, max_seconds = 60 })
      crash(c, 10)
      crash(c, 1e6)
      crash(c, 1e6 + 1)
      assert.are.equal("ready", c.state)
      crash(c, 1e6 + 2)
      assert.are.equal("failed", c.state)
    end)

    it("gives up at the first crash with max_restarts = 0", function()
      local c = at("running", { max_restarts = 0 })
      step(c, "exit", { now = 1, status = CRASH })
      assert.are.equal("failed", c.state)
    end)

    it("counts restarts in a sliding window", function()
      local s = make_spec { max_restarts = 2, max_seconds = 10 }
      local c = child.new(s)
      child.record_restart(c, 0)
      child.record_restart(c, 5)
      child.record_restart(c, 9)
      assert.is_true(child.intensity_exceeded(c, s, 9))
      assert.is_false(child.intensity_exceeded(c, s, 10)) -- the one at 0 left the window
      child.record_restart(c, 30)
      assert.are.same({ 30 }, c.restarts)
      assert.is_false(child.intensity_exceeded(c, s, 30))
    end)

    it("retries after the cool-down with the window cleared", function()
      local c = at("ready", { max_restarts = 1, max_seconds = 60, cooldown = 30 })
      crash(c, 1)
      step(c, "exit", { now = 2, status = CRASH })
      assert.are.equal("failed", c.state)
      assert.are.same({ "spawn" }, step(c, "timer", { now = 32 }))
      assert.are.equal("starting", c.state)
      assert.are.same({}, c.restarts)
      assert.are.equal(0, c.attempt)
      step(c, "spawned", { now = 32, pid = 3 })
      step(c, "exit", { now = 33, status = CRASH })
      assert.are.equal("backoff", c.state)
      assert.are.equal(0, c.delay)
    end)

    it("clears the window when the operator starts a failed child", function()
      local c = at("failed")
      step(c, "start", { now = 5 })
      assert.are.same({}, c.restarts)
      assert.are.equal("starting", c.state)
    end)
  end)

  describe("backoff", function()
    local function delays(fields, n, rnd)
      local s = make_spec(fields)
      local c = child.new(s)
      local out = {}
      for i = 1, n do
        c.attempt = i
        out[i] = child.backoff_delay(c, s, rnd or 0.5)
      end
      return out
    end

    it("restarts at once the first time, then grows by factor from initial", function()
      assert.are.same({ 0, 0.1, 0.2, 0.4, 0.8 }, delays({}, 5))
      assert.are.same({ 0, 1, 3, 9 }, delays({ backoff = { initial = "1s", factor = 3 } }, 4))
    end)

    it("is capped at max", function()
      local d = delays({ backoff = { initial = 1, max = 5 } }, 40)
      assert.are.same({ 0, 1, 2, 4, 5, 5 }, { table.unpack(d, 1, 6) })
      assert.are.equal(5, d[40])
      assert.are.equal(5, delays({ backoff = { initial = 1, max = 5 } }, 2000)[2000])
    end)

    it("stays 0 with initial 0", function()
      assert.are.same({ 0, 0, 0 }, delays({ backoff = { initial = 0 } }, 3))
    end)

    it("spreads by ±jitter within bounds", function()
      local f = { backoff = { initial = 10, max = 100, jitter = 0.1 } }
      assert.are.equal(9, delays(f, 2, 0)[2])
      assert.is_true(math.abs(delays(f, 2, 0.999999)[2] - 11) < 1e-4)
      for _ = 1, 200 do
        local d = delays(f, 4, math.random())[4]
        assert.is_true(d >= 36 and d < 44, tostring(d))
      end
      local capped = delays(f, 30, 0.999999)[30]
      assert.is_true(capped > 100 and capped < 110)
    end)

    it("takes the random source as a function", function()
      local s = make_spec { backoff = { initial = 10, jitter = 0.5 } }
      local c = child.new(s)
      c.attempt = 2
      assert.are.equal(5, child.backoff_delay(c, s, function() return 0 end))
    end)

    it("grows across crashes in the state machine and uses ctx.random", function()
      local c = at("running", { backoff = { initial = 1, max = 8 } })
      local seen = {}
      for i = 1, 6 do
        step(c, "exit", { now = i * 100, status = CRASH, random = HALF })
        seen[i] = c.delay
        step(c, "timer", { now = i * 100 })
        step(c, "spawned", { now = i * 100, pid = i })
      end
      assert.are.same({ 0, 1, 2, 4, 8, 8 }, seen)
      step(c, "exit", { now = 1000, status = CRASH, random = function() return 0 end })
      assert.are.equal(8 * 0.9, c.delay)
    end)

    it("resets once the child stayed ready for reset_after", function()
      local c = at("ready", { backoff = { initial = 1 } })
      for i = 1, 3 do
        step(c, "exit", { now = i, status = CRASH })
        step(c, "timer", { now = i })
        step(c, "spawned", { now = i, pid = i })
        step(c, "ready", { now = i })
      end
      assert.are.equal(3, c.attempt)
      assert.are.same({}, step(c, "reset", { now = 20 }))
      assert.are.equal(0, c.attempt)
      step(c, "exit", { now = 30, status = CRASH })
      assert.are.equal(0, c.delay)
    end)

    it("is reset by reset_backoff", function()
      local c = new()
      c.attempt = 7
      child.reset_backoff(c)
      assert.are.equal(0, c.attempt)
    end)
  end)

  describe("operator requests", function()
    it("restart while running stops, then starts again without counting a crash", function()
      local c = at("ready")
      assert.are.same({ "cancel_timer", "signal_stop", "arm_stop_timer", "run_hook:on_stop" }, step(c, "restart", { now = 1 }))
      assert.are.equal("restart", c.pending)
      assert.are.same({ "cancel_timer", "run_hook:on_exit", "spawn" }, step(c, "exit", { now = 2, status = { signal = 15 } }))
      assert.are.equal("starting", c.state)
      assert.are.equal(2, c.starts)
      assert.are.equal(0, c.restart_count)
      assert.are.same({}, c.restarts)
    end)

    it("a stop after a restart request wins", function()
      local c = at("running")
      step(c, "restart")
      step(c, "stop")
      step(c, "exit", { status = { signal = 15 } })
      assert.are.equal("stopped", c.state)
    end)

    it("a start while stopping starts the child again once it exited", function()
      local c = at("stopping")
      step(c, "start")
      step(c, "exit", { status = { signal = 15 } })
      assert.are.equal("starting", c.state)
    end)

    it("a stop while starting signals the process once it is spawned", function()
      local c = at("starting")
      step(c, "stop")
      assert.are.same({ "signal_stop", "arm_stop_timer" }, step(c, "spawned", { pid = 5 }))
      assert.are.equal(5, c.pid)
      step(c, "exit", { status = { signal = 15 } })
      assert.are.equal("stopped", c.state)
    end)

    it("a child that ignores the stop signal is killed at the stop timeout", function()
      local c = at("running")
      step(c, "stop", { now = 1 })
      assert.are.same({ "kill" }, step(c, "stop_timeout", { now = 6 }))
      step(c, "exit", { now = 6, status = { signal = 9 } })
      assert.are.equal("stopped", c.state)
    end)

    it("brutal_kill kills at once and arms no stop timer", function()
      local c = at("ready", { shutdown = "brutal_kill" })
      assert.are.same({ "cancel_timer", "kill", "run_hook:on_stop" }, step(c, "stop"))
    end)

    it("start from backoff skips the wait and keeps the window", function()
      local c = at("backoff")
      step(c, "start", { now = 1 })
      assert.are.equal("starting", c.state)
      assert.are.equal(1, #c.restarts)
    end)
  end)
end)
