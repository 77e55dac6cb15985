-- One tiny HTTP responder per node, each pinned there (`node`): web-N
-- answers on 127.0.0.1:POGO_DEMO_HTTP_PORT+N (8081..8083 by default) and is
-- ready once that port accepts connections. Try: curl -s 127.0.0.1:8082
local base = tonumber(os.getenv("POGO_DEMO_HTTP_PORT")) or 8080

local web = {}
for i = 1, 3 do
  local port = base + i
  web[i] = {
    id = "web-" .. i,
    node = "node" .. i,
    tags = { "web" },
    cmd = { "socat", ("TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork"):format(port),
            "SYSTEM:echo HTTP/1.0 200 OK; echo; echo hello from $POGO_CHILD_ID on $POGO_NODE - generation $POGO_GENERATION" },
    readiness = { tcp = ("127.0.0.1:%d"):format(port), timeout = "5s" },
    shutdown = "2s",
  }
end
return web
