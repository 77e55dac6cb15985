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

-- Children: pogo.sup.* ---------------------------------------------------------

local function sup() return require "pogo.supervisor" end

M.sup = {}

--- Every local child: { id, state, pid, uptime, restarts, last_exit, ... }.
--- (global = true will list the whole cluster once the cluster layer is in.)
function M.sup.children(opts)
  return sup().list()
end

--- One child's view, or nil.
function M.sup.child(id) return sup().get(id) end

function M.sup.start(spec_or_id)
  if type(spec_or_id) == "table" then
    local spec, err = require("pogo.spec").normalise(spec_or_id, { path = "(pogo.sup.start)" })
    if not spec then return nil, err end
    return sup().add { spec }
  end
  return sup().start(spec_or_id)
end

function M.sup.stop(id) return sup().stop(id) end
function M.sup.restart(id) return sup().restart(id) end

--- The last n lines of a child's output.
function M.sup.logs(id, n) return sup().logs(id, n) end

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
