# End-to-end test of the demo (make run): examples/run --check starts the
# 3-node cluster from examples/, waits for every child, prints ps --global
# and stops everything.

# demo_processes - live processes started for this test's demo (the agents
# and their children inherit POGO_DEMO_DIR=$T/demo).
demo_processes() {
  local p
  for p in $(grep -lsF "POGO_DEMO_DIR=$T/demo" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3); do
    gone "$p" || echo "$p"
  done
}
no_demo_process() { [ -z "$(demo_processes)" ]; }

# run_demo_check - examples/run --check on this test's ports and directory;
# sets OUT and RC, and adds the agents it lists to lib.sh's leak check.
run_demo_check() {
  # Cluster ports PORT_BASE+1..3, the web children's PORT_BASE+4..6.
  OUT=$(POGO_DEMO_DIR=$T/demo POGO_DEMO_PORT=$PORT_BASE POGO_DEMO_HTTP_PORT=$((PORT_BASE + 3)) \
        POGO_DEMO_TIMEOUT=${1:-30} examples/run --check 2>&1)
  RC=$?
  echo "$OUT"
  local pid
  for pid in $(sed -n 's/^  node[123]  pid \([0-9]*\) .*/\1/p' <<<"$OUT"); do ALL_AGENT_PIDS+=("$pid"); done
}

# no_demo_left - every agent gone, and no process of the demo left.
no_demo_left() {
  local pid
  for pid in "${ALL_AGENT_PIDS[@]}"; do
    gone "$pid" || fail "agent $pid of the demo is still running after examples/run returned"
  done
  wait_for 2 "no process of the demo left" no_demo_process
}

test_demo_check_starts_every_child_and_leaves_nothing_behind() {
  run_demo_check
  expect_eq 0 "$RC" "exit status of examples/run --check"
  expect_eq 3 "${#ALL_AGENT_PIDS[@]}" "agents listed in the output"
  expect_match "check: ok" "$OUT"
  expect_match "ID +NODE +STATE +PID +GEN" "$OUT" "the ps --global table"
  local i id
  for i in 1 2 3; do
    expect_match "web-$i +node$i +(running|ready) " "$OUT" "web-$i pinned to node$i"
  done
  for id in singleton worker-1 worker-2 worker-3 worker-4 worker-5 worker-6; do
    expect_match "$id +node[123] +(running|ready) " "$OUT" "$id on a node"
  done
  # flaky crashes on purpose: it may be between two runs.
  expect_match "flaky +node[123] +[a-z]+ " "$OUT" "flaky on a node"
  expect_match "stopped; logs are in $T/demo" "$OUT"
  no_demo_left
}

test_demo_check_fails_clearly_when_a_node_cannot_start() {
  # node2's cluster port is taken.
  local port=$((PORT_BASE + 2))
  socat "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr" /dev/null &
  local sp=$!
  wait_for 5 "a listener on port $port" bash -c "ss -ltnH 'sport = :$port' | grep -q ."
  run_demo_check 10
  kill "$sp" 2>/dev/null; wait "$sp" 2>/dev/null
  expect_eq 1 "$RC" "exit status of examples/run --check"
  expect_match "agent node2 exited during startup" "$OUT"
  expect_match "Address already in use" "$OUT" "the agent's own error, from its log"
  no_demo_left
}
