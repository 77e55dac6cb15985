-- Driver of fuzz_control: an agent's control socket as pogo.agent opens
-- it (pogo.core.control.listen with pogo.control.handle and .closed, the
-- node config and the pogo API in pogo.control.agent), without children
-- or a cluster. fuzz_control.c plays the client.
--
-- Requests that run code or act on the host by design are not carried out
-- as sent: eval runs one of a few fixed chunks instead of the client's
-- code (picked by its length, so its other fields, json, width, budget,
-- repl, node, still drive the real evaluation and printing); drain (stops
-- the agent) and start with a file (reads a path of the client's choosing
-- and starts what it names) are answered without running. Every other op
-- runs for real, its validation included.
--
-- Oracles, per connection: the handler never raises (a request that does
-- gets no answer and leaves its client waiting); every request that
-- reached it is counted by the C side too; the answers are as many as the
-- handler returned or sent, each a map with a boolean ok (or a log line)
-- and an error string when not ok.

local root, socket_path = ...
local config = require "pogo.config"
local control = require "pogo.control"
local core_control = require "pogo.core.control"
local check = dofile(root .. "/tests/fuzz/oracle.lua").check

require("pogo.log").setup { level = "error" }   -- dropped requests warn

control.agent.config = assert(config.validate({ name = "fuzz", run_dir = root .. "/build/fuzz" },
  { path = root .. "/build/fuzz/node.lua" }))
control.agent.pogo = require "pogo"
control.agent.shutdown = function() error("the fuzz target never shuts down") end

local VERBOSE = os.getenv("FUZZ_VERBOSE")

local handled, returned, sent = 0, 0, 0
local raised        -- the first error a request raised, if any

local function neutral(req)
  return req.op == "drain" or (req.op == "start" and req.file ~= nil)
end

local CHUNKS = {
  "{ 1, 'two\n\0', { three = { 3.5, 1/0, 0/0, -0.0 } }, print, [true] = {} }, 'x', nil, true",
  "print('a', 1, nil) print() return 2",
  "local t = {} t.t = t return t, string.rep('x', 300)",
  "error('boom')",
  "error({}, 0)",
  "return +",
  "x = (x or 0) + 1 return x",
  "help('pogo.sup')",
  "rpc('fuzz', '1 + 1')",
  "rpc('elsewhere', '1')",
  "rpc(1, 2)",
}

local instrumented = false

-- Counts conn:send, the way answers leave outside the handler's return.
local function instrument(conn)
  if instrumented then return end
  local mt = debug.getmetatable(conn)
  local send = mt.send
  mt.send = function(c, v)
    sent = sent + 1
    return send(c, v)
  end
  instrumented = true
end

local function handle(conn, req)
  instrument(conn)
  handled = handled + 1
  if req.op == "eval" and type(req.code) == "string" then
    req.code = CHUNKS[#req.code % #CHUNKS + 1]
  end
  if neutral(req) then
    returned = returned + 1
    return { ok = true, neutralised = true }
  end
  local ok, resp = pcall(control.handle, conn, req)
  if not ok then
    raised = raised or resp
    error(resp, 0)
  end
  if resp ~= nil then returned = returned + 1 end
  return resp
end

assert(core_control.listen(socket_path, handle, control.closed))

local function check_answer(a)
  check(type(a) == "table", "an answer is a %s", type(a))
  if a.line ~= nil then return end      -- a followed log line
  check(type(a.ok) == "boolean", "an answer has ok = %s", tostring(a.ok))
  if not a.ok then check(type(a.error) == "string", "a failure has error = %s", tostring(a.error)) end
end

return function(answers, requests)
  local h, r, s, e = handled, returned, sent, raised
  handled, returned, sent, raised = 0, 0, 0, nil
  check(e == nil, "a request raised in the handler: %s", tostring(e))
  check(h == requests, "%d requests reached the handler, %d were sent whole", h, requests)
  check(#answers == r + s, "%d answers for %d returned and %d sent", #answers, r, s)
  for _, a in ipairs(answers) do check_answer(a) end
  if VERBOSE then print(("%d requests, %d answers"):format(requests, #answers)) end
end
