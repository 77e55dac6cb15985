-- The demo's placement policy: function(child, nodes) -> node name.
-- `nodes` are the live, non-draining nodes sorted by name, each
-- { name =, meta = { tags =, weight = } }. Every node runs this same file
-- over the same view, so it must be deterministic (no time, no randomness).
-- Saving it moves exactly the children whose answer changed, make-before-
-- break; `pogo explain ID` shows the answer and the scores.
--
-- Edits to try while the demo runs (save, then `pogo ps --global`):
--   1. BATCH_NODES = "web": the six workers move to node1 and node2.
--   2. Uncomment the singleton line below: it moves to node2 (stop-first,
--      as a quorum child always does).
--   3. SPREAD = true: the workers spread over every node, two per node.
local P = pogo.placement

local BATCH_NODES = "batch"   -- the tag of the nodes batch work prefers
local SPREAD = false          -- true: batch work ignores tags, spread evenly

local function has_tag(child, tag)
  for _, t in ipairs(child.tags or {}) do
    if t == tag then return true end
  end
  return false
end

return function(child, nodes)
  -- Pinned children (web-1..3) run on their node or nowhere.
  if child.node then return P.pinned(child, nodes) end

  -- if child.id == "singleton" then return "node2" end

  -- Batch work prefers the nodes tagged BATCH_NODES; with none of them up
  -- (kill node3) it spreads over the others instead of waiting.
  if has_tag(child, "batch") then
    local preferred = P.with_tags(nodes, { BATCH_NODES })
    if SPREAD or #preferred == 0 then return P.spread(child, nodes) end
    return P.rendezvous(child, preferred)
  end

  -- Everything else: weighted rendezvous hashing among the nodes that
  -- carry all of the child's tags.
  return P.default(child, nodes)
end
