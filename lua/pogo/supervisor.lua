-- pogo.supervisor: the local supervisor. It owns one entry per child this
-- node should run, feeds events (spawned, exit, timers, readiness, operator
-- requests) to the child state machine in pogo.child, and carries out the
-- actions it returns with the C mechanisms (pogo.core.proc, timers,
-- probes). Nothing here polls: every step is caused by an event.

local child = require "pogo.child"
local hooks = require "pogo.hooks"
local log = require "pogo.log"
local loop = require "pogo.core.loop"
local net = require "pogo.core.net"
local proc = require "pogo.core.proc"
local runtime = require "pogo.core.runtime"
local spec_mod = require "pogo.spec"
local sys = require "pogo.core.sys"
local grammar = require "pogo.grammar"

local L = log.sub("sup")

local M = {}

M.entries = {}          -- id -> entry (see new_entry)
M.node = "local"        -- this node's name, for POGO_NODE
M.log_dir = nil         -- where per-child log files go
M.notify_path = nil     -- the shared sd_notify socket, once opened
M.budget = 0.25         -- user code budget (readiness checks)
M.last_generation = 0
M.on_change = nil       -- fn(id) after every state change (pogo.dsup)
M.spawn_gate = nil      -- fn(entry) -> nil | why it must not start now (pogo.dsup)

local notify_handle     -- proc.notify handle
local by_pid = {}       -- pid -> entry, for sd_notify senders
local on_idle = {}      -- callbacks waiting for every child to be stopped

local function now() return sys.monotonic() end

-- Entries ---------------------------------------------------------------------

local function new_entry(spec)
  return {
    id = spec.id,
    spec = spec,
    fingerprint = spec_mod.fingerprint(spec),
    rec = child.new(spec),
    handle = nil,        -- proc handle of the running process
    sink = nil,          -- output sink, shared by successive processes
    timers = {},         -- name -> loop timer
    readiness = nil,     -- close() of the pending readiness check
    pid = nil,
    started_at = nil,    -- wall clock of the last spawn
    generation = nil,
    restarts = 0,
    last_exit = nil,     -- human text of the last exit
    last_error = nil,    -- last spawn error
    followers = {},      -- key -> fn(line) for `pogo logs -f`
    held = false,        -- stopped by the operator: apply() will not start it
    remove = false,      -- its spec is gone: forget it once stopped
    next_spec = nil,     -- a changed spec to start once the old one stopped
  }
end

-- No process, none on its way: a spec can be swapped and a start fired.
local function idle(e)
  local st = e.rec.state
  return st == "stopped" or st == "failed" or st == "backoff"
end

--- What Lua (hooks, REPL, ps) sees of a child.
local function view(e)
  return {
    id = e.id,
    state = e.rec.state,
    pid = e.pid,
    generation = e.generation,
    restarts = e.restarts,
    uptime = e.started_at and e.pid and (loop.now() - e.started_at) or nil,
    last_exit = e.last_exit,
    last_error = e.last_error,
    file = e.spec.file,
    spec = e.spec,
  }
end
M.view = view

local function cancel(e, name)
  local t = e.timers[name]
  if t then t:close() e.timers[name] = nil end
end

local function cancel_all(e)
  for name in pairs(e.timers) do cancel(e, name) end
  if e.readiness then e.readiness() e.readiness = nil end
end

local fire      -- forward: fire(e, event, ctx)

local function arm(e, name, delay, event)
  cancel(e, name)
  e.timers[name] = loop.timer(math.max(0, delay), 0, function()
    e.timers[name] = nil
    fire(e, event, { timer = name })
  end)
end

-- Output ----------------------------------------------------------------------

local function on_line(e, stream, text, time)
  for _, fn in pairs(e.followers) do fn(stream, text, time) end
  local r = e.line_check
  if r then r(stream, text) end
end

