-- pogo.help: help(name) in the REPL and `pogo eval`. One line of signature
-- and a few lines of text per name of the pogo API.

local M = {}

M.TOPICS = {
  ["pogo.cluster.self"] = { "pogo.cluster.self()", "This node: { name, listen, advertise, tags, weight }." },
  ["pogo.cluster.nodes"] = { "pogo.cluster.nodes()",
    "Every known node, sorted by name: { name, addr, state, incarnation, rtt, meta, self }.\n"
    .. "meta carries tags, weight, version, the placement policy digest and draining." },
  ["pogo.cluster.on"] = { 'pogo.cluster.on("up" | "down", fn)', "Calls fn(node) on every change; returns a cancel function." },
  ["pogo.pg.join"] = { "pogo.pg.join(scope, group, key, value)", "Joins (scope, group) as (this node, key); joining again updates the value." },
  ["pogo.pg.leave"] = { "pogo.pg.leave(scope, group, key)", "Leaves; nil, \"not a member\" if it was not one." },
  ["pogo.pg.members"] = { "pogo.pg.members(scope, group)", "{ { node, key, value }, ... } sorted by node, then key." },
  ["pogo.pg.groups"] = { "pogo.pg.groups(scope)", "The group names of a scope, sorted." },
  ["pogo.pg.monitor"] = { "pogo.pg.monitor(scope, group | nil, fn)",
    "fn{ op = \"join\" | \"leave\", scope, group, node, key, value, reason } for every change, in order.\n"
    .. "Returns a cancel function." },
  ["pogo.sup.children"] = { "pogo.sup.children{ global = bool, match = pattern }",
    "This node's children, or with global = true every child of the cluster: one row per\n"
    .. "instance { id, node, state, pid, generation, restarts, uptime, reason }." },
  ["pogo.sup.child"] = { "pogo.sup.child(id)", "One local child's view: { id, state, pid, generation, restarts, uptime, last_exit, spec }." },
  ["pogo.sup.start"] = { "pogo.sup.start(spec | { spec, ... } | id)",
    "Start request for specs (plain data: a spec with hooks belongs in a file, `pogo start --file`),\n"
    .. "or for a stopped child by id. Returns the ids." },
  ["pogo.sup.stop"] = { "pogo.sup.stop(id)", "Stop request: the child stops wherever it runs and stays stopped." },
  ["pogo.sup.restart"] = { "pogo.sup.restart(id)", "Restarts the child where it runs." },
  ["pogo.sup.explain"] = { "pogo.sup.explain(id)",
    "Where the child should run and why (policy, eligible nodes, scores, answer), where it runs,\n"
    .. "and what this node waits for." },
  ["pogo.sup.logs"] = { "pogo.sup.logs(id, n)", "The last n lines of a local child's output: { { time, stream, text }, ... }." },
  ["pogo.placement.preview"] = { "pogo.placement.preview(file)",
    "What would move, and where, if the policy in file were loaded: { { id, from, to }, ... }.\n"
    .. "A dry run before saving the file over the live policy." },
  ["pogo.placement.default"] = { "pogo.placement.default(child, nodes)", "The default policy: the pinned node, else rendezvous among the nodes with every tag." },
  ["pogo.placement.rendezvous"] = { "pogo.placement.rendezvous(child, nodes)", "Weighted rendezvous hashing of child.id: name, reason." },
  ["pogo.placement.with_tags"] = { "pogo.placement.with_tags(nodes, tags)", "The nodes that carry every tag." },
  ["rpc"] = { 'rpc(node, code)',
    "Evaluates code on node (through this agent's link) and shows its values, as a whole chunk\n"
    .. 'at the prompt: rpc("node2", "pogo.sup.children()"). :rpc NODE CODE does the same; a REPL\n'
    .. "started with --node NAME works on that node throughout." },
  ["pogo.config"] = { "pogo.config()", "The node config in force (a copy)." },
  ["pogo.errors"] = { "pogo.errors()", "{ [file] = message } for user files whose last load failed." },
  ["pogo.busy"] = { "pogo.busy()",
    "How busy the agent's loop was since the last call (the first starts measuring): iterations,\n"
    .. "mean_ms, max_ms, max_cpu_ms, max_gc_step_ms, and the slowest Lua callback (slowest_call)." },
  ["pogo.log.info"] = { "pogo.log.info(fmt, ...)", "A log line (debug, info, warn, error alike)." },
}

local ALIASES = {}
for name in pairs(M.TOPICS) do
  ALIASES[name:gsub("^pogo%.", "")] = name
end

--- help() lists the topics; help(name) (with or without "pogo.") or
--- help(fn) shows one. Returns the text.
function M.help(what)
  if what == nil then
    local names = {}
    for name in pairs(M.TOPICS) do names[#names + 1] = name end
    table.sort(names)
    local lines = { "help(name) for one of:" }
    for _, name in ipairs(names) do lines[#lines + 1] = "  " .. M.TOPICS[name][1] end
    lines[#lines + 1] = "REPL commands: :help"
    return table.concat(lines, "\n")
  end
  if type(what) == "function" then
    local pogo = require "pogo"
    for name in pairs(M.TOPICS) do
      local v = pogo
      for part in name:gmatch("[^%.]+") do
        if part ~= "pogo" then v = type(v) == "table" and v[part] or nil end
      end
      if v == what then what = name break end
    end
  end
  local topic = M.TOPICS[what] or M.TOPICS[ALIASES[tostring(what)] or ""]
  if not topic then return ("no help for %s; help() lists the topics"):format(tostring(what)) end
  return topic[1] .. "\n" .. topic[2]
end

return M
