-- Crashes every few seconds: watch restarts, backoff and hooks at work.
return {
  id = "flaky",
  cmd = { "sh", "-c", "echo up; sleep 3; echo crashing >&2; exit 1" },
  backoff = { initial = "500ms", max = "5s", reset_after = "10s" },
  max_restarts = 5, max_seconds = "1m", cooldown = "30s",
  hooks = {
    on_restart = function(child) pogo.log.info("flaky restarts (%d so far)", child.restarts) end,
  },
}
