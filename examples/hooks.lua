-- Hooks that apply to every child. Each runs under the budget; an error
-- here is logged and changes nothing else.
return {
  on_start = function(child)
    pogo.log.info("hook: %s started as pid %d", child.id, child.pid)
  end,
  on_exit = function(child, status)
    pogo.log.info("hook: %s %s", child.id, child.last_exit or "exited")
  end,
  on_give_up = function(child)
    pogo.log.warn("hook: giving up on %s for a while", child.id)
  end,
}
