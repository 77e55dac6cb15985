return {
  { id = "a", cmd = "true", readiness = { tcp = "[::1]:4370", timeout = "5s", interval = "100ms" } },
  { id = "b", cmd = "true", readiness = { pattern = "listening on * port ?\\*", stream = "stderr", timeout = 3 } },
  { id = "c", cmd = "true", readiness = { notify = true } },
  { id = "d", cmd = "true", readiness = { check = function() return true end, interval = "1s" } },
  { id = "e", cmd = "true", readiness = "immediate", shutdown = "brutal_kill" },
  { id = "f", cmd = { "x" }, shutdown = 0, readiness = { pattern = "ready \\\\ ?" } },
}
