-- pogo: the API that user code (hooks, policies, the REPL, `pogo eval`)
-- sees as the global `pogo`. Each field is a module of its own; this file
-- only assembles them.

local runtime = require "pogo.core.runtime"

local M = {}

M.version = runtime.version
M.log = {
  debug = require("pogo.log").debug,
  info = require("pogo.log").info,
  warn = require("pogo.log").warn,
  error = require("pogo.log").error,
}

-- The agent fills these in at start and on every reload.
M.cluster = {}
M.errors = {}

--- This node: name, listen address, tags, weight.
function M.cluster.self()
  local cfg = require("pogo.agent").config
  if not cfg then return nil end
  return {
    name = cfg.name,
    listen = cfg.listen,
    advertise = cfg.advertise or cfg.listen,
    tags = cfg.tags,
    weight = cfg.weight,
  }
end

--- The live nodes of the cluster, sorted by name (this node only until the
--- cluster layer is in).
function M.cluster.nodes()
  local me = M.cluster.self()
  return me and { me } or {}
end

--- The node config in force (a copy).
function M.config()
  local cfg = require("pogo.agent").config
  if not cfg then return nil end
  local copy = {}
  for k, v in pairs(cfg) do copy[k] = v end
  return copy
end

--- Errors of the last load of each user file that failed: path -> message.
--- A file that loads cleanly again drops out.
function M.errors()
  local out = {}
  for k, v in pairs(require("pogo.agent").errors) do out[k] = v end
  return out
end

return M
