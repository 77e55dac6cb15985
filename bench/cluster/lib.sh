# shellcheck shell=bash
# bench/cluster/lib.sh - helpers for bench/cluster.sh: agents, clocks,
# statistics and teardown. Sourced; expects POGO and T to be set.

declare -A PID=()       # agent name -> pid
BUSY=()                 # busy-loop pids
NETNS=                  # our network namespace, if any
NS_CMD=()               # prefix that runs a command inside it

# mono - CLOCK_MONOTONIC in seconds with microseconds: the clock the agents'
# require("pogo.core.sys").monotonic() reads, so the two compare.
mono() { perl -MTime::HiRes=clock_gettime,CLOCK_MONOTONIC -e 'printf "%.6f\n", clock_gettime(CLOCK_MONOTONIC)'; }

# signal_at SIG PID - sends SIG and prints the monotonic time just before.
signal_at() {
  perl -MTime::HiRes=clock_gettime,CLOCK_MONOTONIC -e \
    '$t = clock_gettime(CLOCK_MONOTONIC); kill($ARGV[0], $ARGV[1]) or die "kill: $!\n"; printf "%.6f\n", $t' "$1" "$2"
}

# port_base N - a base port with N free ports above it (in use by no
# socket now), below the ephemeral range (32768-60999 by default): a
# listen port in that range can be taken by an outgoing connection of an
# agent that started first. The e2e tests use 20000-39999.
port_base() {
  local n=$1 base _ busy
  for _ in $(seq 20); do
    base=$((10000 + (RANDOM % 180) * 50))
    busy=$(ss -Htan 2>/dev/null | awk -v lo="$base" -v hi="$((base + n))" '{ split($4, a, ":"); p = a[length(a)] + 0; if (p >= lo && p <= hi) c++ } END { print c + 0 }')
    [ "$busy" -eq 0 ] && { echo "$base"; return; }
  done
  echo "$base"
}

# write_cfg NAME LISTEN SEED... - $T/NAME.lua for a cluster node.
write_cfg() {
  local name=$1 listen=$2; shift 2
  local seeds="" s
  for s in "$@"; do seeds+="\"$s\", "; done
  cat >"$T/$name.lua" <<CFG
return {
  name = "$name",
  listen = "$listen",
  seeds = { $seeds},
  secret_file = "$T/cluster.key",
  control = "$T/$name.sock",
  run_dir = "$T/run",
  log_dir = "$T/logs/$name",
  log = { level = "warn" },
}
CFG
}

# start NAME [T0FILE] - runs the agent of $T/NAME.lua in the background (in
# our namespace if there is one); with T0FILE, the monotonic time just
# before exec goes there. Does not wait.
start() {
  local name=$1 t0file=${2:-/dev/null}
  rm -f "$T/$name.sock"
  "${NS_CMD[@]}" perl -MTime::HiRes=clock_gettime,CLOCK_MONOTONIC -e \
    'open(my $f, ">", shift) or die; printf $f "%.6f\n", clock_gettime(CLOCK_MONOTONIC); close $f; exec @ARGV or die "exec: $!\n"' \
    "$t0file" "$POGO" agent -c "$T/$name.lua" >>"$T/$name.log" 2>&1 &
  PID[$name]=$!
}

# ev NAME CODE [EVAL OPTIONS...] - pogo eval in agent NAME.
ev() { "$POGO" eval -s "$T/$1.sock" "${@:3}" "$2"; }

# wait_for SECS COMMAND... - poll COMMAND (every 20 ms) until it succeeds;
# status 1 on timeout.
wait_for() {
  local deadline=$(( $(date +%s%N) + $(awk -v s="$1" 'BEGIN { printf "%.0f", s * 1e9 }') )); shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s%N)" -lt "$deadline" ] || return 1
    sleep 0.02
  done
}

answers() { "$POGO" eval -s "$T/$1.sock" 1 >/dev/null 2>&1; }

UP_COUNT='local n = 0 for _, x in ipairs(pogo.cluster.nodes()) do if x.state == "up" then n = n + 1 end end return n'
sees_up() { [ "$(ev "$1" "$UP_COUNT" 2>/dev/null)" = "$2" ]; }

# wait_up SECS N NAME... - every NAME answers and sees N nodes up.
wait_up() {
  local secs=$1 n=$2 name; shift 2
  for name in "$@"; do
    wait_for "$secs" answers "$name" || { echo "agent $name does not answer (log: $(tail -3 "$T/$name.log" 2>/dev/null))" >&2; return 1; }
    wait_for "$secs" sees_up "$name" "$n" || { echo "agent $name sees $(ev "$name" "$UP_COUNT" 2>&1) up, not $n" >&2; return 1; }
  done
}

# stop NAME [SIGNAL] - stops one agent and reaps it (SIGKILL after 2 s).
stop() {
  local name=$1 sig=${2:-TERM} pid=${PID[$1]:-} _
  [ -n "$pid" ] || return 0
  kill -CONT "$pid" 2>/dev/null
  kill -"$sig" "$pid" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.02; done
  kill -KILL "$pid" 2>/dev/null
  { wait "$pid"; } 2>/dev/null
  unset "PID[$name]"
}

