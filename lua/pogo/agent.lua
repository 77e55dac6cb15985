-- pogo.agent: one agent's life. Load the config, become the subreaper with
-- a watchdog, open the control socket, load hooks and children, run the
-- loop until SIGTERM/SIGINT, reload on SIGHUP or when a watched file
-- changes, and on the way out stop every child before closing.

local children = require "pogo.children"
local config = require "pogo.config"
local control = require "pogo.control"
local dsup = require "pogo.dsup"
local core_control = require "pogo.core.control"
local fswatch = require "pogo.core.fswatch"
local hooks = require "pogo.hooks"
local log = require "pogo.log"
local loop = require "pogo.core.loop"
local proc = require "pogo.core.proc"
local supervisor = require "pogo.supervisor"
local sys = require "pogo.core.sys"
local util = require "pogo.util"

local L = log.sub("agent")

local M = {
  config = nil,     -- the config in force
  errors = {},      -- path -> message of the last failed load of that file
  path = nil,       -- the config file
}

M.DEBOUNCE = 0.05
M.SHUTDOWN_GRACE = 2   -- seconds past the longest shutdown timeout
M.GC_STEP_MS = 0.5     -- garbage collection per loop iteration (pogo.core.loop.pace_gc)

local server
local signals = {}
local source          -- the children directory source
local watches = {}    -- directory watches of the config and hooks files
local reload_timer
local stopping = false

local function apply_log(cfg)
  local ok, err = log.setup { node = cfg.name, level = cfg.log.level, file = cfg.log.file or false }
  if not ok then
    L.error("cannot open log file: %s (logging to stderr)", err)
  end
end

