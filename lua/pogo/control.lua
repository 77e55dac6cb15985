-- pogo.control: what the agent answers on its control socket.
--
-- A request is a map with an `op`; the answer is a map with `ok` and either
-- the results or an `error`. Each connection has a session: the globals a
-- client defines with `eval` live there, not in the agent, and vanish when
-- it disconnects.

local runtime = require "pogo.core.runtime"
local pretty = require "pogo.pretty"

local M = {}

M.ops = {}
local sessions = {}     -- conn.id -> environment

-- Set by the agent: the current node config and the `pogo` API table.
M.agent = { config = {}, pogo = {} }

-- A session's globals live in env; reads fall through to the shell (the
-- pogo API, help) and then to the agent's standard library.
-- What rpc(node, code) returns: evaluated where it is the value of a
-- whole chunk (the REPL's `rpc("node2", "pogo.sup.children()")`).
local RPC = { __name = "pogo.rpc.call" }
RPC.__tostring = function(r) return ("<rpc to %s: only as a whole chunk at the prompt>"):format(r.node) end

local function new_env()
  local env
  local shell = setmetatable({
    pogo = M.agent.pogo,
    rpc = function(node, code)
      if type(node) ~= "string" or type(code) ~= "string" then
        error("rpc(node, code): node and code must be strings", 2)
      end
      return setmetatable({ node = node, code = code }, RPC)
    end,
    -- help(name) prints through the session's print (captured for the client).
    help = function(what) (rawget(env, "print") or print)(require("pogo.help").help(what)) end,
  }, { __index = _G })
  env = setmetatable({}, { __index = shell })
  return env
end
M.new_env = new_env

local function session(conn)
  local env = sessions[conn.id]
  if not env then
    env = new_env()
    sessions[conn.id] = env
  end
  return env
end

--- Compiles code as an expression if it is one, else as statements.
function M.compile(code, env)
  local fn = load("return " .. code, "=eval", "t", env)
  if fn then return fn end
  return load(code, "=eval", "t", env)
end

local function encode_json(values, n)
  local ok, cjson = pcall(require, "cjson")
  if not ok then return nil, "JSON output needs lua-cjson" end
  local v = values[1]
  if n ~= 1 then
    v = {}
    for i = 1, n do v[i] = values[i] == nil and cjson.null or values[i] end
  end
  local okj, out = pcall(cjson.encode, v)
  if not okj then return nil, "cannot encode as JSON: " .. tostring(out) end
  return out
end

--- Evaluates code in env like `pogo eval` (see ops.eval); the response.
function M.evaluate(env, req)
  local printed = {}
  rawset(env, "print", function(...)
    local parts = table.pack(...)
    for i = 1, parts.n do parts[i] = tostring(parts[i]) end
    printed[#printed + 1] = table.concat(parts, "\t", 1, parts.n)
  end)
  local fn, err = M.compile(req.code, env)
  if not fn then
    rawset(env, "print", nil)
    -- A chunk that stops at <eof> may go on: the REPL asks for more.
    return { ok = false, error = err, incomplete = req.repl and err:match("<eof>$") ~= nil or nil }
  end
  local budget = tonumber(req.budget) or M.agent.config.eval_budget or 5
  local call = req.repl and runtime.call_interruptible or runtime.call
  local res = table.pack(call(budget, fn))
  rawset(env, "print", nil)
  local out_printed = #printed > 0 and table.concat(printed, "\n") .. "\n" or nil
  if not res[1] then
    local msg = tostring(res[2])
    return {
      ok = false,
      error = msg:match("^[^\n]*"),
      traceback = msg,
      printed = out_printed,
    }
  end
  local n = res.n - 1
  local values = table.pack(table.unpack(res, 2, res.n))
  if n == 1 and getmetatable(values[1]) == RPC then
    return { rpc = { node = values[1].node, code = values[1].code }, printed = out_printed }
  end
  local out
  if req.json then
    out, err = encode_json(values, n)
    if not out then return { ok = false, error = err, printed = out_printed } end
  elseif n > 0 then
    -- Printing calls the values' own __tostring, user code like the chunk:
    -- under the budget too, or one looping __tostring would hang the agent.
    local fok, formatted = call(budget, pretty.list, values,
      { color = req.color and true or false, width = tonumber(req.width) or 80 })
    if not fok then
      local msg = tostring(formatted)
      return { ok = false, error = "printing the result: " .. msg:match("^[^\n]*"), traceback = msg,
        printed = out_printed }
    end
    out = formatted
  end
  return { ok = true, n = n, out = out, printed = out_printed }
end

-- eval{code=, json=, budget=, repl=, color=, node=} -> {ok, out, printed} |
-- {ok=false, error, traceback, incomplete}. With node (another node of the
-- cluster) the code runs there, in a session of this connection on that
-- node (pogo.rpc).
function M.ops.eval(conn, req)
  if type(req.code) ~= "string" then
    return { ok = false, error = "eval: 'code' must be a string" }
  end
  if req.node and req.node ~= M.agent.config.name then
    require("pogo.rpc").eval(req.node, conn.id, req, function(resp) conn:send(resp) end)
    return nil
  end
  local resp = M.evaluate(session(conn), req)
  if resp.rpc then
    -- rpc(node, code) as the whole chunk: evaluate code there instead.
    local call = { code = resp.rpc.code, repl = req.repl, color = req.color, width = req.width,
      json = req.json, budget = req.budget, node = resp.rpc.node }
    if call.node == M.agent.config.name then return M.evaluate(session(conn), call) end
    require("pogo.rpc").eval(call.node, conn.id, call, function(r) conn:send(r) end)
    return nil
  end
  return resp
end

-- complete{word=, node=}: the names that complete word (a dotted or
-- colon path like "pogo.sup.st") in this connection's session.
function M.ops.complete(conn, req)
  if type(req.word) ~= "string" then return { ok = false, error = "'word' must be a string" } end
  if req.node and req.node ~= M.agent.config.name then
    require("pogo.rpc").complete(req.node, conn.id, req.word, function(resp) conn:send(resp) end)
    return nil
  end
  return { ok = true, candidates = M.complete(session(conn), req.word) }
end

--- Candidates for word in env: globals, or fields of the table a path
--- names (tables are walked, never called; metatables' __index tables too).
function M.complete(env, word)
  local path, sep, last = word:match("^(.*)([%.:])([%w_]*)$")
  local t
  if path then
    t = env
    for part in path:gmatch("[^%.:]+") do
      if type(t) ~= "table" then t = nil break end
      t = t[part]
    end
  else
    t, last, path, sep = env, word, "", ""
  end
  local out, seen = {}, {}
  local depth = 0
  while type(t) == "table" and depth < 4 do
    for k, v in next, t do
      if type(k) == "string" and k:sub(1, #last) == last and k:match("^[%a_][%w_]*$") and not seen[k] then
        if sep ~= ":" or type(v) == "function" then
          seen[k] = true
          out[#out + 1] = path .. sep .. k .. (type(v) == "function" and "(" or type(v) == "table" and "." or "")
        end
      end
    end
    local mt = getmetatable(t)
    t = type(mt) == "table" and type(mt.__index) == "table" and mt.__index or nil
    depth = depth + 1
  end
  table.sort(out)
  return out
end

function M.ops.ping()
  local cfg = M.agent.config
  return { ok = true, node = cfg.name, version = runtime.version, pid = require("pogo.core.sys").pid() }
end

-- Children ------------------------------------------------------------------

local function sup() return require "pogo.supervisor" end
local followers = {}    -- conn.id -> { cancel functions }

local function dsup()
  local d = require "pogo.dsup"
  return d.running() and d or nil
end

-- ps{global}: this node's children, or with global every child of the
-- cluster (one row per instance, with its node).
function M.ops.ps(_, req)
  if req.global then
    local d = dsup()
    if not d then return { ok = false, error = "--global needs the cluster (secret_file in the node config)" } end
    return { ok = true, children = d.children { match = req.match }, global = true }
  end
  return { ok = true, children = sup().list() }
end

local function by_id(local_fn, cluster_fn)
  return function(_, req)
    if type(req.id) ~= "string" then return { ok = false, error = "'id' must be a string" } end
    local d = dsup()
    local ok, err
    if d then ok, err = cluster_fn(d, req.id) else ok, err = local_fn(req.id) end
    if not ok then return { ok = false, error = err } end
    return { ok = true, child = sup().get(req.id) }
  end
end

M.ops.stop = by_id(function(id) return sup().stop(id) end, function(d, id) return d.stop_id(id) end)
M.ops.restart = by_id(function(id) return sup().restart(id) end, function(d, id) return d.restart_id(id) end)

M.WAIT_POLL = 0.01

-- Answers once every id runs somewhere (or timeout seconds pass) with
-- where each landed, or why it is not running.
local function wait_running(conn, ids, timeout)
  local d = dsup()
  local loop = require "pogo.core.loop"
  local deadline = loop.now() + timeout
  local timer
  timer = loop.timer(0, M.WAIT_POLL, function()
    local placed, missing = {}, {}
    for _, id in ipairs(ids) do
      local where = d.where(id)
      if where then placed[#placed + 1] = { id = id, node = where }
      else missing[#missing + 1] = id end
    end
    if #missing == 0 or loop.now() >= deadline then
      timer:close()
      if #missing == 0 then
        conn:send { ok = true, started = ids, placed = placed }
        return
      end
      local why = {}
      for _, id in ipairs(missing) do
        local x = d.explain(id) or {}
        local reason = x.error or (x.waiting and x.waiting.reason) or x.pending
          or (x.assigned and ("assigned to " .. x.assigned .. ", not running yet")) or "unknown"
        why[#why + 1] = ("%s: %s"):format(id, reason)
      end
      conn:send { ok = false, placed = placed, error = "not running after " .. timeout .. "s: " .. table.concat(why, "; ") }
    end
  end)
end

function M.ops.start(conn, req)
  local d = dsup()
  local ids
  if req.file then
    local text, rerr = require("pogo.sandbox").read(req.file)
    if not text then return { ok = false, error = rerr } end
    local specs, err = require("pogo.spec").load_file(req.file, {
      budget = M.agent.config.budget, env = { pogo = M.agent.pogo }, src = text,
    })
    if not specs then return { ok = false, error = err } end
    if d then
      -- Answered once every request is made (and, with wait, running).
      local wait = req.wait
      ids = d.start_specs(specs, text, req.file, function()
        if wait then wait_running(conn, ids, tonumber(wait) or 10)
        else conn:send { ok = true, started = ids } end
      end)
      return nil
    else
      local ok, aerr = sup().add(specs)
      if not ok then return { ok = false, error = aerr } end
      ids = {}
      for i, s in ipairs(specs) do ids[i] = s.id end
    end
  elseif type(req.id) ~= "string" then
    return { ok = false, error = "'id' must be a string" }
  elseif d then
    local ok, err = d.start_id(req.id)
    if not ok then return { ok = false, error = err } end
    ids = { req.id }
  else
    return by_id(function(id) return sup().start(id) end)(conn, req)
  end
  if req.wait and d then
    wait_running(conn, ids, tonumber(req.wait) or 10)
    return nil
  end
  return { ok = true, started = ids }
end

function M.ops.explain(_, req)
  if type(req.id) ~= "string" then return { ok = false, error = "'id' must be a string" } end
  local d = dsup()
  if not d then return { ok = false, error = "explain needs the cluster (secret_file in the node config)" } end
  local x, err = d.explain(req.id)
  if not x then return { ok = false, error = err } end
  return { ok = true, explain = x }
end

-- drain: hand this node's children over, answer, then shut the agent down.
function M.ops.drain(conn)
  M.agent.shutdown("pogo drain", { drained = function(moved, left)
    conn:send { ok = true, moved = moved, left = left }
  end })
  if not dsup() then return { ok = true, moved = 0, left = 0 } end
  return nil
end

-- logs{id, n, follow}: the last n lines; with follow, then every new line
-- as its own message until the client goes away.
function M.ops.logs(conn, req)
  if type(req.id) ~= "string" then return { ok = false, error = "'id' must be a string" } end
  local lines, err = sup().logs(req.id, tonumber(req.n) or 20)
  if not lines then return { ok = false, error = err } end
  if req.follow then
    local cancel = sup().follow(req.id, function(stream, text, time)
      conn:send { line = { time = time, stream = stream, text = text } }
    end)
    followers[conn.id] = followers[conn.id] or {}
    table.insert(followers[conn.id], cancel)
  end
  return { ok = true, lines = lines, follow = req.follow or nil }
end

-- Cluster ---------------------------------------------------------------------

function M.ops.members()
  return { ok = true, nodes = M.agent.pogo.cluster.nodes() }
end

function M.ops.groups(_, req)
  if not dsup() then return { ok = false, error = "groups needs the cluster (secret_file in the node config)" } end
  local pg = require "pogo.pg"
  local wanted = req.scope
  if wanted ~= nil and (type(wanted) ~= "string" or #wanted == 0 or #wanted > pg.NAME_MAX) then
    return { ok = false, error = ("'scope' must be a string of 1 to %d bytes"):format(pg.NAME_MAX) }
  end
  local out = {}
  local scopes = wanted and { wanted } or pg.scopes()
  for _, scope in ipairs(scopes) do
    local groups = {}
    for _, g in ipairs(pg.groups(scope)) do
      groups[#groups + 1] = { name = g, members = pg.members(scope, g) }
    end
    out[#out + 1] = { scope = scope, groups = groups }
  end
  return { ok = true, scopes = out }
end

--- The control server's request callback.
function M.handle(conn, req)
  local op = M.ops[req.op]
  if not op then
    return { ok = false, error = ("unknown request '%s'"):format(tostring(req.op)) }
  end
  return op(conn, req)
end

--- The control server's close callback.
function M.closed(conn)
  sessions[conn.id] = nil
  if package.loaded["pogo.rpc"] then package.loaded["pogo.rpc"].closed(conn.id) end
  for _, cancel in ipairs(followers[conn.id] or {}) do cancel() end
  followers[conn.id] = nil
end

return M