local function sink(e)
  if e.sink then return e.sink end
  local lg = e.spec.log or {}
  local s, err = proc.output {
    path = M.log_dir and (M.log_dir .. "/" .. e.id .. ".log") or nil,
    max_size = lg.max_size, max_files = lg.max_files, ring = lg.ring,
  }
  if not s then
    L.error("child '%s': cannot open its log file: %s (output kept in memory only)", e.id, err)
    s = proc.output { ring = lg.ring }
  end
  s:on_line(function(stream, text, time) on_line(e, stream, text, time) end)
  e.sink = s
  return s
end

local function note(e, fmt, ...)
  local msg = fmt:format(...)
  if e.sink then e.sink:write("pogo", msg) end
end

-- Spawning --------------------------------------------------------------------

local function environment(e)
  local spec = e.spec
  local env = spec.clear_env and {} or sys.environ()
  env.NOTIFY_SOCKET = nil
  for k, v in pairs(spec.env or {}) do env[k] = v end
  env.POGO_CHILD_ID = e.id
  env.POGO_NODE = M.node
  env.POGO_GENERATION = tostring(e.generation)
  if spec.readiness.kind == "notify" and M.notify_path then
    env.NOTIFY_SOCKET = M.notify_path
  end
  return env
end

-- A number that grows with every start. A child of the distributed
-- supervisor (e.floor set by run()) counts from the generation pogo.dsup
-- picked from the replicated state; a local child uses wall-clock
-- milliseconds, bumped past the last one handed out.
local function next_generation(e)
  if e.floor then
    local g = math.max(e.floor, (e.generation or 0) + 1)
    e.floor = nil
    return g
  end
  if e.distributed then return (e.generation or 0) + 1 end
  local g = math.max(M.last_generation + 1, math.floor(loop.now() * 1000))
  M.last_generation = g
  return g
end

local function exit_text(st)
  if st.signal then return ("killed by %s"):format(st.signame or ("signal " .. st.signal)) end
  return ("exited with code %d"):format(st.code or -1)
end

local start_readiness   -- forward

local function spawn(e)
  local spec = e.spec
  local refused = M.spawn_gate and M.spawn_gate(e)
  if refused then
    e.last_error = refused
    e.last_exit = "not started: " .. refused
    note(e, "not started: %s", refused)
    L.warn("child '%s': not started: %s", e.id, refused)
    fire(e, "spawn_failed", { error = refused })
    return
  end
  e.generation = next_generation(e)
  local handle, err, code, detail = proc.spawn {
    id = e.id,
    argv = spec.cmd,
    env = environment(e),
    cwd = spec.cwd,
    user = spec.user,
    group = spec.group,
    umask = spec.umask,
    rlimits = spec.rlimits,
    output = sink(e),
    on_exit = function(status)
      if e.pid then by_pid[e.pid] = nil end
      e.pid, e.handle = nil, nil
      e.last_exit = exit_text(status)
      note(e, "%s after %.3fs", e.last_exit, status.runtime or 0)
      fire(e, "exit", { status = status })
    end,
  }
  if not handle then
    e.last_error = err
    e.last_exit = "spawn error: " .. tostring(err)
    note(e, "spawn error: %s", err)
    L.error("child '%s': cannot start: %s", e.id, err)
    fire(e, "spawn_failed", { error = err, code = code, detail = detail })
    return
  end
  e.handle, e.pid, e.started_at = handle, handle:pid(), loop.now()
  if e.distributed and spec.partition == "quorum" then proc.watchdog_fence(e.pid) end
  e.last_error = nil
  by_pid[e.pid] = e
  note(e, "started pid %d (generation %d)", e.pid, e.generation)
  L.info("child '%s' started, pid %d", e.id, e.pid)
  fire(e, "spawned")
end

-- Readiness ---------------------------------------------------------------------

local function ready(e)
  if e.readiness then e.readiness() e.readiness = nil end
  if e.rec.state == "running" then fire(e, "ready") end
end

local function readiness_timeout(e, r)
  return loop.timer(r.timeout or 30, 0, function()
    if e.rec.state ~= "running" then return end
    L.warn("child '%s' not ready after %s: stopping it", e.id, grammar.format_duration(r.timeout or 30))
    note(e, "readiness timed out")
    if e.handle then e.handle:kill("KILL") end
  end)