local function same(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

--- Loads the hooks file of cfg; a broken file keeps the previous hooks.
local function load_hooks(cfg)
  hooks.budget = cfg.budget
  if not cfg.hooks then hooks.global = {} return end
  local t, err = hooks.load(cfg.hooks)
  if not t then
    M.errors[cfg.hooks] = err
    L.error("%s (keeping the previous hooks)", err)
    return
  end
  M.errors[cfg.hooks] = nil
  hooks.global = t
end

local function open_children(cfg)
  if source then source:close() source = nil end
  if not cfg.children then
    supervisor.apply({})
    return
  end
  source = children.new(cfg.children, {
    on_change = function(desired, files)
      if dsup.running() then dsup.apply_files(desired, files) else supervisor.apply(desired) end
    end,
    errors = M.errors, budget = cfg.budget,
  })
  source:start()
end

local schedule_reload   -- forward

-- Watches the directories of the config and hooks files; a change of
-- either file reloads (debounced), like SIGHUP.
local function watch_files(cfg)
  for _, w in ipairs(watches) do w:close() end
  watches = {}
  local names = {}
  for _, path in pairs { M.path, cfg.hooks or false, cfg.secret_file or false, cfg.placement or false } do
    if path then
      local dir = util.dirname(path)
      names[dir] = names[dir] or {}
      names[dir][util.basename(path)] = true
    end
  end
  for dir, wanted in pairs(names) do
    local w, err = fswatch.dir(dir, function(name)
      if name and wanted[name] then schedule_reload() end
    end)
    if w then watches[#watches + 1] = w
    else L.warn("cannot watch %s: %s (use SIGHUP to reload)", dir, err) end
  end
end

-- The cluster: links, membership and process groups ----------------------------

local cluster_on = false

local function node_meta(cfg)
  return { tags = cfg.tags, weight = cfg.weight, version = require("pogo.core.runtime").version }
end

local function start_cluster(cfg)
  if not cfg.secret_file then
    if #cfg.seeds > 0 then
      L.warn("seeds are set but secret_file is not: running as a single node")
    end
    return true
  end
  local cluster = require "pogo.cluster"
  local ok, err = cluster.start {
    name = cfg.name, listen = cfg.listen, advertise = cfg.advertise,
    seeds = cfg.seeds, keyfile = cfg.secret_file, meta = node_meta(cfg),
  }
  if not ok then
    L.error("cannot start the cluster layer: %s", err)
    return false, err
  end
  cluster_on = true
  require("pogo.rpc").start()
  local pg = require("pogo.pg").attach(cluster.default())
  dsup.start {
    cluster = cluster.default(), pg = pg, budget = cfg.budget, expect = cfg.expect,
    lease = cfg.lease, policy = cfg.placement, seeds = cfg.seeds,
  }
  if cfg.placement then
    local _, perr = dsup.policy_error()
    M.errors[cfg.placement] = perr
  end
  cluster.on("up", function(node)
    hooks.run("on_node_up", nil, ("node '%s'"):format(node.name), node)
  end)
  cluster.on("down", function(node, reason)
    hooks.run("on_node_down", nil, ("node '%s'"):format(node.name), node, reason)
  end)
  return true
end

local function reload_cluster(cfg, old)
  if not cluster_on then return end
  local cluster = require "pogo.cluster"
  if not same(node_meta(cfg), node_meta(old)) then cluster.set_meta(node_meta(cfg)) end
  local _, perr = dsup.set_policy(cfg.placement)
  if cfg.placement then M.errors[cfg.placement] = perr end
  local ok, err = require("pogo.core.link").reload_keys()
  if not ok then
    M.errors[cfg.secret_file] = err
    L.error("%s (keeping the previous keys)", err)
  else
    M.errors[cfg.secret_file] = nil
  end
end

--- Re-reads the config, the hooks and the children. A broken config
--- changes nothing; keys that need a restart keep their running value.
function M.reload()
  if stopping then return false end
  L.info("reloading %s", M.path)
  local cfg, err = config.load(M.path)
  if not cfg then
    M.errors[M.path] = err
    L.error("reload failed, keeping the running config: %s", err)
    return false, err
  end
  M.errors[M.path] = nil
  for _, k in ipairs(config.RESTART_KEYS) do
    if not same(cfg[k], M.config[k]) then
      L.warn("'%s' changed in %s; it takes effect after a restart", k, M.path)
      cfg[k] = M.config[k]
    end
  end
  local old = M.config
  M.config = cfg
  control.agent.config = cfg
  apply_log(cfg)
  supervisor.budget = cfg.budget
  load_hooks(cfg)
  watch_files(cfg)
  reload_cluster(cfg, old)
  if cfg.children ~= old.children then
    open_children(cfg)
  elseif source then
    source.budget = cfg.budget
    source:apply()
  end
  L.info("reloaded %s", M.path)
  return true
end

schedule_reload = function()
  if reload_timer then
    reload_timer:again(M.DEBOUNCE, 0)
  else
    reload_timer = loop.timer(M.DEBOUNCE, 0, function() M.reload() end)
  end
end

local function longest_shutdown()
  local longest = 0
  for _, e in pairs(supervisor.entries) do
    local t = e.spec.shutdown and e.spec.shutdown.timeout or 0
    if t > longest then longest = t end
  end
  return longest
end

local stop_children   -- forward

local function finish()
  dsup.close()
  if cluster_on then require("pogo.cluster").stop() cluster_on = false end
  if source then source:close() source = nil end
  for _, w in ipairs(watches) do w:close() end
  watches = {}
  if reload_timer then reload_timer:close() reload_timer = nil end
  supervisor.close()
  if server then server:close() server = nil end
  proc.watchdog_stop()
  loop.stop()
end

--- Stops every child (in parallel, each with its own stop sequence), then
--- closes everything; run() returns once the loop ends.
function M.shutdown(why, opts)
  opts = opts or {}
  if stopping then
    L.warn("second %s: stopping now", why)
    finish()
    return
  end
  stopping = true
  L.info("shutting down (%s)", why)
  if source then source:close() source = nil end
  if dsup.running() and not opts.no_drain then
    -- Hand the children to the other nodes first (nothing to do alone).
    dsup.drain(M.config.drain_timeout, function(moved, left)
      if moved > 0 then L.info("drained: %d children handed over, %d left here", moved, left) end
      if opts.drained then opts.drained(moved, left) end
      dsup.close()
      stop_children()
    end)
    return
  end
  dsup.close()
  stop_children()
end

stop_children = function()
  local deadline = loop.timer(longest_shutdown() + M.SHUTDOWN_GRACE, 0, function()
    L.error("children still running after the shutdown deadline; the watchdog kills them")
    finish()
  end)
  supervisor.shutdown(function()
    deadline:close()
    finish()
  end)
end

--- Runs an agent from the config file at path; returns the exit status.
function M.run(path)
  local cfg, err = config.load(path)
  if not cfg then
    io.stderr:write("pogo agent: ", err, "\n")
    return 1
  end
  M.path, M.config = path, cfg
  control.agent.config = cfg
  control.agent.pogo = require "pogo"
  control.agent.shutdown = M.shutdown
  require("pogo.core.runtime").catch_interrupts()   -- a REPL's Ctrl-C
  apply_log(cfg)

  local ok, merr = sys.mkdir(util.dirname(cfg.control), tonumber("700", 8))
  if not ok then
    L.error("cannot create the control socket's directory: %s", merr)
    return 1
  end
  server, err = core_control.listen(cfg.control, control.handle, control.closed)
  if not server then
    L.error("cannot listen on the control socket: %s", err)
    return 1
  end

  -- Orphans of our children come to us, and a watchdog outlives us long
  -- enough to kill whatever we started if we die.
  local sok, serr = proc.subreaper()
  if not sok then L.warn("cannot become a child subreaper: %s", serr) end
  local wok, werr = proc.watchdog_start()
  if not wok then L.error("cannot start the watchdog: %s", werr) end

  signals = {
    loop.signal("TERM", function() M.shutdown("SIGTERM") end),
    loop.signal("INT", function() M.shutdown("SIGINT") end),
    loop.signal("HUP", function() M.reload() end),
  }
  supervisor.init { node = cfg.name, log_dir = cfg.log_dir, run_dir = util.dirname(cfg.control), budget = cfg.budget }
  load_hooks(cfg)
  watch_files(cfg)
  if not start_cluster(cfg) then
    finish()
    return 1
  end
  L.info("started (pid %d, pogo %s), control socket %s", sys.pid(),
    require("pogo.core.runtime").version, cfg.control)
  open_children(cfg)
  loop.pace_gc(M.GC_STEP_MS)
  loop.run()
  for _, s in ipairs(signals) do s:close() end
  signals = {}
  L.info("stopped")
  return 0
end

return M
