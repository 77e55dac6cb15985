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

--- The links of this node: { { peer, addr, state, ... }, ... }.
function M.cluster.links()
  if not cluster_running() then return {} end
  return require("pogo.core.link").links()
end

-- Placement helpers: pogo.placement.* (see pogo.placement) ---------------------------

M.placement = setmetatable({
  --- What would move, and where, if the policy in path were loaded (a dry
  --- run before a live reload): { { id, from, to }, ... }.
  preview = function(path)
    local d = require "pogo.dsup"
    if not d.running() then return nil, "preview needs the cluster (secret_file in the node config)" end
    return d.preview(path)
  end,
}, {
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

local function dsup()
  local d = require "pogo.dsup"
  return d.running() and d or nil
end

--- This node's children: { id, state, pid, uptime, restarts, last_exit, ... }.
--- With { global = true }, every child of the cluster, one row per instance:
--- { id, node, state, pid, generation, restarts, uptime, reason };
--- opts.match filters ids with a Lua pattern.
function M.sup.children(opts)
  opts = opts or {}
  if opts.global then
    local d = dsup()
    if not d then error("pogo.sup.children{global=true} needs the cluster (secret_file in the node config)", 2) end
    return d.children(opts)
  end
  return sup().list()
end

--- One local child's view, or nil.
function M.sup.child(id) return sup().get(id) end

--- Starts children: a spec table (or a list of them) or the id of a stopped
--- child. In a cluster it is a request to every node; a spec given as a
--- table travels as Lua source, so it cannot hold functions (hooks): put
--- those in a spec file and use `pogo start --file`.
function M.sup.start(spec_or_id)
  local d = dsup()
  if type(spec_or_id) == "table" then
    local list = spec_or_id[1] and spec_or_id or { spec_or_id }
    local specs, sp_mod = {}, require "pogo.spec"
    for i, t in ipairs(list) do
      local s, err = sp_mod.normalise(t, { path = "(pogo.sup.start)", index = i })
      if not s then return nil, err end
      specs[i] = s
    end
    if not d then return sup().add(specs) end
    local text, err = require("pogo.pretty").literal(list)
    if not text then return nil, "pogo.sup.start: " .. err end
    return d.start_specs(specs, "return " .. text, "(pogo.sup.start)")
  end
  if d then return d.start_id(spec_or_id) end
  return sup().start(spec_or_id)
end

function M.sup.stop(id)
  local d = dsup()
  if d then return d.stop_id(id) end
  return sup().stop(id)
end

function M.sup.restart(id)
  local d = dsup()
  if d then return d.restart_id(id) end
  return sup().restart(id)
end

--- Where a child should run and why, where it runs, what is awaited.
function M.sup.explain(id)
  local d = dsup()
  if not d then return nil, "explain needs the cluster (secret_file in the node config)" end
  return d.explain(id)
end

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

--- How busy the agent's loop has been since the last call (the first call
--- starts measuring): iterations, mean_ms and max_ms (wall clock),
--- max_cpu_ms (the loop's own work in its busiest iteration),
--- max_gc_step_ms, and the slowest Lua callback with slowest_call_ms.
function M.busy()
  return require("pogo.core.loop").busy()
end

return M
