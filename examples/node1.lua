-- The demo's node config. Every key is optional; see README.md.
local dir = os.getenv("POGO_DEMO_DIR") or "/tmp/pogo-demo"

return {
  name = "node1",
  listen = "127.0.0.1:4371",
  tags = { "demo", "ssd" },
  weight = 1,
  run_dir = dir,                 -- control socket: <run_dir>/node1.sock
  children = "children",         -- relative to this file
  hooks = "hooks.lua",
  log_dir = dir .. "/logs",      -- one log file per child, rotated
  log = { level = "info" },      -- to stderr; add file = "..." for a file
  budget = "250ms",              -- how long a hook or spec may run
  eval_budget = "5s",            -- how long `pogo eval` code may run
}
