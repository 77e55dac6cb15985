-- Crashes every few seconds: watch restarts, backoff and hooks at work.
-- After 5 crashes in a minute it is `failed` here and handed to another node.
return {
  id = "flaky",
  cmd = { "sh", "-c", "echo up on $POGO_NODE; sleep 8; echo crashing >&2; exit 1" },
  backoff = { initial = "500ms", max = "5s", reset_after = "10s" },
  max_restarts = 5, max_seconds = "1m", cooldown = "30s",
  shutdown = "1s",
  hooks = {
    on_restart = function(child) pogo.log.info("flaky restarts (%d so far)", child.restarts) end,
  },
}