end

-- Each starter returns a function that cancels the check.
local READINESS = {}

function READINESS.immediate(e)
  ready(e)
  return nil
end

function READINESS.pattern(e, r)
  local t = readiness_timeout(e, r)
  e.line_check = function(stream, text)
    if (r.stream == nil or r.stream == "any" or r.stream == stream) and grammar.match(r.pattern, text) then
      ready(e)
    end
  end
  return function() e.line_check = nil t:close() end
end

function READINESS.tcp(e, r)
  local deadline = readiness_timeout(e, r)
  local probe, retry
  local closed = false
  local function try()
    probe = net.probe(r.host, r.port, math.min(1, r.timeout or 30), function(ok)
      probe = nil
      if closed then return end
      if ok then ready(e) else retry = loop.timer(r.interval or 0.1, 0, try) end
    end)
  end
  try()
  return function()
    closed = true
    if probe then probe:close() end
    if retry then retry:close() end
    deadline:close()
  end
end

function READINESS.notify(e, r)
  local t = readiness_timeout(e, r)
  e.notify_ready = function() ready(e) end
  return function() e.notify_ready = nil t:close() end
end

function READINESS.lua(e, r)
  local deadline = readiness_timeout(e, r)
  local t
  t = loop.timer(0, r.interval or 1, function()
    local ok, res = runtime.call(M.budget, r.check, view(e))
    if not ok then
      L.warn("child '%s': readiness check failed: %s", e.id, tostring(res))
    elseif res then
      ready(e)
    end
  end)
  return function() t:close() deadline:close() end
end

start_readiness = function(e)
  local r = e.spec.readiness or { kind = "immediate" }
  local starter = READINESS[r.kind]
  if e.readiness then e.readiness() end
  e.readiness = starter(e, r)
end

-- Actions of the state machine ----------------------------------------------------

local ACTIONS = {}

ACTIONS.spawn = function(e) spawn(e) end

ACTIONS.start_readiness = function(e) start_readiness(e) end

ACTIONS.signal_stop = function(e)
  if e.handle then
    local ok, err = e.handle:kill(e.spec.stop_signal or "TERM")
    if not ok then L.warn("child '%s': stop signal: %s", e.id, err) end
  end
end

ACTIONS.kill = function(e)
  if e.handle then e.handle:kill("KILL") end
end

ACTIONS.arm_stop_timer = function(e)
  arm(e, "stop", e.spec.shutdown.timeout, "stop_timeout")
end

ACTIONS.arm_backoff_timer = function(e)
  arm(e, "backoff", e.rec.delay or 0, "timer")
end

ACTIONS.arm_cooldown_timer = function(e)
  arm(e, "cooldown", e.spec.cooldown, "timer")
end

ACTIONS.arm_reset_timer = function(e)
  arm(e, "reset", e.spec.backoff.reset_after, "reset")
end

ACTIONS.cancel_timer = function(e)
  cancel_all(e)
end

ACTIONS.count_restart = function(e)
  e.restarts = e.restarts + 1
end

local function run_hook(e, name, extra)
  local arg = name == "on_exit" and extra and extra.status or nil
  hooks.run(name, e.spec.hooks, ("child '%s'"):format(e.id), view(e), arg)
end

-- Runs one action; "run_hook:on_x" runs that hook.
local function act(e, action, ctx)
  local hook = action:match("^run_hook:(.+)$")
  if hook then return run_hook(e, hook, ctx) end
  local fn = ACTIONS[action]
  if fn then return fn(e, ctx) end
  L.error("child '%s': unknown action '%s' (a bug in pogo)", e.id, action)
end

local function settle(e)
  if e.rec.state ~= "stopped" then return end
  if e.next_spec then
    -- A changed spec: the old process is gone, start the new version.
    local spec = e.next_spec
    e.next_spec = nil
    e.spec, e.fingerprint = spec, spec_mod.fingerprint(spec)
    e.rec = child.new(spec)
    if e.sink then e.sink:close() e.sink = nil end
    L.info("child '%s' replaced by its new spec", e.id)
    fire(e, "start")
    return
  end
  if e.remove then
    cancel_all(e)
    if e.sink then e.sink:close() e.sink = nil end
    M.entries[e.id] = nil
    L.info("child '%s' removed", e.id)
  end
  if next(on_idle) then M.check_idle() end
