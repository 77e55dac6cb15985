-- Hooks for every child and for the cluster, on every node. Each runs under
-- the budget; an error here is logged and changes nothing else. The lines
-- land in the node's log: tail -f /tmp/pogo-demo/node*.log
return {
  on_start = function(child)
    pogo.log.info("hook: %s started as pid %d (generation %d)", child.id, child.pid, child.generation)
  end,
  on_exit = function(child, status)
    pogo.log.info("hook: %s %s after %.1fs", child.id, child.last_exit or "exited", status.runtime or 0)
  end,
  on_give_up = function(child)
    pogo.log.warn("hook: giving up on %s here for a while", child.id)
  end,
  on_node_up = function(node)
    pogo.log.info("hook: node %s is up", node.name)
  end,
  on_node_down = function(node, reason)
    pogo.log.info("hook: node %s is down (%s)", node.name, tostring(reason))
  end,
  on_placement_change = function(child, from, to)
    pogo.log.info("hook: %s moves from %s to %s", child.id, tostring(from), tostring(to))
  end,
}
