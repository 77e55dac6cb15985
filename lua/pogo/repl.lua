-- pogo.repl: `pogo repl`, a Lua REPL attached to an agent.
--
-- The client edits lines (libedit: history, Ctrl-R, tab completion), sends
-- each chunk to the agent's control socket, and prints what comes back.
-- The agent evaluates in an environment of this session (pogo.control):
-- locals and globals persist from line to line and stay in the session.
-- An incomplete chunk (the parser stopped at <eof>) continues on the next
-- line under the secondary prompt. Ctrl-C at the prompt drops the line;
-- while the agent evaluates, it interrupts the evaluation (SIGUSR2 to the
-- agent). Ctrl-D leaves. Lines starting with ':' are commands (:help).

local cli = require "pogo.cli"
local core_control = require "pogo.core.control"
local edit = require "pogo.core.edit"
local grammar = require "pogo.grammar"
local lpeg = require "lpeg"
local sys = require "pogo.core.sys"

local M = {}

M.HISTORY_MAX = 1000

local HELP = [[
Lua: any expression or statement; =expr prints expr. Multi-line chunks
continue until complete. help() lists the API, help("pogo.sup.start") one
function. Ctrl-C interrupts, Ctrl-D leaves, Ctrl-R searches the history,
Tab completes globals and fields (pogo.sup.<Tab>).
Commands:
  :nodes                 the nodes of the cluster
  :ps [GLOB]             every child of the cluster (ids matching GLOB)
  :explain ID            where ID should run, and why
  :logs ID [N]           the last N lines of a child's output (this node's)
  :watch EXPR [SECONDS]  evaluate EXPR every SECONDS (default 2) until Ctrl-C
  :rpc NODE CODE         run CODE on another node
  :help                  this text]]

-- Commands: ":name" and the rest of the line, split at blanks.
local P, S, C, Ct = lpeg.P, lpeg.S, lpeg.C, lpeg.Ct
local blank = S(" \t") ^ 1
local arg = C((1 - S(" \t")) ^ 1)
local COMMAND = P(":") * C(lpeg.R("az") ^ 1) * Ct((blank * arg) ^ 0) * S(" \t") ^ 0 * -1

--- ":ps web-*" -> "ps", { "web-*" }; nil when line is not a command.
function M.parse_command(line)
  local name, args = COMMAND:match(line)
  return name, args
end

--- A shell glob (* and ?) as an anchored Lua pattern.
function M.glob_pattern(glob)
  local pat = glob:gsub("[%^%$%(%)%%%.%[%]%+%-]", "%%%0"):gsub("%*", ".*"):gsub("%?", ".")
  return "^" .. pat .. "$"
end

local Session = {}
Session.__index = Session

function Session:request(req)
  req.node = req.node or self.remote
  edit.busy(true)
  local ok, err = self.client:send(req)
  local resp
  if ok then resp, err = self.client:recv() end
  edit.busy(false)
  if not resp then
    error({ lost = ("connection to the agent lost: %s"):format(tostring(err)) }, 0)
  end
  return resp
end

