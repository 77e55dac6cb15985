# tests/e2e/lib.sh - helpers for end-to-end tests of real agents.
#
# A test is a function test_NAME in tests/e2e/test_*.sh. It runs in its own
# bash process with a fresh $T directory; every agent it starts is killed
# (SIGKILL if SIGTERM was not enough) and $T removed when it exits, pass or
# fail. Helpers fail the test with a message naming what was expected.

POGO=${POGO:-$(realpath ./pogo)}
declare -A AGENT_PID=()
ALL_AGENT_PIDS=()      # every agent this test started, for the leak check
CLEANUPS=()            # commands run first on exit (a test's own resources)

fail() {
  echo "FAILED: $*" >&2
  for n in "${!AGENT_PID[@]}"; do
    echo "--- log of agent $n:" >&2
    tail -20 "$T/$n.log" >&2 2>/dev/null
  done
  exit 1
}

# Sanitizer reports (ASan, LeakSanitizer, UBSan) of every process a test
# runs go to $T/sanitizer.PID rather than to stderr: an agent reports its
# leaks as it exits, often in e2e_cleanup where nobody reads its log, so
# e2e_cleanup fails the test on any such file instead.
sanitizer_log_to_T() {
  export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}log_path=$T/sanitizer"
  export UBSAN_OPTIONS="${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}log_path=$T/sanitizer"
}

# sanitizer_reports - print every report so far; status 1 if there was none.
sanitizer_reports() {
  local f found=1
  for f in "$T"/sanitizer.*; do
    [ -e "$f" ] || continue
    echo "--- sanitizer report $(basename "$f"):"; cat "$f"; found=0
  done
  return $found
}

# Live processes carrying the marker of any agent this test started.
marked_processes() {
  local pid p
  for pid in "${ALL_AGENT_PIDS[@]}"; do
    for p in $(grep -ls "POGO_AGENT=$pid\." /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3); do
      gone "$p" || echo "$p"
    done
  done
}

e2e_cleanup() {
  local c
  for c in "${CLEANUPS[@]}"; do eval "$c" 2>/dev/null; done
  for n in "${!AGENT_PID[@]}"; do
    kill -TERM "${AGENT_PID[$n]}" 2>/dev/null
  done
  for n in "${!AGENT_PID[@]}"; do
    local pid=${AGENT_PID[$n]} i
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.02; done
    kill -KILL "$pid" 2>/dev/null
  done
  # Anything an agent of this test started and left behind a second after
  # the agent is gone (the watchdog's bound) is a leak: kill it and fail.
  local leaked=0 p i left
  for i in $(seq 50); do
    left=$(marked_processes)
    [ -z "$left" ] && break
    sleep 0.02
  done
  for p in $(marked_processes); do
    leaked=$((leaked + 1))
    echo "leaked process $p: $(tr '\0' ' ' </proc/$p/cmdline 2>/dev/null)" >&2
    kill -KILL "$p" 2>/dev/null
  done
  sanitizer_reports >&2 && { echo "FAILED: a sanitizer reported (above)" >&2; leaked=$((leaked + 1)); }
  [ -n "${NETNS:-}" ] && ip netns del "$NETNS" 2>/dev/null
  rm -rf "$T"
  [ $leaked -eq 0 ] || exit 1
}

e2e_main() {
  T=$(mktemp -d /tmp/pogo-e2e.XXXXXX)
  sanitizer_log_to_T
  trap e2e_cleanup EXIT
  "$1"
}

