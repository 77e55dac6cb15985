# shellcheck shell=bash
# bench/dsup/lib.sh - helpers for bench/dsup.sh on top of bench/cluster/lib.sh
# (agents, clocks, statistics): clusters of n1..nK with the monitor of
# bench/dsup/monitor.lua in every agent, spec files, and a teardown that
# leaves no agent, watchdog or child behind. Sourced; expects POGO, T and
# CHILD (the children's program, a copy of sleep under $T) to be set.

. bench/cluster/lib.sh

NODES=()   # the names of the current cluster, n1 first

# ev NAME CODE [EVAL OPTIONS...] - pogo eval in agent NAME, given up after
# 10 s (an agent whose loop is stuck must not hang the bench).
ev() { timeout 10 "$POGO" eval -s "$T/$1.sock" "${@:3}" "$2"; }
answers() { timeout 5 "$POGO" eval -s "$T/$1.sock" 1 >/dev/null 2>&1; }

# cluster_up K [SECS] - K agents n1..nK (n1 is every one's seed), all up,
# the monitor installed in each. Status 1 if the cluster did not form.
cluster_up() {
  local k=$1 secs=${2:-20} base i n
  base=$(port_base $((k + 2)))
  NODES=()
  for i in $(seq "$k"); do
    n=n$i; NODES+=("$n")
    if [ "$i" -eq 1 ]; then write_cfg "$n" "127.0.0.1:$((base + i))"
    else write_cfg "$n" "127.0.0.1:$((base + i))" "127.0.0.1:$((base + 1))"; fi
    start "$n"
  done
  wait_up "$secs" "$k" "${NODES[@]}" || return 1
  for n in "${NODES[@]}"; do monitor "$n" || return 1; done
}

# node_up NAME - starts one more agent (seeded by n1) with T0FILE $T/NAME.t0.
node_up() {
  local n=$1 seed
  seed=$(awk -F'"' '/listen/ { print $2 }' "$T/n1.lua")
  write_cfg "$n" "127.0.0.1:$(( ${seed##*:} + ${n#n} - 1 ))" "$seed"
  start "$n" "$T/$n.t0"
}

monitor() { [ "$(ev "$1" - <bench/dsup/monitor.lua 2>&1)" = true ]; }

# spec FILE PREFIX N [FROM] - a spec file of children PREFIX<FROM>..PREFIX<N>.
spec() {
  cat >"$1" <<SPEC
local t = {}
for i = ${4:-1}, $3 do t[#t + 1] = { id = "$2" .. i, cmd = "$CHILD 100000" } end
return t
SPEC
}

# arm PREFIX N [EXCLUDE] NODE... - a new watch (see monitor.lua) on each node.
arm() {
  local prefix=$1 n=$2 ex=nil node; shift 2
  [ -n "$1" ] && ex="'$1'"; shift
  for node in "$@"; do
    ev "$node" "B.arm{ prefix = '$prefix', n = $n, exclude = $ex }" >/dev/null
  done
}

# covered NODE... - every node's watch has seen every id covered.
covered() {
  local node
  for node in "$@"; do [ "$(ev "$node" 'B.w.all ~= nil' 2>/dev/null)" = true ] || return 1; done
}

# wait_cover SECS NODE... - until every node's watch saw every id covered.
# Gives up early (status 2) when an agent's log passes 50 MB (a flood of
# warnings) or the agents run more than CAP processes in all (duplicates
# running away; CAP unset: no limit); WHY says what happened, PEAKS the
# most processes each agent had at once while waiting.
wait_cover() {
  local secs=$1 deadline n c total; shift
  deadline=$(( $(date +%s) + secs ))
  WHY=; declare -gA PEAKS=()
  while :; do
    covered "$@" && return 0
    total=0
    for n in "$@"; do
      [ -n "${PID[$n]:-}" ] || continue
      c=$(pgrep -c -P "${PID[$n]}")
      total=$((total + c))
      [ "$c" -gt "${PEAKS[$n]:-0}" ] && PEAKS[$n]=$c
      if [ "$(command stat -c %s "$T/$n.log" 2>/dev/null || echo 0)" -gt 50000000 ]; then
        WHY="$n's log passed 50 MB: $(tail -1 "$T/$n.log" | cut -c1-200)"
        return 2
      fi
    done
    if [ -n "${CAP:-}" ] && [ "$total" -gt "$CAP" ]; then
      WHY="the agents ran $total processes for the children, more than $CAP: gave up"
      return 2
    fi
    [ "$(date +%s)" -lt "$deadline" ] || { WHY="not within ${secs}s"; return 1; }
    sleep 0.25
  done
}

peaks() { local n; for n in "${NODES[@]}"; do echo -n "$n ${PEAKS[$n]:-?} "; done; }

# field NODE K - field K (1-based) of the node's B.report() line.
field() { ev "$1" 'B.report()' | tr -d '"' | cut -d' ' -f"$2"; }

# latest NODE... - the latest B.w.all of the nodes (when the last one saw all).
latest() {
  local node
  for node in "$@"; do field "$node" 1; done | sort -g | tail -1
}

since() { awk -v t="$1" -v u="$2" 'BEGIN { printf "%.6f\n", u - t }'; }   # since T0 T1

# timed OUT CMD... - runs CMD (stdout to OUT, stderr to OUT.err) and prints
# "t0 t1 status": the monotonic times just before and after.
timed() {
  perl -MTime::HiRes=clock_gettime,CLOCK_MONOTONIC -e '
    my $out = shift;
    open(my $keep, ">&", \*STDOUT) or die;
    open(STDOUT, ">", $out) or die; open(STDERR, ">", "$out.err") or die;
    my $t0 = clock_gettime(CLOCK_MONOTONIC); my $st = system(@ARGV); my $t1 = clock_gettime(CLOCK_MONOTONIC);
    printf $keep "%.6f %.6f %d\n", $t0, $t1, $st >> 8' "$@"
}

# ours - pids of the processes this bench started and that are still
# there: agents and their watchdogs (command line names $T) and children
# (their program is $CHILD).
ours() {
  local p exe
  for p in /proc/[0-9]*; do
    exe=$(readlink "$p/exe" 2>/dev/null) || continue
    if [ "$exe" = "$CHILD" ] || { [ "$exe" = "$POGO" ] && tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF "$T/"; }; then
      echo "${p#/proc/}"
    fi
  done
}

# down_all - kill -9 every agent (their watchdogs kill the children), then
# whatever of ours is left after 5 s.
down_all() {
  local name pid _ left
  for name in "${!PID[@]}"; do kill -KILL "${PID[$name]}" 2>/dev/null; done
  for name in "${!PID[@]}"; do { wait "${PID[$name]}"; } 2>/dev/null; done
  PID=()
  for _ in $(seq 50); do
    left=$(ours)
    [ -z "$left" ] && return
    sleep 0.1
  done
  for pid in $left; do kill -KILL "$pid" 2>/dev/null; done
  NOTES+=("$(echo "$left" | wc -w) process(es) left after the agents were killed (killed by pid)")
}

dsup_teardown() {
  [ -n "$NAP" ] && kill "$NAP" 2>/dev/null
  down_all
  rm -rf "$T"
}
