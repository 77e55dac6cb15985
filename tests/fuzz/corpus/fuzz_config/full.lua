return {
  name = "web-1",
  listen = "0.0.0.0:4370", advertise = "[2001:db8::7]:4370",
  seeds = { "10.0.0.2:4370", "node-b.example.com", "[::1]:4371" },
  secret_file = "/etc/pogo/cluster.key",
  tags = { "web", "ssd" }, weight = 1.5,
  children = "children.d", placement = "placement.lua", hooks = "hooks.lua",
  run_dir = "run", control = "/run/pogo/web-1.sock", log_dir = "logs",
  budget = "250ms", eval_budget = 5, expect = 3, lease = "2s", drain_timeout = "1m30s",
  log = { level = "debug", file = "pogo.log" },
}