stop_all() {
  local name pid _
  for name in "${!PID[@]}"; do kill -CONT "${PID[$name]}" 2>/dev/null; kill -TERM "${PID[$name]}" 2>/dev/null; done
  for _ in $(seq 100); do
    local left=0
    for name in "${!PID[@]}"; do kill -0 "${PID[$name]}" 2>/dev/null && left=1; done
    [ $left -eq 0 ] && break
    sleep 0.02
  done
  for name in "${!PID[@]}"; do
    pid=${PID[$name]}
    kill -KILL "$pid" 2>/dev/null
    { wait "$pid"; } 2>/dev/null
  done
  PID=()
}

busy_start() {   # busy_start N - N busy loops, one per core
  local _
  for _ in $(seq "$1"); do
    sh -c 'while :; do :; done' &
    BUSY+=($!)
  done
}

busy_stop() {
  local p
  for p in "${BUSY[@]}"; do kill -KILL "$p" 2>/dev/null; { wait "$p"; } 2>/dev/null; done
  BUSY=()
}

netns_start() {
  NETNS=pogo-bench-$$
  ip netns add "$NETNS" || { NETNS=; return 1; }
  ip -n "$NETNS" link set lo up
  NS_CMD=(ip netns exec "$NETNS")
}

netns_stop() {
  [ -n "$NETNS" ] && ip netns del "$NETNS" 2>/dev/null
  NETNS=; NS_CMD=()
}

# nap SECS - sleep in the background and wait for it, so that a signal
# to the bench is handled at once (bash runs traps only between commands).
NAP=
nap() { sleep "$1" & NAP=$!; wait "$NAP"; NAP=; }

teardown() {
  [ -n "$NAP" ] && kill "$NAP" 2>/dev/null
  stop_all
  busy_stop
  netns_stop
  rm -rf "$T"
}

# ---- statistics ----------------------------------------------------------------
# Samples are numbers, one a line, in files under $T/samples/.

sample() { mkdir -p "$T/samples"; cat >>"$T/samples/$1"; }   # sample NAME < numbers

# stat NAME SCALE - "median p99 n" of the samples times SCALE (p99 by nearest rank).
stat() {
  local f="$T/samples/$1"
  [ -s "$f" ] || { echo "- - 0"; return; }
  sort -g "$f" | awk -v s="$2" '{ a[NR] = $1 * s }
    END {
      m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
      r = int(NR * 0.99); if (r < NR * 0.99) r++; if (r < 1) r = 1
      printf "%s %s %d\n", m, a[r], NR
    }'
}

ROWS=()   # "metric|median|p99|n|goal|result"
row() { ROWS+=("$1|$2|$3|$4|$5|$6"); }

# verdict VALUE OP LIMIT - ok or MISSED (VALUE "-" is MISSED: no data).
verdict() {
  [ "$1" = - ] && { echo MISSED; return; }
  awk -v v="$1" -v l="$3" -v op="$2" 'BEGIN { ok = (op == "<=") ? (v <= l) : (v == l); print ok ? "ok" : "MISSED" }'
}

fmt() {   # fmt VALUE DECIMALS UNIT
  [ "$1" = - ] && { echo "-"; return; }
  awk -v v="$1" -v d="$2" -v u="$3" 'BEGIN { printf "%.*f%s\n", d, v, u }'
}

print_table() {
  local line
  printf '%-52s %12s %12s %5s  %-16s %s\n' metric median p99 n goal result
  printf '%s\n' "$(printf '%.0s-' $(seq 110))"
  for line in "${ROWS[@]}"; do
    IFS='|' read -r m med p99 n goal res <<<"$line"
    printf '%-52s %12s %12s %5s  %-16s %s\n' "$m" "$med" "$p99" "$n" "$goal" "$res"
  done
}

# ---- shared by the bench scripts -------------------------------------------------

want() { [[ ",$ONLY," == *",$1,"* ]]; }     # want SECTION - is it in ONLY?
note() { echo "# $*" >&2; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

# copy_pogo - run a copy of the binary and its Lua library (found next to
# it) from $T/bin, so that a rebuild or an edit in the tree while the bench
# runs changes nothing; sets POGO.
copy_pogo() {
  mkdir -p "$T/bin"
  for _ in 1 2 3 4 5; do
    if cp "$POGO" "$T/bin/pogo" 2>/dev/null && rm -rf "$T/bin/lua" && cp -r lua "$T/bin/lua" 2>/dev/null &&
        "$T/bin/pogo" version >/dev/null 2>&1; then
      POGO=$T/bin/pogo
      return
    fi
    sleep 1
  done
  echo "# could not copy pogo and lua/: running $POGO from the tree" >&2
}

# metric LABEL SAMPLES SCALE DECIMALS UNIT GOAL_TEXT GOAL_FIELD OP LIMIT - a
# row of the table: median and p99 of SAMPLES, checked against the goal on
# GOAL_FIELD (median or p99) when one is given.
metric() {
  local label=$1 s=$2 scale=$3 dec=$4 unit=$5 goal=$6 field=$7 op=$8 limit=$9
  local med p99 n res=""
  read -r med p99 n < <(stat "$s" "$scale")
  if [ -n "$field" ]; then
    if [ "$n" -eq 0 ]; then res=MISSED
    elif [ "$field" = median ]; then res=$(verdict "$med" "$op" "$limit")
    else res=$(verdict "$p99" "$op" "$limit"); fi
  fi
  row "$label" "$(fmt "$med" "$dec" "$unit")" "$(fmt "$p99" "$dec" "$unit")" "$n" "$goal" "$res"
}
