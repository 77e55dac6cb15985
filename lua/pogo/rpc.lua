-- pogo.rpc: `pogo eval --node`, `pogo repl --node` and `:rpc` - code run on
-- another node of the cluster, through the local agent's link to it.
--
-- A request { t = "rpc", op = "eval" | "complete", id = n, session =, ... }
-- goes to the node; it answers { t = "rpc", op = "reply", id = n, resp = }
-- with what its control socket would have answered. Each (caller node,
-- session) has its own environment there, dropped with the caller's
-- session (op "end") or when the caller's node goes down. An evaluation
-- there runs under that node's eval budget: a Ctrl-C cannot reach it.

local log = require "pogo.log"
local loop = require "pogo.core.loop"

local L = log.sub("rpc")

local M = {}

M.KIND = "rpc"
M.GRACE = 2         -- seconds past the remote budget before the caller gives up

local pending = {}  -- id -> { done = fn(resp), timer = }
local envs = {}     -- "node\0session" -> environment, on the serving side
local next_id = 0
local attached = nil

local function cluster()
  local ok, c = pcall(require, "pogo.cluster")
  return ok and c.default() or nil
end

local function control() return require "pogo.control" end

local function serve(from, msg)
  local key = from .. "\0" .. tostring(msg.session)
  if msg.op == "end" then envs[key] = nil return end
  local env = envs[key]
  if not env then
    env = control().new_env()
    envs[key] = env
  end
  local resp
  if msg.op == "eval" and type(msg.code) == "string" then
    resp = control().evaluate(env, { code = msg.code, json = msg.json, color = msg.color, width = msg.width,
      repl = msg.repl })
    if resp.rpc then resp = { ok = false, error = "rpc: an rpc() inside an rpc is not followed" } end
  elseif msg.op == "complete" and type(msg.word) == "string" then
    resp = { ok = true, candidates = control().complete(env, msg.word) }
  else
    resp = { ok = false, error = "rpc: bad request" }
  end
  resp.node = control().agent.config.name
  cluster():send(from, { t = M.KIND, op = "reply", id = msg.id, resp = resp })
end

local function on_message(from, msg)
  if msg.op == "reply" then
    local p = pending[msg.id]
    if not p then return end
    pending[msg.id] = nil
    p.timer:close()
    p.done(type(msg.resp) == "table" and msg.resp or { ok = false, error = "rpc: bad reply from " .. from })
  else
    local ok, err = pcall(serve, from, msg)
    if not ok then L.error("request from %s failed: %s", from, err) end
  end
end

local function attach()
  local c = cluster()
  if not c then return nil end
  if attached ~= c then
    c:handle(M.KIND, on_message)
    c:on("down", function(node)
      for key in pairs(envs) do
        if key:sub(1, #node.name + 1) == node.name .. "\0" then envs[key] = nil end
      end
    end)
    attached = c
  end
  return c
end

local used = {}     -- conn_id -> { node = true }: sessions this caller has elsewhere

local function call(node, msg, timeout, done)
  used[msg.session] = used[msg.session] or {}
  used[msg.session][node] = true
  local c = attach()
  if not c then return done { ok = false, error = "--node needs the cluster (secret_file in the node config)" } end
  next_id = next_id + 1
  msg.t, msg.id = M.KIND, next_id
  local ok, err = c:send(node, msg)
  if not ok then return done { ok = false, error = err } end
  local id = next_id
  pending[id] = {
    done = done,
    timer = loop.timer(timeout, 0, function()
      pending[id] = nil
      done { ok = false, error = ("no answer from %s within %gs"):format(node, timeout) }
    end),
  }
end

--- Evaluates req.code on node in the session of conn_id there; done(resp).
function M.eval(node, conn_id, req, done)
  local budget = tonumber(req.budget) or control().agent.config.eval_budget or 5
  call(node, { op = "eval", session = conn_id, code = req.code, json = req.json, color = req.color,
    width = req.width, repl = req.repl }, budget + M.GRACE, done)
end

--- Completion candidates of word on node; done(resp).
function M.complete(node, conn_id, word, done)
  call(node, { op = "complete", session = conn_id, word = word }, M.GRACE, done)
end

--- Ends the sessions a closed control connection had on other nodes.
function M.closed(conn_id)
  local nodes = used[conn_id]
  used[conn_id] = nil
  if not nodes or not attached then return end
  for node in pairs(nodes) do attached:send(node, { t = M.KIND, op = "end", session = conn_id }) end
end

--- Serves requests from other nodes (the agent calls this when the cluster starts).
function M.start() attach() end

return M
