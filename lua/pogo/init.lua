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

M.cluster = {}

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

local function cluster_running()
  local ok, cluster = pcall(require, "pogo.cluster")
  return ok and cluster.default and cluster.default() and cluster
end

--- Every known node, sorted by name: { name, addr, state, incarnation,
--- rtt, meta, self }. Without a cluster key, only this node.
function M.cluster.nodes()
  local cluster = cluster_running()
  if cluster then return cluster.nodes() end
  local me = M.cluster.self()
  if not me then return {} end
  me.state, me.self = "up", true
  return { me }
end

--- Calls fn(node) when a node comes up ("up") or goes down ("down");
--- returns a cancel function.
function M.cluster.on(event, fn)
  local cluster = cluster_running()
  if not cluster then return function() end end
  return cluster.on(event, fn)
end

-- Placement helpers: pogo.placement.* (see pogo.placement) ---------------------------

M.placement = setmetatable({}, {
  __index = function(_, name) return require("pogo.placement").readonly[name] end,
})

-- Process groups: pogo.pg.* (see pogo.pg) ------------------------------------------

M.pg = setmetatable({}, {
  __index = function(_, name)
    local pg = require "pogo.pg"
    local fn = pg[name]
    if type(fn) ~= "function" then return nil end
    return fn
  end,
})

-- Children: pogo.sup.* ---------------------------------------------------------

local function sup() return require "pogo.supervisor" end

M.sup = {}

--- Every local child: { id, state, pid, uptime, restarts, last_exit, ... }.
--- (global = true will list the whole cluster once the cluster layer is in.)
function M.sup.children(_opts)
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
