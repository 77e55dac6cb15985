-- Node 1 of the demo cluster (examples/run starts all three on loopback).
-- POGO_DEMO_DIR holds the key, sockets and logs; POGO_DEMO_PORT moves the
-- cluster ports (node N listens on POGO_DEMO_PORT + N). See README.md.
local dir = os.getenv("POGO_DEMO_DIR") or "/tmp/pogo-demo"
local port = tonumber(os.getenv("POGO_DEMO_PORT")) or 4370

return {
  name = "node1",
  listen = "127.0.0.1:" .. (port + 1),
  seeds = { "127.0.0.1:" .. (port + 1) },   -- node1; any reachable seed will do
  secret_file = dir .. "/cluster.key",      -- examples/run writes it (pogo keygen)
  tags = { "web", "ssd" },
  expect = 3,                    -- cluster size, for the quorum child
  children = "children",         -- only here: a spec file loaded on any node
                                 -- is a start request for the whole cluster
  placement = "placement.lua",   -- relative to this file; reloaded on save
  hooks = "hooks.lua",
  control = dir .. "/node1.sock",
  log_dir = dir .. "/logs/node1",   -- one file per child, rotated
  log = { level = "info" },      -- to stderr: examples/run sends it to node1.log
  drain_timeout = "10s",         -- SIGTERM: hand children over for at most 10 s
}