end

fire = function(e, event, ctx)
  ctx = ctx or {}
  ctx.now = now()
  ctx.random = ctx.random or math.random
  local before = e.rec.state
  local actions, err = child.step(e.rec, event, ctx)
  if not actions then
    L.debug("child '%s': %s", e.id, err)
    return false
  end
  if e.rec.state ~= before then
    L.debug("child '%s': %s --%s--> %s", e.id, before, event, e.rec.state)
  end
  for _, a in ipairs(actions) do act(e, a, ctx) end
  settle(e)
  if M.on_change and (e.rec.state ~= before or M.entries[e.id] ~= e) then M.on_change(e.id) end
  return true
end
M.fire = fire

-- sd_notify -------------------------------------------------------------------------

local function on_notify(pid, fields)
  local e = by_pid[pid]
  if not e then
    -- A helper process (systemd-notify, socat) sends for its group leader.
    local pgid = sys.getpgid(pid)
    e = pgid and by_pid[pgid]
  end
  if not e then return end
  if fields.STATUS then note(e, "status: %s", fields.STATUS) end
  if fields.READY == "1" and e.notify_ready then e.notify_ready() end
end

-- Public API ------------------------------------------------------------------------

--- Sets up the process mechanism. opts: node, log_dir, run_dir, budget.
function M.init(opts)
  M.node = opts.node or M.node
  M.log_dir = opts.log_dir
  M.budget = opts.budget or M.budget
  if M.log_dir then
    local ok, err = sys.mkdir(M.log_dir, tonumber("750", 8))
    if not ok then
      L.error("cannot create the log directory: %s (child output kept in memory only)", err)
      M.log_dir = nil
    end
  end
  if opts.run_dir and not notify_handle then
    local path = opts.run_dir .. "/" .. M.node .. ".notify"
    os.remove(path)
    local h, err = proc.notify(path, on_notify)
    if h then
      notify_handle, M.notify_path = h, path
    else
      L.warn("sd_notify readiness unavailable: %s", err)
    end
  end
end

--- Makes the set of local children match `desired` (id -> spec): starts new
--- ones, replaces changed ones (stop, then start the new version), stops
--- and forgets removed ones. Unchanged children are not touched.
function M.apply(desired)
  for id, spec in pairs(desired) do
    local e = M.entries[id]
    if not e then
      e = new_entry(spec)
      M.entries[id] = e
      L.info("child '%s' added from %s", id, spec.file or "?")
      fire(e, "start")
    else
      e.remove = false
      local fp = spec_mod.fingerprint(spec)
      if fp ~= e.fingerprint then
        if idle(e) then
          fire(e, "stop")
          e.spec, e.fingerprint, e.rec = spec, fp, child.new(spec)
          if not e.held then fire(e, "start") end
        else
          e.next_spec = spec
          fire(e, "stop")
        end
        L.info("child '%s' changed", id)
      end
    end
  end
  for id, e in pairs(M.entries) do
    if not desired[id] and not e.adhoc then
      e.remove = true
      e.next_spec = nil
      if not fire(e, "stop") then settle(e) end
    end
  end
end

--- Adds children that are not from the children directory (pogo start --file).
function M.add(specs)
  for _, spec in ipairs(specs) do
    local e = M.entries[spec.id]
    if e and not e.adhoc then
      return nil, ("child '%s' is already defined in %s"):format(spec.id, e.spec.file or "?")
    end
  end
  for _, spec in ipairs(specs) do
    local e = M.entries[spec.id]
    if e then
      e.next_spec = spec
      if not fire(e, "stop") then settle(e) end
    else
      e = new_entry(spec)
      e.adhoc = true
      M.entries[spec.id] = e
      fire(e, "start")
    end
  end
  return true
