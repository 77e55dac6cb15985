-- A tiny HTTP responder, ready once its port accepts connections.
return {
  id = "web",
  cmd = { "socat", "TCP-LISTEN:8081,bind=127.0.0.1,reuseaddr,fork",
          "SYSTEM:echo HTTP/1.0 200 OK; echo; echo hello from $POGO_NODE generation $POGO_GENERATION" },
  readiness = { tcp = "127.0.0.1:8081", timeout = "5s" },
  shutdown = "2s",
  tags = { "web" },
}
