-- pogo.child: the lifecycle of one child as an explicit state x event table
-- (after s6-supervise) plus the restart policy, all pure Lua. No C, no
-- timers: the supervisor feeds events, executes the returned actions in
-- order and owns the clock (ctx.now, monotonic seconds).
--
-- States
--   stopped   not running, nothing pending
--   starting  spawn requested, no pid yet
--   running   process up, readiness not yet reached
--   ready     readiness reached (at once for readiness "immediate")
--   stopping  stop signal sent, waiting for the exit
--   backoff   exited, waiting for the restart delay (may be 0)
--   failed    restart intensity exceeded, waiting for the cool-down
--
-- Events
--   start, stop, restart      operator / reconciler requests
--   spawned, spawn_failed     outcome of "spawn" (ctx.pid; ctx.error)
--   ready                     the readiness check passed
--   exit                      the main process exited (ctx.status =
--                             { code = n } or { signal = n|name, signame = name })
--   stop_timeout              the stop timer fired
--   timer                     the backoff or cool-down timer fired
--   reset                     the reset_after timer fired (up/ready long enough)
--
-- Actions (strings, executed by the supervisor in order)
--   spawn               start the process (answer: spawned | spawn_failed)
--   start_readiness     begin spec.readiness; it enforces readiness.timeout by
--                       killing the process (the exit then counts as a
--                       crash); "immediate" feeds "ready" at once
--   signal_stop         send spec.stop_signal to the child's process group
--   kill                SIGKILL to the child's process group
--   arm_stop_timer      spec.shutdown.timeout, then "stop_timeout"
--   arm_backoff_timer   child.delay seconds, then "timer"
--   arm_cooldown_timer  spec.cooldown, then "timer"
--   arm_reset_timer     spec.backoff.reset_after, then "reset"
--   cancel_timer        cancel the armed timer and any readiness check
--   count_restart       bump the restart counter shown by `pogo ps`
--   run_hook:NAME       run hook NAME (on_start, on_ready, on_exit,
--                       on_restart, on_give_up, on_stop)
--
-- At most one timer is armed per child (stop, backoff, cool-down or reset),
-- so cancel_timer is never ambiguous. Hooks come after the mechanism
-- actions, so a hook calling back into the supervisor finds the child in a
-- settled state; on_start is the exception, run before start_readiness so
-- that it precedes on_ready for immediate readiness.
--
-- An entry is { to = state, effects = {...}, actions = {...} } or, where
-- the outcome depends on the spec or the record, { guard = name, branches =
-- { name = entry, ... } }: the guard (a pure function below) picks the
-- branch. Effects name the record updates, applied by step in order.

local spec_mod = require "pogo.spec"

local M = {}

M.STATES = { "stopped", "starting", "running", "ready", "stopping", "backoff", "failed" }
M.EVENTS = {
  "start", "spawned", "spawn_failed", "ready", "exit", "stop", "stop_timeout",
  "timer", "restart", "reset",
}

local EVENT_SET = {}
for _, e in ipairs(M.EVENTS) do EVENT_SET[e] = true end

-- Shared branch sets ------------------------------------------------------------

