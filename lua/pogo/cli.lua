-- pogo.cli: the command line. Every subcommand is one entry of COMMANDS
-- with its usage, options and a run function returning the exit status:
-- 0 done, 1 failed, 2 bad usage.

local M = {}

local PROG = "pogo"

local SOCKET_OPT = { "s", "socket", arg = "SOCKET",
  help = "the agent's control socket (default: $POGO_SOCKET, else the one socket in the run directory)" }

local COMMANDS, ORDER = {}, {}

local function command(name, def)
  def.name = name
  COMMANDS[name] = def
  ORDER[#ORDER + 1] = name
end

-- Output ----------------------------------------------------------------------

local function out(...) io.stdout:write(...) end
local function err(...) io.stderr:write(...) end

local function usage_error(cmd, msg)
  err(PROG, cmd and " " .. cmd.name or "", ": ", msg, "\n")
  if cmd then
    err("usage: ", cmd.usage, "\n")
    err("Try 'pogo ", cmd.name, " --help' for more.\n")
  else
    err("Try 'pogo --help' for more.\n")
  end
  return 2
end

local function command_help(cmd)
  local lines = { "usage: " .. cmd.usage, "", cmd.summary }
  if cmd.details then lines[#lines + 1] = ""; lines[#lines + 1] = cmd.details end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "options:"
  local opts = {}
  for _, o in ipairs(cmd.options or {}) do opts[#opts + 1] = o end
  opts[#opts + 1] = { "h", "help", help = "show this help" }
  for _, o in ipairs(opts) do
    local flag = (o[1] and "-" .. o[1] .. ", " or "    ") .. "--" .. o[2]
    if o.arg then flag = flag .. " " .. o.arg end
    lines[#lines + 1] = ("  %-26s %s"):format(flag, o.help)
  end
  return table.concat(lines, "\n") .. "\n"
end

local function main_help()
  local lines = {
    "pogo - a distributed supervisor for OS processes",
    "",
    "usage: pogo COMMAND [OPTIONS] [ARGS]",
    "",
    "commands:",
  }
  for _, name in ipairs(ORDER) do
    lines[#lines + 1] = ("  %-10s %s"):format(name, COMMANDS[name].summary)
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "Run 'pogo COMMAND --help' for the options of a command."
  lines[#lines + 1] = "Commands that talk to an agent take -s SOCKET (default: $POGO_SOCKET)."
  return table.concat(lines, "\n") .. "\n"
end

-- Option parsing: -x VAL, -xVAL, --long VAL, --long=VAL, flags, "--" ----------

--- Returns opts, positional | nil, message.
function M.parse(cmd, args)
  local by_short, by_long = {}, {}
  for _, o in ipairs(cmd.options or {}) do
    if o[1] then by_short[o[1]] = o end
    by_long[o[2]] = o
  end
  by_short.h = { "h", "help" }
  by_long.help = by_short.h
  local opts, pos = {}, {}
  local i = 1
  while i <= #args do
    local a = args[i]
    local o, val
    if a == "--" then
      for j = i + 1, #args do pos[#pos + 1] = args[j] end
      break
    elseif a:sub(1, 2) == "--" then
      local name, v = a:match("^%-%-([^=]+)=(.*)$")
      name = name or a:sub(3)
      o, val = by_long[name], v
      if not o then return nil, ("unknown option '--%s'"):format(name) end
    elseif a:sub(1, 1) == "-" and #a > 1 then
      o = by_short[a:sub(2, 2)]
      if not o then return nil, ("unknown option '%s'"):format(a:sub(1, 2)) end
      if #a > 2 then
        if not o.arg then return nil, ("option '-%s' takes no value"):format(o[1]) end
        val = a:sub(3)
      end
    else
      pos[#pos + 1] = a
    end
    if o then
      if o.arg and val == nil then
        i = i + 1
        val = args[i]
        if val == nil then return nil, ("option '--%s' needs a value (%s)"):format(o[2], o.arg) end
      elseif not o.arg and val ~= nil then
        return nil, ("option '--%s' takes no value"):format(o[2])
      end
      opts[o[2]] = o.arg and val or true
    end
    i = i + 1
  end
  return opts, pos
end

-- Talking to an agent -----------------------------------------------------------

--- The socket to use: -s, then $POGO_SOCKET, then the only *.sock in the
--- default run directory. Returns path | nil, message.
function M.socket_path(opts)
  if opts.socket then return opts.socket end
  local env = os.getenv("POGO_SOCKET")
  if env and env ~= "" then return env end
  local dir = require("pogo.config").default_run_dir()
  local names = require("pogo.core.sys").dir(dir) or {}
  local socks = {}
  for _, n in ipairs(names) do
    if n:match("%.sock$") then socks[#socks + 1] = dir .. "/" .. n end
  end
  if #socks == 1 then return socks[1] end
  if #socks == 0 then
    return nil, ("no agent socket found in %s; is an agent running? (use -s SOCKET or POGO_SOCKET)"):format(dir)
  end
  return nil, ("several agents in %s (%s); choose one with -s SOCKET"):format(dir, table.concat(socks, ", "))
end

--- Sends one request and waits for its answer. Returns response | nil, err.
function M.request(opts, req, timeout)
  local path, perr = M.socket_path(opts)
  if not path then return nil, perr end
  local client, cerr = require("pogo.core.control").connect(path)
  if not client then return nil, "cannot reach the agent: " .. cerr end
  local ok, serr = client:send(req)
  if not ok then client:close(); return nil, "cannot reach the agent: " .. serr end
  local resp, rerr = client:recv(timeout)
  client:close()
  if not resp then return nil, rerr end
  return resp
end

-- Commands ------------------------------------------------------------------------

command("agent", {
  usage = "pogo agent -c FILE",
  summary = "run an agent with the node config FILE",
  details = "Runs in the foreground until SIGTERM or SIGINT; SIGHUP reloads the config.",
  options = { { "c", "config", arg = "FILE", help = "the node config (a Lua file returning a table)" } },
  run = function(opts, args)
    if #args > 0 then return nil, ("unexpected argument '%s'"):format(args[1]) end
    if not opts.config then return nil, "missing -c FILE" end
    return require("pogo.agent").run(opts.config)
  end,
})

command("check", {
  usage = "pogo check [--as KIND] FILE|DIR...",
  summary = "validate config, child spec, policy and hook files without running them",
  details = "KIND is config, spec, policy or hooks; without --as it is guessed from what the\n"
    .. "file returns. A directory is checked as a directory of child specs (*.lua).",
  options = { { nil, "as", arg = "KIND", help = "check every file as KIND" } },
  run = function(opts, args)
    if #args == 0 then return nil, "missing FILE" end
    return require("pogo.check").main(args, opts.as, out, err)
  end,
})

command("eval", {
  usage = "pogo eval [-s SOCKET] [--node NAME] [--json] [-t DURATION] CODE",
  summary = "run Lua code inside an agent and print the results",
  details = "CODE is an expression or statements; '-' reads it from standard input.\n"
    .. "Errors go to standard error and the exit status is 1.",
  options = {
    SOCKET_OPT,
    { "j", "json", help = "print the results as JSON" },
    { "t", "timeout", arg = "DURATION", help = "the code's time budget (default: eval_budget of the agent)" },
    { "v", "verbose", help = "print the traceback of an error" },
    { "n", "node", arg = "NAME", help = "run it on node NAME, through this agent" },
  },
  run = function(opts, args)
    if #args == 0 then return nil, "missing CODE" end
    local code = table.concat(args, " ")
    if code == "-" then code = io.stdin:read("a") end
    local budget
    if opts.timeout then
      local e
      budget, e = require("pogo.grammar").duration(opts.timeout)
      if not budget then return nil, "--timeout " .. e end
    end
    local resp, rerr = M.request(opts, { op = "eval", code = code, json = opts.json or nil, budget = budget,
      node = opts.node })
    if not resp then err("pogo eval: ", rerr, "\n"); return 1 end
    if resp.printed then out(resp.printed) end
    if not resp.ok then
      err(opts.verbose and resp.traceback or resp.error, "\n")
      return 1
    end
    if resp.out then out(resp.out, "\n") end
    return 0
  end,
})

command("repl", {
  usage = "pogo repl [-s SOCKET] [--node NAME]",
  summary = "an interactive Lua session inside an agent (or, with --node, another node)",
  details = "Line editing, history (~/.pogo_history, or $POGO_HISTORY), Ctrl-R search and Tab\n"
    .. "completion. Multi-line chunks continue until complete; :help lists the commands.\n"
    .. "Ctrl-C interrupts an evaluation (not one running on another node, which its\n"
    .. "budget bounds), Ctrl-D leaves.",
  options = { SOCKET_OPT, { "n", "node", arg = "NAME", help = "evaluate on node NAME, through this agent" } },
  run = function(opts, args)
    if #args > 0 then return nil, ("unexpected argument '%s'"):format(args[1]) end
    local path, perr = M.socket_path(opts)
    if not path then err("pogo repl: ", perr, "\n") return 1 end
    return require("pogo.repl").run(path, opts.node)
  end,
})

-- Children ----------------------------------------------------------------------

local function fmt_uptime(secs)
  if not secs then return "-" end
  return require("pogo.grammar").format_duration(math.floor(secs * 10) / 10)
end

--- Lays out rows (lists of strings) in aligned columns.
local function columns(rows)
  local widths = {}
  for _, l in ipairs(rows) do
    for i, cell in ipairs(l) do widths[i] = math.max(widths[i] or 0, #cell) end
  end
  local lines = {}
  for _, l in ipairs(rows) do
    local cells = {}
    for i, cell in ipairs(l) do
      cells[i] = i < #l and cell .. (" "):rep(widths[i] - #cell) or cell
    end
    lines[#lines + 1] = table.concat(cells, "  ")
  end
  return table.concat(lines, "\n") .. "\n"
end

--- The `pogo ps` table.
function M.ps_table(rows)
  local lines = { { "ID", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT" } }
  for _, r in ipairs(rows) do
    lines[#lines + 1] = {
      r.id, r.state, r.pid and tostring(r.pid) or "-", fmt_uptime(r.uptime),
      tostring(r.restarts or 0), r.last_exit or "-",
    }
  end
  return columns(lines)
end

--- The `pogo ps --global` table: one row per instance, with its node.
function M.ps_global_table(rows)
  local lines = { { "ID", "NODE", "STATE", "PID", "GEN", "UPTIME", "RESTARTS", "REASON" } }
  for _, r in ipairs(rows) do
    lines[#lines + 1] = {
      r.id, r.node or "-", r.state, r.pid and tostring(r.pid) or "-",
      r.generation and tostring(r.generation) or "-", fmt_uptime(r.uptime),
      tostring(r.restarts or 0), r.reason or "-",
    }
  end
  return columns(lines)
end

local function simple(req, opts, on_ok, timeout)
  local resp, rerr = M.request(opts, req, timeout)
  if not resp then err("pogo ", req.op, ": ", rerr, "\n") return 1 end
  if not resp.ok then err("pogo ", req.op, ": ", resp.error, "\n") return 1 end
  if on_ok then on_ok(resp) end
  return 0
end

local function to_json(v)
  local ok, cjson = pcall(require, "cjson")
  if not ok then return nil, "JSON output needs lua-cjson" end
  return cjson.encode(v)
end

command("ps", {
  usage = "pogo ps [-s SOCKET] [--global] [--json] [PATTERN]",
  summary = "list children: this agent's, or with --global every child of the cluster",
  details = "--global shows one row per running instance with its node and generation,\n"
    .. "and children that run nowhere as pending (with the reason) or stopped.\n"
    .. "PATTERN (a Lua pattern) filters the ids of --global.",
  options = { SOCKET_OPT, { "g", "global", help = "every child of the cluster" }, { "j", "json", help = "print JSON" } },
  run = function(opts, args)
    if #args > 1 then return nil, ("unexpected argument '%s'"):format(args[2]) end
    if args[1] and not opts.global then return nil, "PATTERN needs --global" end
    return simple({ op = "ps", global = opts.global or nil, match = args[1] }, opts, function(resp)
      if opts.json then
        local j = assert(to_json(resp.children))
        out((j == "{}" and "[]" or j), "\n")
      elseif resp.global then
        out(M.ps_global_table(resp.children))
      else
        out(M.ps_table(resp.children))
      end
    end)
  end,
})

command("start", {
  usage = "pogo start [-s SOCKET] [--wait [SECONDS]] ID | --file SPEC",
  summary = "start a stopped child, or the children of a spec file",
  details = "In a cluster the request goes to every node and the child runs where the\n"
    .. "policy places it. --wait answers once every child runs, with its node, or\n"
    .. "after SECONDS (default 10) with the reason it does not.",
  options = {
    SOCKET_OPT, { "f", "file", arg = "SPEC", help = "a spec file to load and start" },
    { "w", "wait", help = "wait until running and say where" },
    { "t", "timeout", arg = "SECONDS", help = "how long --wait waits (default 10)" },
  },
  run = function(opts, args)
    local req = { op = "start", wait = opts.wait and (tonumber(opts.timeout) or 10) or nil }
    if opts.timeout and not tonumber(opts.timeout) then return nil, "--timeout must be a number of seconds" end
    if opts.file then
      if #args > 0 then return nil, "give either ID or --file, not both" end
      req.file = require("pogo.core.sys").realpath(opts.file) or opts.file
    else
      if #args ~= 1 then return nil, "give one child ID" end
      req.id = args[1]
    end
    return simple(req, opts, function(resp)
      if resp.placed then
        for _, p in ipairs(resp.placed) do out(p.id, " running on ", p.node, "\n") end
      elseif resp.started then
        out("started ", table.concat(resp.started, ", "), "\n")
      end
    end, req.wait and req.wait + 5 or nil)
  end,
})

command("explain", {
  usage = "pogo explain [-s SOCKET] [--json] ID",
  summary = "why a child runs where it runs, or why it does not",
  options = { SOCKET_OPT, { "j", "json", help = "print JSON" } },
  run = function(opts, args)
    if #args ~= 1 then return nil, "give one child ID" end
    return simple({ op = "explain", id = args[1] }, opts, function(resp)
      if opts.json then out(assert(to_json(resp.explain)), "\n") return end
      out(M.explain_text(resp.explain))
    end)
  end,
})

command("drain", {
  usage = "pogo drain [-s SOCKET]",
  summary = "hand this node's children to the others (make-before-break), then stop the agent",
  options = { SOCKET_OPT },
  run = function(opts, args)
    if #args > 0 then return nil, ("unexpected argument '%s'"):format(args[1]) end
    return simple({ op = "drain" }, opts, function(resp)
      out(("drained: %d children handed over, %d left\n"):format(resp.moved or 0, resp.left or 0))
    end, 3600)
  end,
})

--- The text of `pogo explain`.
function M.explain_text(x)
  local lines = {}
  local function add(fmt, ...) lines[#lines + 1] = fmt:format(...) end
  add("child %s", x.id)
  add("  request     version %s%s, from %s", x.request.version, x.request.stopped and " (stopped)" or "",
    x.request.source or "?")
  if x.error then add("  spec        cannot load here: %s", x.error) end
  if x.partition then add("  mode        partition=%s handoff=%s%s", x.partition, x.handoff,
    x.partition == "quorum" and (" (quorum here: %s)"):format(tostring(x.quorum)) or "") end
  if x.tags and #x.tags > 0 then add("  tags        %s", table.concat(x.tags, ",")) end
  if x.nodes then add("  live nodes  %s", table.concat(x.nodes, ", ")) end
  local p = x.placement
  if p then
    add("  policy      %s (digest %s)", p.policy, p.digest)
    if p.error then add("  policy err  %s", p.error) end
    add("  eligible    %s", #p.eligible > 0 and table.concat(p.eligible, ", ") or "none")
    local scores = {}
    for name, sc in pairs(p.scores) do scores[#scores + 1] = { name, sc } end
    table.sort(scores, function(a, b) return a[2] > b[2] end)
    for i, sc in ipairs(scores) do scores[i] = ("%s=%.3g"):format(sc[1], sc[2]) end
    if #scores > 0 then add("  scores      %s", table.concat(scores, " ")) end
    add("  answer      %s%s", p.node or "none", p.reason and (" (" .. p.reason .. ")") or "")
  end
  if x.pending then add("  pending     %s", x.pending) end
  if #x.instances == 0 then add("  running     nowhere") end
  for _, i in ipairs(x.instances) do
    add("  running     %s generation %d %s%s%s", i.node, i.generation, i.state,
      i.pid and (" pid " .. i.pid) or "", i.home and "" or " (handing over)")
  end
  if x.waiting then add("  waiting     %s", x.waiting.reason) end
  return table.concat(lines, "\n") .. "\n"
end

command("stop", {
  usage = "pogo stop [-s SOCKET] ID",
  summary = "stop a child (it stays stopped until started again)",
  options = { SOCKET_OPT },
  run = function(opts, args)
    if #args ~= 1 then return nil, "give one child ID" end
    return simple({ op = "stop", id = args[1] }, opts)
  end,
})

command("restart", {
  usage = "pogo restart [-s SOCKET] ID",
  summary = "stop a child, then start it again",
  options = { SOCKET_OPT },
  run = function(opts, args)
    if #args ~= 1 then return nil, "give one child ID" end
    return simple({ op = "restart", id = args[1] }, opts)
  end,
})

local function print_line(l)
  local t = l.time or 0
  local stamp = os.date("!%H:%M:%S", math.floor(t)) .. (".%03d"):format(math.floor((t % 1) * 1000))
  out(stamp, " ", l.stream, " ", l.text, "\n")
end

command("logs", {
  usage = "pogo logs [-s SOCKET] [-n LINES] [-f] ID",
  summary = "print the last lines of a child's output; -f follows new lines",
  options = {
    SOCKET_OPT,
    { "n", "lines", arg = "LINES", help = "how many lines (default 20)" },
    { "f", "follow", help = "keep printing new lines until interrupted" },
  },
  run = function(opts, args)
    if #args ~= 1 then return nil, "give one child ID" end
    local n = tonumber(opts.lines or 20)
    if not n or n < 0 then return nil, "--lines must be a number" end
    local path, perr = M.socket_path(opts)
    if not path then err("pogo logs: ", perr, "\n") return 1 end
    local client, cerr = require("pogo.core.control").connect(path)
    if not client then err("pogo logs: cannot reach the agent: ", cerr, "\n") return 1 end
    client:send { op = "logs", id = args[1], n = n, follow = opts.follow or nil }
    local resp, rerr = client:recv()
    if not resp then err("pogo logs: ", rerr, "\n") return 1 end
    if not resp.ok then err("pogo logs: ", resp.error, "\n") return 1 end
    for _, l in ipairs(resp.lines) do print_line(l) end
    io.stdout:flush()
    while opts.follow do
      local msg = client:recv()
      if not msg then break end
      if msg.line then print_line(msg.line) io.stdout:flush() end
    end
    client:close()
    return 0
  end,
})

-- Cluster -------------------------------------------------------------------------

command("members", {
  usage = "pogo members [-s SOCKET] [--json]",
  summary = "list the nodes of the cluster: name, address, state, incarnation, RTT, tags",
  options = { SOCKET_OPT, { "j", "json", help = "print JSON" } },
  run = function(opts, args)
    if #args > 0 then return nil, ("unexpected argument '%s'"):format(args[1]) end
    return simple({ op = "members" }, opts, function(resp)
      if opts.json then out(assert(to_json(resp.nodes)), "\n") return end
      out(M.members_text(resp.nodes))
    end)
  end,
})

--- The `pogo members` table (and a warning when the policies differ).
function M.members_text(nodes)
  local rows = { { "NAME", "ADDRESS", "STATE", "INCARNATION", "RTT", "TAGS", "POLICY" } }
  local policies, first, differ = {}, nil, false
  for _, n in ipairs(nodes) do
    local meta = n.meta or {}
    local policy = meta.policy or "-"
    if n.state == "up" then
      if first == nil then first = policy elseif policy ~= first then differ = true end
      policies[#policies + 1] = n.name .. "=" .. policy
    end
    rows[#rows + 1] = {
      n.name .. (n.self and " *" or ""), n.addr or n.advertise or "-",
      (n.state or "-") .. (meta.draining and " (draining)" or ""),
      n.incarnation and ("%x"):format(n.incarnation) or "-",
      n.rtt and ("%.2fms"):format(n.rtt * 1000) or "-",
      table.concat(meta.tags or n.tags or {}, ","), policy,
    }
  end
  local text = columns(rows)
  if differ then
    text = text .. "warning: the nodes disagree on the placement policy (" .. table.concat(policies, " ") .. ")\n"
  end
  return text
end

command("groups", {
  usage = "pogo groups [-s SOCKET] [--json] [SCOPE]",
  summary = "list process groups and their members (every scope, or one)",
  options = { SOCKET_OPT, { "j", "json", help = "print JSON" } },
  run = function(opts, args)
    if #args > 1 then return nil, ("unexpected argument '%s'"):format(args[2]) end
    return simple({ op = "groups", scope = args[1] }, opts, function(resp)
      if opts.json then out(assert(to_json(resp.scopes)), "\n") return end
      local rows = { { "SCOPE", "GROUP", "NODE", "KEY", "VALUE" } }
      local pretty = require "pogo.pretty"
      for _, s in ipairs(resp.scopes) do
        for _, g in ipairs(s.groups) do
          for _, m in ipairs(g.members) do
            rows[#rows + 1] = { s.scope, g.name, m.node, tostring(m.key),
              m.value == nil and "-" or pretty.format(m.value, { width = 60 }) }
          end
        end
      end
      out(columns(rows))
    end)
  end,
})

-- Keys ------------------------------------------------------------------------------

local function new_key_line()
  local bytes = require("pogo.core.sys").random(32)
  return (bytes:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

command("keygen", {
  usage = "pogo keygen [--rotate] FILE",
  summary = "write a new cluster key file (mode 0600)",
  details = "A key file holds one or more keys, one per line; the first is used for new\n"
    .. "links, the others are still accepted. --rotate puts a new key first and keeps\n"
    .. "the old ones: distribute the file to every node (each picks it up on reload),\n"
    .. "then remove the old line once all nodes have the new key.",
  options = { { nil, "rotate", help = "add a new primary key to an existing file" } },
  run = function(opts, args)
    if #args ~= 1 then return nil, "give one FILE" end
    local sys = require "pogo.core.sys"
    local path = args[1]
    if opts.rotate then
      local f, ferr = io.open(path, "r")
      if not f then err("pogo keygen: ", ferr, "\n") return 1 end
      local old = f:read("a")
      f:close()
      local ok, werr = sys.write_private(path, new_key_line() .. "\n" .. old)
      if not ok then err("pogo keygen: ", werr, "\n") return 1 end
      out("added a new primary key to ", path, "\n")
      return 0
    end
    local ok, werr = sys.write_private(path, new_key_line() .. "\n", true)
    if not ok then err("pogo keygen: ", werr, "\n") return 1 end
    out("wrote ", path, "\n")
    return 0
  end,
})

command("version", {
  usage = "pogo version",
  summary = "print the version of pogo",
  run = function()
    out("pogo ", require("pogo.core.runtime").version, "\n")
    return 0
  end,
})

--- Entry point from main.c: args is the command line without argv[0].
function M.main(args)
  local name = args[1]
  if name == nil then err(main_help()); return 2 end
  if name == "-h" or name == "--help" or name == "help" then
    local topic = args[2] and COMMANDS[args[2]]
    out(topic and command_help(topic) or main_help())
    return 0
  end
  if name == "--version" then name = "version" end
  local cmd = COMMANDS[name]
  if not cmd then return usage_error(nil, ("unknown command '%s'"):format(name)) end
  local rest = table.move(args, 2, #args, 1, {})
  local opts, pos = M.parse(cmd, rest)
  if not opts then return usage_error(cmd, pos) end
  if opts.help then out(command_help(cmd)); return 0 end
  local status, msg = cmd.run(opts, pos)
  if status == nil then return usage_error(cmd, msg) end
  return status
end

M.COMMANDS = COMMANDS

return M