end

--- Runs spec here for the distributed supervisor, its first start with
--- generation at least `generation`: a new child starts, a stopped one
--- starts again, a running one with another spec is replaced (stopped,
--- then started with the new spec).
function M.run(spec, generation)
  local e = M.entries[spec.id]
  if not e then
    e = new_entry(spec)
    e.distributed, e.floor = true, generation
    M.entries[spec.id] = e
    fire(e, "start")
    return
  end
  e.distributed, e.floor, e.held, e.remove = true, generation, false, false
  local fp = spec_mod.fingerprint(spec)
  if idle(e) then
    if e.rec.state ~= "stopped" then fire(e, "stop") end
    if fp ~= e.fingerprint then e.spec, e.fingerprint, e.rec = spec, fp, child.new(spec) end
    fire(e, "start")
  elseif fp ~= e.fingerprint then
    e.next_spec = spec
    fire(e, "stop")
  end
end

--- Stops a child and forgets it once it has stopped.
function M.remove(id)
  local e = M.entries[id]
  if not e then return end
  e.remove, e.next_spec, e.held = true, nil, true
  if not fire(e, "stop") then settle(e) end
  if M.on_change and M.entries[id] ~= e then M.on_change(id) end
end

local function find(id)
  local e = M.entries[id]
  if not e then return nil, ("no child '%s'"):format(tostring(id)) end
  return e
end

function M.start(id)
  local e, err = find(id)
  if not e then return nil, err end
  e.held = false
  if idle(e) then
    if e.rec.state ~= "stopped" then fire(e, "stop") end
    fire(e, "start")
    return true
  end
  return nil, ("child '%s' is already %s"):format(id, e.rec.state)
end

function M.stop(id)
  local e, err = find(id)
  if not e then return nil, err end
  e.held = true
  e.next_spec = nil
  if e.rec.state == "stopped" then return nil, ("child '%s' is not running"):format(id) end
  fire(e, "stop")
  return true
end

function M.restart(id)
  local e, err = find(id)
  if not e then return nil, err end
  e.held = false
  if e.rec.state == "stopped" then fire(e, "start") return true end
  if not fire(e, "restart") then
    fire(e, "stop")
    if e.rec.state == "stopped" then fire(e, "start") end
  end
  return true
end

--- Rows for `pogo ps`, sorted by id.
function M.list()
  local rows = {}
  for _, e in pairs(M.entries) do
    local v = view(e)
    v.spec = nil
    rows[#rows + 1] = v
  end
  table.sort(rows, function(a, b) return a.id < b.id end)
  return rows
end

function M.get(id)
  local e = M.entries[id]
  return e and view(e)
end

--- The last n lines of a child's output: { {time, stream, text}, ... }.
function M.logs(id, n)
  local e, err = find(id)
  if not e then return nil, err end
  if not e.sink then return {} end
  return e.sink:lines(n or 100)
end

--- Calls fn(stream, text, time) for every new line; returns a cancel function.
function M.follow(id, fn)
  local e, err = find(id)
  if not e then return nil, err end
  local key = {}
  e.followers[key] = fn
  return function() e.followers[key] = nil end
end

function M.check_idle()
  for _, e in pairs(M.entries) do
    if e.rec.state ~= "stopped" and e.rec.state ~= "failed" then return end
  end
  local waiting = on_idle
  on_idle = {}
  for _, fn in ipairs(waiting) do fn() end
end

--- Stops every child in parallel; calls done() when all have stopped.
function M.shutdown(done)
  on_idle[#on_idle + 1] = done
  for _, e in pairs(M.entries) do
    e.held = true
    e.next_spec = nil
    if e.rec.state ~= "stopped" then fire(e, "stop") end
  end
  M.check_idle()
end

--- Closes what init() opened (after shutdown).
function M.close()
  for _, e in pairs(M.entries) do
    cancel_all(e)
    if e.sink then e.sink:close() e.sink = nil end
  end
  if notify_handle then notify_handle:close() notify_handle = nil end
end

return M
