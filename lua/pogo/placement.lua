-- pogo.placement: where a child should run.
--
-- A policy is a pure function (child, nodes) -> node name | nil [, reason].
-- `child` is a normalised spec (id, tags, weight, node, ...); `nodes` is the
-- list of live nodes sorted by name, each { name = , meta = { tags = {...},
-- weight = n, ... } }. Every node computes the same answer from the same
-- view, so nothing here may depend on table iteration order, on the order of
-- `nodes`, on time or on randomness. A nil answer leaves the child pending.
--
-- The default policy: the child's pin (child.node) if that node is up; else
-- the nodes that have every tag of the child; else weighted rendezvous
-- hashing of child.id among them. The helpers below are also what users get
-- as pogo.placement.* inside a policy file.
--
-- Hashing: 64-bit FNV-1a over the bytes, finished with MurmurHash3's fmix64
-- avalanche (FNV alone mixes its last bytes poorly: "w-1" and "w-2" would
-- differ only in low bits). Integer arithmetic wraps modulo 2^64 in Lua 5.4,
-- so this is exact and identical on every node. A (child, node) pair is
-- scored as fmix64(hash(id) ~ hash(name)).

local runtime = require "pogo.core.runtime"
local log = require "pogo.log"
local sandbox = require "pogo.sandbox"

local M = {}

M.budget = 0.05         -- seconds a user policy may take for one child
M.VNODES = 64           -- ring points per unit of weight
M.CAP_FACTOR = 1.25     -- bounded load: a node takes at most 1.25x its share
M.TOP_SCORES = 5        -- scores shown by explain

---------------------------------------------------------------------------
-- Hashing

local FNV_OFFSET = 0xcbf29ce484222325
local FNV_PRIME = 0x100000001b3

--- MurmurHash3 finaliser: every input bit flips each output bit with p ~ 1/2.
local function fmix64(h)
  h = h ~ (h >> 33)
  h = h * 0xff51afd7ed558ccd
  h = h ~ (h >> 33)
  h = h * 0xc4ceb9fe1a85ec53
  return h ~ (h >> 33)
end

--- 64-bit hash of a string (FNV-1a + fmix64), as a Lua integer.
local function hash(s)
  local h = FNV_OFFSET
  local byte = string.byte
  local n = #s
  local i = 1
  while i + 3 <= n do
    local a, b, c, d = byte(s, i, i + 3)
    h = (h ~ a) * FNV_PRIME
    h = (h ~ b) * FNV_PRIME
    h = (h ~ c) * FNV_PRIME
    h = (h ~ d) * FNV_PRIME
    i = i + 4
  end
  for j = i, n do
    h = (h ~ byte(s, j)) * FNV_PRIME
  end
  return fmix64(h)
end
M.hash = hash

--- The hash as 16 hex digits.
function M.hex(s)
  return ("%016x"):format(hash(s))
end

-- Node names come back for every child: remember their hashes.
local name_hashes = {}
local name_count = 0
local function name_hash(name)
  local h = name_hashes[name]
  if not h then
    if name_count > 4096 then name_hashes, name_count = {}, 0 end
    h = hash(name)
    name_hashes[name] = h
    name_count = name_count + 1
  end
  return h
end

--- A float in (0, 1) from the top 53 bits of h (never 0, never 1).
local function unit(h)
  return ((h >> 11) + 0.5) / 9007199254740992.0
end

---------------------------------------------------------------------------
-- Node helpers

local function weight_of(node)
  local w = node.meta and node.meta.weight
  if type(w) ~= "number" or w ~= w or w <= 0 then return 1 end
  return w
end
M.weight_of = weight_of

local function names_of(nodes)
  local out = {}
  for i, n in ipairs(nodes) do out[i] = n.name end
  return out
end
M.names = names_of

local function find(nodes, name)
  for _, n in ipairs(nodes) do
    if n.name == name then return n end
  end
  return nil
end