# wait_for SECONDS DESCRIPTION COMMAND... - poll until COMMAND succeeds.
wait_for() {
  local secs=$1 what=$2; shift 2
  local deadline=$(( $(date +%s%N) + ${secs%.*} * 1000000000 ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s%N)" -lt "$deadline" ] || fail "timed out after ${secs}s waiting for: $what"
    sleep 0.02
  done
}

# write_config NAME [LUA_FIELDS...] - $T/NAME.lua with sensible test values.
write_config() {
  local name=$1; shift
  {
    echo "return {"
    echo "  name = \"$name\","
    echo "  control = \"$T/$name.sock\","
    for line in "$@"; do echo "  $line,"; done
    echo "}"
  } >"$T/$name.lua"
}

# start_agent NAME - run `pogo agent -c $T/NAME.lua` (written by
# write_config if missing) and wait until it answers on its socket.
start_agent() {
  local name=$1
  [ -f "$T/$name.lua" ] || write_config "$name"
  ${NETNS:+ip netns exec "$NETNS"} "$POGO" agent -c "$T/$name.lua" >>"$T/$name.log" 2>&1 &
  AGENT_PID[$name]=$!
  ALL_AGENT_PIDS+=($!)
  wait_for 10 "agent $name answering on $T/$name.sock" "$POGO" eval -s "$T/$name.sock" 1
}

# stop_agent NAME [SIGNAL] - signal it and expect a clean exit (status 0;
# under ASan a leak makes it non-zero).
stop_agent() {
  local name=$1 sig=${2:-TERM} pid=${AGENT_PID[$1]} rc
  kill -"$sig" "$pid"
  wait "$pid"; rc=$?
  unset "AGENT_PID[$name]"
  [ $rc -eq 0 ] || fail "agent $name exited with status $rc after SIG$sig"
}

agent_alive() { kill -0 "${AGENT_PID[$1]}" 2>/dev/null; }

# ev NAME CODE - pogo eval against agent NAME; prints its stdout.
ev() { "$POGO" eval -s "$T/$1.sock" "${@:2}"; }

expect_eq() { # expect_eq EXPECTED ACTUAL [WHAT]
  [ "$1" == "$2" ] || fail "${3:-value}: expected '$1', got '$2'"
}

expect_match() { # expect_match REGEX TEXT [WHAT]
  [[ "$2" =~ $1 ]] || fail "${3:-text}: expected to match /$1/, got: $2"
}

expect_status() { # expect_status N COMMAND... - run it, compare exit status
  local want=$1; shift
  "$@"; local got=$?
  [ "$got" -eq "$want" ] || fail "exit status of '$*': expected $want, got $got"
}

# ---- children -------------------------------------------------------------

# write_child FILE LUA - writes $T/children/FILE.lua (atomically: temp +
# rename, as editors do) returning LUA.
write_child() {
  mkdir -p "$T/children"
  printf '%s\n' "$2" >"$T/children/.$1.tmp"
  mv "$T/children/.$1.tmp" "$T/children/$1.lua"
}

# start_supervisor NAME [LUA_FIELDS...] - an agent with $T/children.
start_supervisor() {
  local name=$1; shift
  mkdir -p "$T/children"
  write_config "$name" "children = \"$T/children\"" "log_dir = \"$T/logs\"" "$@"
  start_agent "$name"
}

# field AGENT ID FIELD - one field of a child's view, printed raw ("" if nil).
field() {
  "$POGO" eval -s "$T/$1.sock" "local c = pogo.sup.child('$2') print(c and c.$3 ~= nil and tostring(c.$3) or '')"
}

# wait_field SECS AGENT ID FIELD VALUE
wait_field() {
  local secs=$1 a=$2 id=$3 f=$4 want=$5
  wait_for "$secs" "child $id: $f = '$want' (is '$(field "$a" "$id" "$f")')" \
    bash -c "[ \"\$('$POGO' eval -s '$T/$a.sock' \"local c = pogo.sup.child('$id') print(c and c.$f ~= nil and tostring(c.$f) or '')\")\" = '$want' ]"
}

# gone PID - true when no such process (zombies count as gone).
gone() {
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 0
  [ "$st" = Z ]
}

# ---- clusters -----------------------------------------------------------------

# new_key FILE - a fresh cluster key file.
new_key() { "$POGO" keygen "$1" >/dev/null || fail "keygen $1"; }

# A port range of this test's own, so tests never collide.
# Below the kernel's ephemeral range (32768+), so no dial can hold our port.
PORT_BASE=${PORT_BASE:-$((20000 + (RANDOM % 1200) * 10))}

# start_node NAME INDEX [SEED_INDEX...] [-- LUA_FIELDS...] - an agent in a
# cluster on 127.0.0.1, listening on PORT_BASE+INDEX, key $T/cluster.key.
start_node() {
  local name=$1 idx=$2; shift 2
  local seeds=() extra=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do seeds+=("\"127.0.0.1:$((PORT_BASE + $1))\""); shift; done
  [ "${1:-}" = -- ] && { shift; extra=("$@"); }
  [ -f "$T/cluster.key" ] || new_key "$T/cluster.key"
  local IFS=,
  write_config "$name" "listen = \"127.0.0.1:$((PORT_BASE + idx))\"" \
    "secret_file = \"$T/cluster.key\"" "seeds = { ${seeds[*]} }" "${extra[@]}"
  unset IFS
  start_agent "$name"
}

# up_count NAME - how many nodes NAME sees up (itself included).
up_count() {
  "$POGO" eval -s "$T/$1.sock" 'local n = 0 for _, x in ipairs(pogo.cluster.nodes()) do if x.state == "up" then n = n + 1 end end return n'
}

# wait_up SECS N NAME... - every NAME sees exactly N nodes up.
wait_up() {
  local secs=$1 n=$2; shift 2
  local name
  for name in "$@"; do
    wait_for "$secs" "$name to see $n nodes up (sees $(up_count "$name"))" \
      bash -c "[ \"\$('$POGO' eval -s '$T/$name.sock' 'local n = 0 for _, x in ipairs(pogo.cluster.nodes()) do if x.state == \"up\" then n = n + 1 end end return n')\" = $n ]"
  done
}

# state_of NAME PEER - PEER's state as NAME sees it.
state_of() {
  "$POGO" eval -s "$T/$1.sock" "for _, x in ipairs(pogo.cluster.nodes()) do if x.name == '$2' then print(x.state) end end"
}

# ---- partitions: one network namespace, nftables between 127.0.0.x -------------

# netns_start - a private network namespace for this test (loopback only,
# an nftables output chain to drop traffic between node addresses). Exits
# 77 (skipped) where the kernel refuses namespaces or nftables.
netns_start() {
  NETNS=pogo-e2e-$$
  if ! ip netns add "$NETNS" 2>/dev/null; then
    NETNS=; echo "SKIP: cannot create a network namespace here"; exit 77
  fi
  ip -n "$NETNS" link set lo up
  if ! ip netns exec "$NETNS" nft -f - <<'NFT'
table inet pogo {
  chain out { type filter hook output priority 0; policy accept; }
}
NFT
  then echo "SKIP: nftables is not usable in a namespace here"; exit 77; fi
}

# ns_node NAME INDEX [SEED_INDEX...] - start_node on 127.0.0.(INDEX+1)
# inside the namespace, all on one port.
ns_node() {
  local name=$1 idx=$2; shift 2
  local seeds=() s
  for s in "$@"; do seeds+=("\"127.0.0.$((s + 1)):$PORT_BASE\""); done
  [ -f "$T/cluster.key" ] || new_key "$T/cluster.key"
  local IFS=,
  write_config "$name" "listen = \"127.0.0.$((idx + 1)):$PORT_BASE\"" \
    "secret_file = \"$T/cluster.key\"" "seeds = { ${seeds[*]} }"
  unset IFS
  start_agent "$name"
}

# net_drop FROM TO - lose every packet from node index FROM to node index TO.
net_drop() {
  ip netns exec "$NETNS" nft add rule inet pogo out ip saddr "127.0.0.$(($1 + 1))" ip daddr "127.0.0.$(($2 + 1))" drop
}
net_cut() { net_drop "$1" "$2"; net_drop "$2" "$1"; }   # both ways
net_heal() { ip netns exec "$NETNS" nft flush chain inet pogo out; }
