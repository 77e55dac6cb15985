return {
  id = "api@eu-1:v2",
  cmd = [[/usr/bin/env "PORT=80 80" 'single quoted' back\ slash "a \"q\" \$HOME"]],
  env = { PORT = 8080, MODE = "prod" }, clear_env = true,
  cwd = "../srv", user = "nobody", group = 65534, umask = "027",
  rlimits = { nofile = { soft = 1024, hard = "infinity" }, core = "0", as = "2GiB", cpu = "1h" },
  restart = "transient", success_codes = { 0, 3 }, success_signals = { "SIGTERM", "hup", "INT" },
  max_restarts = 0, max_seconds = "1m30s", cooldown = 60.5,
  backoff = { initial = "250ms", max = "1m", factor = 1.5, jitter = 0, reset_after = "10s" },
  shutdown = "2s", stop_signal = "INT",
  log = { max_size = "10MiB", max_files = 3, ring = 100 },
  tags = { "web", "ssd" }, weight = 2.5, node = "node1",
  partition = "quorum", handoff = "stop_first",
}