-- An error and the frames of its traceback that are the user's: the
-- agent's own frames (pogo's Lua files, C functions, tail calls) are left
-- out, and at most M.TRACEBACK_LINES frames are kept.
M.TRACEBACK_LINES = 5
local function short_traceback(tb)
  local lines, frames = {}, 0
  for line in (tb or ""):gmatch("[^\n]+") do
    if #lines == 0 or line == "stack traceback:" then
      lines[#lines + 1] = line
    elseif not (line:find("/pogo/", 1, true) or line:find("[C]:", 1, true) or line:find("(...tail calls...)", 1, true)) then
      frames = frames + 1
      if frames > M.TRACEBACK_LINES then lines[#lines + 1] = "\t..." break end
      lines[#lines + 1] = line
    end
  end
  if lines[#lines] == "stack traceback:" then lines[#lines] = nil end
  return table.concat(lines, "\n")
end

function Session:show(resp)
  if resp.printed then io.stdout:write(resp.printed) end
  if resp.ok then
    if resp.out then io.stdout:write(resp.out, "\n") end
  else
    local text = resp.traceback and short_traceback(resp.traceback) or tostring(resp.error)
    io.stderr:write(self.color and "\27[31m" or "", text, self.color and "\27[0m" or "", "\n")
  end
  io.stdout:flush()
end

function Session:eval(code)
  return self:request { op = "eval", code = code, repl = true, color = self.color, width = self.width }
end

local COMMANDS = {}

function COMMANDS.help() print(HELP) end

function COMMANDS.nodes(self)
  local resp = self:request { op = "members" }
  if resp.ok then io.stdout:write(cli.members_text(resp.nodes)) else self:show(resp) end
end

function COMMANDS.ps(self, args)
  local match = args[1] and M.glob_pattern(args[1]) or nil
  local resp = self:request { op = "ps", global = true, match = match }
  if resp.ok then return io.stdout:write(cli.ps_global_table(resp.children)) end
  resp = self:request { op = "ps" }     -- an agent without a cluster: its own children
  if not resp.ok then return self:show(resp) end
  local rows = {}
  for _, r in ipairs(resp.children) do
    if not match or r.id:find(match) then rows[#rows + 1] = r end
  end
  io.stdout:write(cli.ps_table(rows))
end

function COMMANDS.explain(self, args)
  if not args[1] then return print("usage: :explain ID") end
  local resp = self:request { op = "explain", id = args[1] }
  if resp.ok then io.stdout:write(cli.explain_text(resp.explain)) else self:show(resp) end
end

function COMMANDS.logs(self, args)
  if not args[1] then return print("usage: :logs ID [N]") end
  local resp = self:request { op = "logs", id = args[1], n = tonumber(args[2]) or 20 }
  if not resp.ok then return self:show(resp) end
  for _, l in ipairs(resp.lines) do
    print(("%s %s %s"):format(os.date("!%H:%M:%S", math.floor(l.time or 0)), l.stream, l.text))
  end
end

function COMMANDS.watch(self, args)
  local interval = 2
  if #args > 1 then
    local secs = grammar.duration(args[#args])
    if secs then interval = secs table.remove(args) end
  end
  local expr = table.concat(args, " ")
  if expr == "" then return print("usage: :watch EXPR [SECONDS]") end
  edit.interrupted()
  repeat
    if self.color then io.stdout:write("\27[H\27[2J") end
    print(("every %gs: %s  (Ctrl-C stops)"):format(interval, expr))
    self:show(self:eval(expr))
  until edit.interrupted() or not edit.sleep(interval) or edit.interrupted()
end

function COMMANDS.rpc(self, args)
  if #args < 2 then return print("usage: :rpc NODE CODE") end
  local node = table.remove(args, 1)
  self:show(self:request { op = "eval", code = table.concat(args, " "), repl = true, color = self.color, node = node })
end

function Session:command(line)
  local name, args = M.parse_command(line)
  local fn = name and COMMANDS[name]
  if not fn then
    print(("unknown command %s (:help lists them)"):format(line:match("^%S+")))
    return
  end
  fn(self, args)
end

local function history_path()
  local home = os.getenv("HOME")
  if os.getenv("POGO_HISTORY") then return os.getenv("POGO_HISTORY") end
  return home and (home .. "/.pogo_history") or nil
end

--- Runs the REPL on the agent at socket path (remote: a node to reach
--- through it). Returns the exit status.
function M.run(path, remote)
  local client, err = core_control.connect(path)
  if not client then
    io.stderr:write("pogo repl: cannot reach the agent: ", err, "\n")
    return 1
  end
  local self = setmetatable({ client = client, remote = remote, color = sys.isatty(1),
    width = tonumber(os.getenv("COLUMNS")) or 80 }, Session)
  local hello = self:request { op = "ping" }
  if not hello.ok then
    io.stderr:write("pogo repl: ", tostring(hello.error), "\n")
    return 1
  end
  local name = remote or hello.node
  if remote then
    local probe = self:eval("pogo.cluster.self().name")
    if not probe.ok then
      io.stderr:write("pogo repl: ", tostring(probe.error), "\n")
      return 1
    end
  end
  edit.forward_interrupts(hello.pid)
  edit.complete(function(word)
    local ok, resp = pcall(self.request, self, { op = "complete", word = word })
    return ok and resp.ok and resp.candidates or {}
  end)
  local hist = history_path()
  if hist then edit.load_history(hist) end
  print(("pogo %s on %s%s. help() for the API, :help for commands, Ctrl-D to leave.")
    :format(hello.version or "?", name, remote and (" (through " .. hello.node .. ")") or ""))

  local buffer
  local status = 0
  while true do
    local line, why = edit.readline(buffer and ">> " or (name .. "> "))
    if not line then
      if why == "eof" then print() break end
      buffer = nil      -- Ctrl-C: drop what was typed
      print()
    elseif not buffer and line:match("^%s*:") then
      edit.add_history(line)
      local ok, e = pcall(self.command, self, line:match("^%s*(.-)%s*$"))
      if not ok then
        if type(e) == "table" and e.lost then io.stderr:write(e.lost, "\n") status = 1 break end
        io.stderr:write(tostring(e), "\n")
      end
    elseif buffer or line:match("%S") then
      buffer = buffer and (buffer .. "\n" .. line) or line
      local code = buffer:gsub("^%s*=", "", 1)
      local ok, resp = pcall(self.eval, self, code)
      if not ok then
        io.stderr:write(type(resp) == "table" and resp.lost or tostring(resp), "\n")
        status = 1
        break
      end
      if not resp.incomplete then
        edit.add_history(buffer)
        buffer = nil
        self:show(resp)
      end
    end
  end
  if hist then edit.save_history(hist, M.HISTORY_MAX) end
  client:close()
  return status
end

return M
