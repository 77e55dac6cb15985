-- pogo.agent: one agent's life: load the config, open the control socket,
-- run the loop until SIGTERM/SIGINT, reload on SIGHUP, shut down cleanly.

local config = require "pogo.config"
local control = require "pogo.control"
local core_control = require "pogo.core.control"
local log = require "pogo.log"
local loop = require "pogo.core.loop"
local sys = require "pogo.core.sys"

local L = log.sub("agent")

local M = {
  config = nil,     -- the config in force
  errors = {},      -- path -> message of the last failed load of that file
  path = nil,       -- the config file
}

local server
local signals = {}

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

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

--- Re-reads the config file. A broken file changes nothing; keys that need
--- a restart keep their running value, with a warning.
function M.reload()
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
  M.config = cfg
  control.agent.config = cfg
  apply_log(cfg)
  L.info("reloaded %s", M.path)
  return true
end

--- Stops the loop; run() then cleans up and returns.
function M.shutdown(why)
  L.info("shutting down (%s)", why)
  for _, s in ipairs(signals) do s:close() end
  signals = {}
  if server then server:close(); server = nil end
  loop.stop()
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
  apply_log(cfg)

  local ok, merr = sys.mkdir(dirname(cfg.control), tonumber("700", 8))
  if not ok then
    L.error("cannot create the control socket's directory: %s", merr)
    return 1
  end
  server, err = core_control.listen(cfg.control, control.handle, control.closed)
  if not server then
    L.error("cannot listen on the control socket: %s", err)
    return 1
  end

  signals = {
    loop.signal("TERM", function() M.shutdown("SIGTERM") end),
    loop.signal("INT", function() M.shutdown("SIGINT") end),
    loop.signal("HUP", function() M.reload() end),
  }
  L.info("started (pid %d, pogo %s), control socket %s", sys.pid(),
    require("pogo.core.runtime").version, cfg.control)
  loop.run()
  L.info("stopped")
  return 0
end

return M