-- The exit decision for a live child: restart after a delay, stay stopped,
-- or give up until the cool-down.
local function exit_branches(cancel)
  local pre = cancel and { "cancel_timer" } or {}
  local function with(list)
    return table.move(list, 1, #list, #pre + 1, table.move(pre, 1, #pre, 1, {}))
  end
  return {
    restart = { to = "backoff", effects = { "record_exit", "schedule_restart" },
      actions = with { "count_restart", "arm_backoff_timer", "run_hook:on_exit", "run_hook:on_restart" } },
    done = { to = "stopped", effects = { "record_exit" },
      actions = with { "run_hook:on_exit" } },
    give_up = { to = "failed", effects = { "record_exit", "give_up" },
      actions = with { "arm_cooldown_timer", "run_hook:on_exit", "run_hook:on_give_up" } },
  }
end

-- Stopping a live child: the stop signal and a deadline, or KILL at once.
local function stop_branches(effects)
  return {
    graceful = { to = "stopping", effects = effects,
      actions = { "cancel_timer", "signal_stop", "arm_stop_timer", "run_hook:on_stop" } },
    brutal = { to = "stopping", effects = effects,
      actions = { "cancel_timer", "kill", "run_hook:on_stop" } },
  }
end

local START = { to = "starting", effects = { "begin_start" }, actions = { "spawn" } }
local START_NOW = { to = "starting", effects = { "begin_start" }, actions = { "cancel_timer", "spawn" } }
local RETRY_NOW = { to = "starting", effects = { "clear_window", "begin_start" }, actions = { "cancel_timer", "spawn" } }
local DROP = { to = "stopped", actions = { "cancel_timer" } }

-- The table -----------------------------------------------------------------------

M.TRANSITIONS = {
  stopped = {
    start = START,
    restart = START,
  },
  starting = {
    spawned = { to = "running", effects = { "record_spawn" },
      actions = { "run_hook:on_start", "start_readiness" } },
    spawn_failed = { guard = "exit", branches = exit_branches(false) },
    -- Only with an asynchronous spawn can the process exit before "spawned".
    exit = { guard = "exit", branches = exit_branches(false) },
    -- No pid yet: the signal goes out when "spawned" arrives in stopping.
    stop = { to = "stopping", effects = { "clear_pending" }, actions = { "run_hook:on_stop" } },
    restart = { to = "stopping", effects = { "pend_restart" }, actions = { "run_hook:on_stop" } },
  },
  running = {
    ready = { to = "ready", effects = { "record_ready" },
      actions = { "cancel_timer", "arm_reset_timer", "run_hook:on_ready" } },
    exit = { guard = "exit", branches = exit_branches(true) },
    stop = { guard = "shutdown", branches = stop_branches { "clear_pending" } },
    restart = { guard = "shutdown", branches = stop_branches { "pend_restart" } },
  },
  ready = {
    exit = { guard = "exit", branches = exit_branches(true) },
    stop = { guard = "shutdown", branches = stop_branches { "clear_pending" } },
    restart = { guard = "shutdown", branches = stop_branches { "pend_restart" } },
    -- Up (or ready) for reset_after: the next crash restarts at once again.
    reset = { to = "ready", effects = { "reset_backoff" }, actions = {} },
  },
  stopping = {
    exit = { guard = "pending", branches = {
      done = { to = "stopped", effects = { "record_exit", "clear_pending" },
        actions = { "cancel_timer", "run_hook:on_exit" } },
      start = { to = "starting", effects = { "record_exit", "clear_pending", "begin_start" },
        actions = { "cancel_timer", "run_hook:on_exit", "spawn" } },
    } },
    stop_timeout = { to = "stopping", actions = { "kill" } },
    -- A stop asked while starting: the pid is known now, stop it.
    spawned = { guard = "shutdown", branches = {
      graceful = { to = "stopping", effects = { "record_spawn" }, actions = { "signal_stop", "arm_stop_timer" } },
      brutal = { to = "stopping", effects = { "record_spawn" }, actions = { "kill" } },
    } },
    spawn_failed = { guard = "pending", branches = {
      done = { to = "stopped", effects = { "record_exit", "clear_pending" }, actions = {} },
      start = { to = "starting", effects = { "record_exit", "clear_pending", "begin_start" }, actions = { "spawn" } },
    } },
    -- The last request wins: stop cancels a pending restart, start or
    -- restart makes the child start again once it has stopped.
    stop = { to = "stopping", effects = { "clear_pending" }, actions = {} },
    start = { to = "stopping", effects = { "pend_restart" }, actions = {} },
    restart = { to = "stopping", effects = { "pend_restart" }, actions = {} },
  },
  backoff = {
    timer = START,
    start = START_NOW,
    restart = START_NOW,
    stop = DROP,
  },
  failed = {
    -- Cool-down over: retry with a clean slate rather than give up for ever.
    timer = { to = "starting", effects = { "clear_window", "begin_start" }, actions = { "spawn" } },
    start = RETRY_NOW,
    restart = RETRY_NOW,
    stop = DROP,
  },
}

-- Policy -------------------------------------------------------------------------------

local function signal_of(status)
  return spec_mod.signal_name(status.signame) or spec_mod.signal_name(status.signal)
end

--- Whether status (an exit status, or { error = ... } for a start that
--- failed) is a success for the spec: a success code or a success signal.
function M.is_normal_exit(spec, status)
  if status.error ~= nil then return false end
  if status.signal ~= nil or status.signame ~= nil then
    local name = signal_of(status)
    for _, s in ipairs(spec.success_signals) do
      if s == name then return true end
    end
    return false
  end
  for _, c in ipairs(spec.success_codes) do
    if c == status.code then return true end
  end
  return false
end

--- OTP's restart types: permanent always, transient unless the exit was
--- normal, temporary never.
function M.should_restart(spec, status)
  if spec.restart == "permanent" then return true end
  if spec.restart == "transient" then return not M.is_normal_exit(spec, status) end
  return false
end

local function in_window(child, spec, now)
  local n = 0
  for _, t in ipairs(child.restarts) do
    if now - t < spec.max_seconds then n = n + 1 end
  end
  return n
end

--- Notes a restart at now. Only restarts inside the window are kept, so the
--- history stays short however old the child is.
function M.record_restart(child, now)
  local window = child.spec.max_seconds
  local kept = {}
  for _, t in ipairs(child.restarts) do
    if now - t < window then kept[#kept + 1] = t end
  end
  kept[#kept + 1] = now
  child.restarts = kept
end

--- More than max_restarts restarts within the last max_seconds.
function M.intensity_exceeded(child, spec, now)
  return in_window(child, spec, now) > spec.max_restarts
end

--- The delay before restart number child.attempt since the last reset: 0
--- for the first (a crash after a good run is replaced at once), then
--- initial * factor^(attempt-2), capped at max, then spread by ±jitter so
--- children that crashed together do not restart together. rnd is a number
--- in [0, 1) or a function returning one.
function M.backoff_delay(child, spec, rnd)
  local n = child.attempt
  if n <= 1 then return 0 end
  local b = spec.backoff
  local d = b.initial * b.factor ^ (n - 2)
  if d ~= d or d > b.max then d = b.max end
  if type(rnd) == "function" then rnd = rnd() end
  rnd = rnd or math.random()
  return math.max(0, d * (1 + b.jitter * (2 * rnd - 1)))
end

--- The child stayed up (or ready) for reset_after: back to immediate restarts.
function M.reset_backoff(child)
  child.attempt = 0
end

-- Guards: pick a branch; they read, never write ---------------------------------------

local function status_of(_child, event, ctx)
  if event == "spawn_failed" then
    return { error = tostring(ctx.error or "spawn failed") }
  end
  return ctx.status
end

local GUARDS = {}

function GUARDS.exit(child, event, ctx)
  local spec = child.spec
  if not M.should_restart(spec, status_of(child, event, ctx)) then return "done" end
  -- Counting this restart too: max_restarts = 0 means never restart.
  if in_window(child, spec, ctx.now) + 1 > spec.max_restarts then return "give_up" end
  return "restart"
end

function GUARDS.shutdown(child)
  return child.spec.shutdown.brutal and "brutal" or "graceful"
end

function GUARDS.pending(child)
  return child.pending == "restart" and "start" or "done"
end

-- Effects: the record updates an entry names ----------------------------------------

local EFFECTS = {}

function EFFECTS.begin_start(child)
  child.starts = child.starts + 1
  child.pid, child.up_since, child.ready_since = nil, nil, nil
end

function EFFECTS.record_spawn(child, ctx)
  child.pid = ctx.pid
  child.up_since = ctx.now
end

function EFFECTS.record_ready(child, ctx)
  child.ready_since = ctx.now
end

function EFFECTS.record_exit(child, ctx, event)
  local status = {}
  for k, v in pairs(status_of(child, event, ctx)) do status[k] = v end
  status.at = ctx.now
  child.last_exit = status
  child.pid, child.up_since, child.ready_since = nil, nil, nil
end

function EFFECTS.schedule_restart(child, ctx)
  M.record_restart(child, ctx.now)
  child.restart_count = child.restart_count + 1
  child.attempt = child.attempt + 1
  child.delay = M.backoff_delay(child, child.spec, ctx.random or math.random)
end

function EFFECTS.give_up(child, ctx)
  M.record_restart(child, ctx.now)
  child.gave_up_at = ctx.now
  child.delay = nil
end

function EFFECTS.reset_backoff(child)
  M.reset_backoff(child)
end

function EFFECTS.clear_window(child)
  child.restarts = {}
  child.attempt = 0
  child.gave_up_at = nil
end

function EFFECTS.pend_restart(child)
  child.pending = "restart"
end

function EFFECTS.clear_pending(child)
  child.pending = nil
end

-- Records and steps -------------------------------------------------------------------

--- A new record for a normalised spec, in state "stopped".
function M.new(spec)
  return {
    id = spec.id,
    spec = spec,
    state = "stopped",
    since = nil,          -- ctx.now of the last state change
    pid = nil,
    pending = nil,        -- "restart": start again once stopped
    restarts = {},        -- times of the restarts inside the intensity window
    restart_count = 0,    -- automatic restarts, ever
    attempt = 0,          -- restarts since the backoff was last reset
    delay = nil,          -- the backoff delay chosen for the pending restart
    starts = 0,           -- spawns requested, ever
    last_exit = nil,      -- status of the last exit, plus at = ctx.now
    up_since = nil,
    ready_since = nil,
    gave_up_at = nil,
  }
end

--- Applies event to child (mutating it) and returns the actions to execute,
--- or nil and "event X is not valid in state Y". ctx: now (required),
--- status (exit), pid (spawned), error (spawn_failed), random (a function
--- returning [0, 1), for the backoff jitter).
function M.step(child, event, ctx)
  if not EVENT_SET[event] then error(("step: unknown event '%s'"):format(tostring(event)), 2) end
  if type(ctx) ~= "table" or type(ctx.now) ~= "number" then
    error("step: ctx.now (monotonic seconds) is required", 2)
  end
  if event == "exit" and type(ctx.status) ~= "table" then
    error("step: an exit needs ctx.status = { code = n } or { signal = ... }", 2)
  end
  local entry = M.TRANSITIONS[child.state][event]
  if not entry then
    return nil, ("event %s is not valid in state %s"):format(event, child.state)
  end
  if entry.guard then
    entry = entry.branches[GUARDS[entry.guard](child, event, ctx)]
  end
  for _, name in ipairs(entry.effects or {}) do EFFECTS[name](child, ctx, event) end
  if child.state ~= entry.to then
    child.state = entry.to
    child.since = ctx.now
  end
  return table.move(entry.actions, 1, #entry.actions, 1, {})
end

return M
