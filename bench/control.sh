#!/usr/bin/env bash
# Agent start-up time, `pogo eval` round trip (a whole CLI process) and the
# idle agent's memory. Prints medians and p99 over N runs.
set -eu
N=${N:-200}
POGO=$(realpath "${POGO:-./pogo}")
T=$(mktemp -d /tmp/pogo-bench.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$T"' EXIT
cat >"$T/n.lua" <<CFG
return { name = "bench", control = "$T/n.sock", log = { level = "warn" } }
CFG

ms() { echo $(( $(date +%s%N) / 1000 )); }   # microseconds
stats() { sort -n | awk '{a[NR]=$1} END {printf "median %.2f ms, p99 %.2f ms, n=%d\n", a[int(NR/2)+1]/1000, a[int(NR*0.99)]/1000, NR}'; }

# start-up: exec until the socket answers, 20 runs
for i in $(seq 20); do
  t0=$(ms)
  "$POGO" agent -c "$T/n.lua" & pid=$!
  until "$POGO" eval -s "$T/n.sock" 1 >/dev/null 2>&1; do :; done
  echo $(( $(ms) - t0 ))
  kill $pid; wait $pid
done | stats | sed 's/^/agent start until eval answers: /'

"$POGO" agent -c "$T/n.lua" & pid=$!
until "$POGO" eval -s "$T/n.sock" 1 >/dev/null 2>&1; do :; done
for i in $(seq "$N"); do
  t0=$(ms); "$POGO" eval -s "$T/n.sock" 1 >/dev/null; echo $(( $(ms) - t0 ))
done | stats | sed 's/^/pogo eval round trip (new process each): /'
echo "idle agent RSS: $(awk '/VmRSS/ {print $2, $3}' /proc/$pid/status)"
