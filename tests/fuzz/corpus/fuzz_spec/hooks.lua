local n = 0
return {
  id = "hooked",
  cmd = { "sleep", "1" },
  hooks = {
    on_start = function(child) n = n + 1 pogo.log.info("start %d", n) end,
    on_exit = function(child, status) return status.code == 0 end,
    on_give_up = function() end,
  },
}