--- The nodes (in their order) that carry every tag in `tags`.
function M.with_tags(nodes, tags)
  if not tags or #tags == 0 then
    local all = {}
    for i, n in ipairs(nodes) do all[i] = n end
    return all
  end
  local out = {}
  for _, n in ipairs(nodes) do
    local have = {}
    for _, t in ipairs(n.meta and n.meta.tags or {}) do have[t] = true end
    local ok = true
    for _, t in ipairs(tags) do
      if not have[t] then ok = false; break end
    end
    if ok then out[#out + 1] = n end
  end
  return out
end

--- A pinned child (child.node set): that node if it is live, else nil and
--- "pinned node X is not up". An unpinned child: nil, "not pinned".
function M.pinned(child, nodes)
  if child.node == nil then return nil, "not pinned" end
  if find(nodes, child.node) then return child.node, "pinned to " .. child.node end
  return nil, ("pinned node %s is not up"):format(child.node)
end

---------------------------------------------------------------------------
-- Weighted rendezvous (highest random weight) hashing

--- Every node's score for `key` (a string, usually child.id), best first:
--- a list of { name = , score = }. Score = -weight / ln(u), u in (0, 1)
--- from hash(key) and hash(name): the node with the highest score wins, and
--- each node wins with probability weight / total weight. Ties (never seen
--- in practice) go to the smaller name, so the result does not depend on
--- the order of `nodes`.
function M.scores(key, nodes)
  local hk = hash(key)
  local list = {}
  for i, n in ipairs(nodes) do
    local u = unit(fmix64(hk ~ name_hash(n.name)))
    list[i] = { name = n.name, score = -weight_of(n) / math.log(u) }
  end
  table.sort(list, function(a, b)
    if a.score ~= b.score then return a.score > b.score end
    return a.name < b.name
  end)
  return list
end

--- The rendezvous winner for child.id among `nodes`, or nil, reason.
function M.rendezvous(child, nodes)
  if #nodes == 0 then return nil, "no live node" end
  local hk = hash(child.id)
  local best, best_score
  for _, n in ipairs(nodes) do
    local u = unit(fmix64(hk ~ name_hash(n.name)))
    local s = -weight_of(n) / math.log(u)
    if best == nil or s > best_score or (s == best_score and n.name < best) then
      best, best_score = n.name, s
    end
  end
  return best
end

---------------------------------------------------------------------------
-- Consistent hashing ring

-- Building a ring costs O(points log points): keep the last one, since a
-- caller places many children over the same view.
local last_ring = { key = nil, points = nil }

local function build_ring(nodes, vnodes)
  local parts = { tostring(vnodes) }
  for _, n in ipairs(nodes) do parts[#parts + 1] = n.name .. "=" .. weight_of(n) end
  table.sort(parts)
  local key = table.concat(parts, "\0")
  if last_ring.key == key then return last_ring.points end
  local points = {}
  for _, n in ipairs(nodes) do
    local count = math.max(1, math.floor(vnodes * weight_of(n) + 0.5))
    local hn = name_hash(n.name)
    for i = 1, count do
      points[#points + 1] = { h = fmix64(hn ~ fmix64(i)), name = n.name }
    end
  end
  table.sort(points, function(a, b)
    if a.h ~= b.h then return math.ult(a.h, b.h) end
    return a.name < b.name
  end)
  last_ring.key, last_ring.points = key, points
  return points
end

--- Consistent hashing: each node owns vnodes * weight points on a 64-bit
--- ring (default M.VNODES); the child goes to the first point at or after
--- hash(child.id), clockwise.
function M.ring(child, nodes, vnodes)
  if #nodes == 0 then return nil, "no live node" end
  vnodes = vnodes or M.VNODES
  if type(vnodes) ~= "number" or vnodes < 1 then
    error("ring: vnodes must be a number >= 1, got " .. tostring(vnodes), 2)
  end
  local points = build_ring(nodes, vnodes)
  local h = hash(child.id)
  local lo, hi = 1, #points
  if math.ult(points[hi].h, h) then return points[1].name end
  while lo < hi do
    local mid = (lo + hi) // 2
    if math.ult(points[mid].h, h) then lo = mid + 1 else hi = mid end
  end
  return points[lo].name
end

---------------------------------------------------------------------------
-- Spread

--- The spread group and index of a child: the id split at its last
--- separator ("-", "_", ".", ":", "/") followed by digits, so "worker-3" is
--- member 3 of "worker". An id without such a suffix has no index.
function M.group_of(id)
  local group, index = id:match("^(.-)[%-_%.:/](%d+)$")
  if group and group ~= "" then return group, tonumber(index) end
  return id, nil
end

--- Members of one group on different nodes where possible. The group is
--- `group_key` when it is a string, group_key(child) when it is a function
--- (which may also return the index), else the id's prefix (M.group_of).
--- Rule: every member ranks the nodes by rendezvous on the group name, so
--- all members see the same order; member k takes the ((k - 1) mod N) + 1-th
--- node of that order. So members 1..N of a group land on N different nodes
--- when there are at least N nodes, and wrap around evenly when there are
--- fewer. A child with no index falls back to rendezvous on its own id.
--- Unlike rendezvous, a change in the node set may move many members.
function M.spread(child, nodes, group_key)
  if #nodes == 0 then return nil, "no live node" end
  local group, index
  if type(group_key) == "function" then
    group, index = group_key(child)
    if index == nil then index = select(2, M.group_of(child.id)) end
  elseif type(group_key) == "string" then
    group, index = group_key, select(2, M.group_of(child.id))
  else
    group, index = M.group_of(child.id)
  end
  if index == nil or math.type(index) ~= "integer" then
    return M.rendezvous(child, nodes)
  end
  local order = M.scores(tostring(group), nodes)
  return order[(index - 1) % #order + 1].name
end

---------------------------------------------------------------------------
-- Bounded load

--- Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam
--- 2018), over rendezvous order: `load` maps node name -> children it holds
--- now (not counting this one). A node's cap is
--- ceil(cap_factor * (total + 1) * weight / total weight), i.e. cap_factor
--- times its fair share once this child is placed; the child goes to the
--- first node in its rendezvous order whose load is below its cap. With
--- cap_factor >= 1 some node always has room.
function M.bounded(child, nodes, load, cap_factor)
  if #nodes == 0 then return nil, "no live node" end
  cap_factor = cap_factor or M.CAP_FACTOR
  if type(cap_factor) ~= "number" or cap_factor < 1 then
    error("bounded: cap_factor must be a number >= 1, got " .. tostring(cap_factor), 2)
  end
  load = load or {}
  local total, wsum = 0, 0
  for _, n in ipairs(nodes) do
    total = total + (load[n.name] or 0)
    wsum = wsum + weight_of(n)
  end
  local by_name = {}
  for _, n in ipairs(nodes) do by_name[n.name] = n end
  for _, s in ipairs(M.scores(child.id, nodes)) do
    local cap = math.ceil(cap_factor * (total + 1) * weight_of(by_name[s.name]) / wsum)
    if (load[s.name] or 0) < cap then return s.name end
  end
  return nil, "every node is at its load cap"
end

---------------------------------------------------------------------------
-- The default policy

local function tag_list(tags)
  return table.concat(tags, ", ")
end

--- Pin, else tag filter, else weighted rendezvous among the eligible nodes.
function M.default(child, nodes)
  if child.node ~= nil then return M.pinned(child, nodes) end
  local eligible = M.with_tags(nodes, child.tags)
  if #eligible == 0 then
    if child.tags and #child.tags > 0 then
      return nil, ("no live node has tags %s"):format(tag_list(child.tags))
    end
    return nil, "no live node"
  end
  local name = M.rendezvous(child, eligible)
  return name, ("rendezvous among %d eligible node%s"):format(#eligible, #eligible == 1 and "" or "s")
end

---------------------------------------------------------------------------
-- Policy objects

local Policy = {}
Policy.__index = Policy

local function who(child)
  return ("child '%s'"):format(tostring(child and child.id))
end

local function first_line(msg)
  return (tostring(msg):match("^[^\n]*"))
end

--- Runs the policy for one child under its budget and checks the answer.
--- Returns name, reason | nil, reason (pending: the policy said nil) |
--- nil, message, true (the policy failed: raised, ran out of budget, or
--- answered something that is not a live node's name).
function Policy:place(child, nodes)
  local res = table.pack(runtime.call(self.budget, self.fn, child, nodes))
  local where = ("placement policy %s for %s"):format(self.path, who(child))
  if not res[1] then
    return nil, ("%s failed: %s"):format(where, first_line(res[2])), true
  end
  local answer, reason = res[2], res[3]
  if reason ~= nil then reason = tostring(reason) end
  if answer == nil then return nil, reason or "the policy returned nil" end
  if type(answer) ~= "string" then
    return nil, ("%s returned a %s, not a node name"):format(where, type(answer)), true
  end
  if not find(nodes, answer) then
    return nil, ("%s returned '%s', which is not a live node"):format(where, answer), true
  end
  return answer, reason
end

function Policy:__tostring()
  return ("placement policy %s (%s)"):format(self.path, self.digest)
end

--- A policy object from a function: name is shown in errors and explain,
--- digest defaults to the hash of the name.
function M.new(fn, name, digest, budget)
  if type(fn) ~= "function" then
    error("placement.new: a function is needed, got " .. type(fn), 2)
  end
  return setmetatable({
    fn = fn, path = name or "anonymous", digest = digest or M.hex(name or "anonymous"),
    budget = budget or M.budget,
  }, Policy)
end

--- The built-in policy as an object; its digest names it and its version.
M.DEFAULT = setmetatable({
  fn = function(child, nodes) return M.default(child, nodes) end,
  path = "default", digest = "default", budget = M.budget,
}, Policy)

-- What policy files see as pogo.placement: the helpers, not writable.
M.readonly = setmetatable({}, {
  __index = M,
  __newindex = function(_, k) error(("pogo.placement is read-only (setting '%s')"):format(tostring(k)), 2) end,
})

--- Loads a policy file, sandboxed like hooks (env: pogo.placement and
--- pogo.log). The file returns a function or a table with a `place`
--- function. opts.budget bounds both loading and each placement.
--- Returns the policy object | nil, err.
function M.load(path, opts)
  opts = opts or {}
  local budget = opts.budget or M.budget
  local env = { pogo = { placement = M.readonly, log = opts.log or {
    debug = log.debug, info = log.info, warn = log.warn, error = log.error,
  } } }
  local ok, fn, src = sandbox.load(path, { budget = budget, env = env, read = function(value, text)
    if type(value) == "function" then return value, text end
    local place = type(value) == "table" and value.place
    if type(place) == "function" then return function(child, nodes) return place(child, nodes) end, text end
    error(("%s: a placement policy must return a function or a table with a 'place' function, got %s")
      :format(path, type(value)), 0)
  end })
  if not ok then return nil, fn end
  return setmetatable({ fn = fn, path = path, digest = M.hex(src), budget = budget }, Policy)
end

local function as_policy(p)
  if p == nil then return nil end
  if type(p) == "function" then return M.new(p) end
  return p
end

--- Places a child with `current`, falling back to `previous_good` (then to
--- the default policy) when `current` fails. Returns name | nil and
--- { policy = path that decided, reason = , error = current's failure,
--- fallback = true when it fell back }. A pending answer (nil without
--- failure) is a decision, not a failure. Nothing is logged here: the
--- caller reports info.error once per policy, not once per child.
function M.decide(current, previous_good, child, nodes)
  current = as_policy(current) or M.DEFAULT
  local name, reason, failed = current:place(child, nodes)
  if not failed then
    return name, { policy = current.path, reason = reason }
  end
  local fallback = as_policy(previous_good) or M.DEFAULT
  if fallback == current then fallback = M.DEFAULT end
  local name2, reason2, failed2 = fallback:place(child, nodes)
  if failed2 and fallback ~= M.DEFAULT then
    name2, reason2 = M.DEFAULT:place(child, nodes)
    fallback = M.DEFAULT
  end
  return name2, { policy = fallback.path, reason = reason2, error = reason, fallback = true }
end

--- What a live reload from `old` to `new` would move: { id, from, to } for
--- each child whose answer changes, sorted by id. `to` is what decide()
--- would answer with `old` as the previous good policy.
function M.preview(old, new, children, nodes)
  old, new = as_policy(old) or M.DEFAULT, as_policy(new) or M.DEFAULT
  local moves = {}
  for _, child in ipairs(children) do
    local from = M.decide(old, nil, child, nodes)
    local to = M.decide(new, old, child, nodes)
    if from ~= to then moves[#moves + 1] = { id = child.id, from = from, to = to } end
  end
  table.sort(moves, function(a, b) return a.id < b.id end)
  return moves
end

--- Why a child goes where it goes, for `pogo explain`: { node, reason,
--- eligible = names after the tag filter, scores = { name -> score } for the
--- top M.TOP_SCORES eligible nodes by rendezvous, policy = "default" | path,
--- digest, error = the policy's failure if it failed }.
function M.explain(policy, child, nodes)
  policy = as_policy(policy) or M.DEFAULT
  local eligible = M.with_tags(nodes, child.tags)
  local scores = {}
  for i, s in ipairs(M.scores(child.id, eligible)) do
    if i > M.TOP_SCORES then break end
    scores[s.name] = s.score
  end
  local name, reason, failed = policy:place(child, nodes)
  return {
    node = name, reason = reason, eligible = names_of(eligible), scores = scores,
    policy = policy.path, digest = policy.digest, error = failed and reason or nil,
  }
end

return M
