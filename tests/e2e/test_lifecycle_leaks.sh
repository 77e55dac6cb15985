# One cluster through a whole life, for the leak check of e2e-asan: three
# agents in a network namespace start, run children, start and stop some,
# reload spec files (one broken), reload the placement policy (one broken),
# lose a node to a partition and get it back, and stop on SIGTERM. Every
# step is checked to have happened; under the ASan build (tests/run
# e2e-asan) an agent that leaks exits non-zero and leaves its report in
# $T/sanitizer.PID, and either fails the test. Skipped where namespaces are
# refused.

TAG="lc$$"

# lnode NAME IDX [SEED_IDX...] [-- LUA_FIELDS...] - an agent on 127.0.0.(IDX+1)
# in the namespace, with the policy, hooks and log dir of this test.
lnode() {
  local name=$1 idx=$2; shift 2
  local seeds=() extra=() s
  while [ $# -gt 0 ] && [ "$1" != -- ]; do seeds+=("\"127.0.0.$(($1 + 1)):$PORT_BASE\""); shift; done
  [ "${1:-}" = -- ] && { shift; extra=("$@"); }
  local IFS=,
  write_config "$name" "listen = \"127.0.0.$((idx + 1)):$PORT_BASE\"" \
    "secret_file = \"$T/cluster.key\"" "seeds = { ${seeds[*]} }" "log_dir = \"$T/logs-$name\"" \
    "placement = \"$T/policy.lua\"" "hooks = \"$T/hooks.lua\"" 'drain_timeout = "5s"' "${extra[@]}"
  unset IFS
  start_agent "$name"
}

# spec_file FILE PREFIX N [VERSION] - N sleepers PREFIX-1..N, each a process
# named "$TAG-<id>" so the test can count it wherever it runs.
spec_file() {
  mkdir -p "$T/children"
  cat >"$T/children/.$1.tmp" <<EOF
local out = {}
for i = 1, $3 do
  out[i] = { id = "$2-" .. i, env = { VERSION = "${4:-1}" }, shutdown = "1s",
    cmd = { "bash", "-c", "exec -a $TAG-\$POGO_CHILD_ID sleep 100000" } }
end
return out
EOF
  mv "$T/children/.$1.tmp" "$T/children/$1.lua"
}

copies() { pgrep -c -f "^$TAG-$1( |\$)" || true; }       # copies ID
pid_of() { pgrep -f "^$TAG-$1( |\$)" | head -1; }
n_copies() { [ "$(copies "$1")" = "$2" ]; }                # n_copies ID N
each_once() { local i; for i in $(seq 1 "$2"); do n_copies "$1-$i" 1 || return 1; done; }

# ready_on NAME PREFIX NODE - how many PREFIX-* children NAME sees ready on NODE.
ready_on() {
  ev "$1" "local n = 0 for _, r in ipairs(pogo.sup.children{global=true}) do if r.id:find('$2-', 1, true) == 1 and r.state == 'ready' and r.node == '$3' then n = n + 1 end end return n"
}
all_on() { [ "$(ready_on "$1" "$2" "$3")" = "$4" ]; }      # all_on NAME PREFIX NODE N

has_error() { ev "$1" 'pogo.errors()' | grep -q "$2"; }   # has_error NAME FILE
hook_count() { cat "$T"/*.log | grep -c "$1" || true; }    # across every agent's log
hook_seen() { [ "$(hook_count "$1")" -ge "$2" ]; }
registry_size() { ev "$1" 'local n = 0 for _ in next, debug.getregistry() do n = n + 1 end return n'; }

test_a_cluster_lifecycle_leaves_no_leak() {
  local n
  netns_start
  new_key "$T/cluster.key"
  echo 'return function(child, nodes) return pogo.placement.default(child, nodes) end' >"$T/policy.lua"
  cat >"$T/hooks.lua" <<'EOF'
return {
  on_exit = function(child) if child.id == "crash" then pogo.log.info("HOOK exit crash") end end,
  on_node_down = function(node) pogo.log.info("HOOK down %s", node.name) end,
  on_node_up = function(node) pogo.log.info("HOOK up %s", node.name) end,
}
EOF
  spec_file app app 6
  spec_file extra ex 2
  cat >"$T/children/crash.lua" <<'EOF'
return { id = "crash", cmd = { "sh", "-c", "sleep 0.1; exit 1" }, max_restarts = 1000,
  backoff = { initial = "100ms", max = "100ms" } }
EOF
  lnode a 1 -- "children = \"$T/children\""; lnode b 2 1; lnode c 3 1
  wait_up 10 3 a b c
  wait_for 15 "app-1..6 each running once" each_once app 6
  wait_for 5 "ex-1..2 each running once" each_once ex 2

  # Children restarting, stopped and started from any node, one ad hoc.
  wait_for 10 "crash restarted 5 times" hook_seen "HOOK exit crash" 5
  "$POGO" stop -s "$T/b.sock" app-1 >/dev/null || fail "pogo stop app-1"
  wait_for 5 "app-1 stopped" n_copies app-1 0
  "$POGO" start -s "$T/c.sock" app-1 >/dev/null || fail "pogo start app-1"
  wait_for 5 "app-1 running again" n_copies app-1 1
  ev b "assert(pogo.sup.start{ id = 'adhoc', cmd = { 'bash', '-c', 'exec -a $TAG-adhoc sleep 100000' } })" >/dev/null
  wait_for 5 "adhoc running" n_copies adhoc 1
  "$POGO" stop -s "$T/a.sock" adhoc >/dev/null || fail "pogo stop adhoc"
  wait_for 5 "adhoc stopped" n_copies adhoc 0

  # Spec files: a change replaces the children, a broken file changes
  # nothing, a removed file stops its children.
  local old; old=$(pid_of app-2)
  spec_file app app 6 2
  wait_for 10 "app-2 replaced" bash -c "p=\$(pgrep -f '^$TAG-app-2( |\$)' | head -1); [ -n \"\$p\" ] && [ \"\$p\" != $old ]"
  wait_for 10 "app-1..6 once after the change" each_once app 6
  echo 'return { id = "app-1", cmd = ' >"$T/children/app.lua"
  wait_for 5 "the broken spec file reported" has_error a app.lua
  each_once app 6 || fail "a broken spec file changed the children"
  spec_file app app 6 2
  wait_for 5 "the spec error cleared" bash -c "! '$POGO' eval -s '$T/a.sock' 'pogo.errors()' | grep -q app.lua"
  rm "$T/children/extra.lua"
  wait_for 10 "ex-1 and ex-2 stopped" bash -c "[ \$(pgrep -c -f '^$TAG-ex-') = 0 ]"

  # Placement policy: everything to c, then a broken policy keeps that.
  cat >"$T/policy.lua" <<'EOF'
return function(child, nodes)
  for _, n in ipairs(nodes) do if n.name == "c" then return "c" end end
  return pogo.placement.default(child, nodes)
end
EOF
  wait_for 15 "app-1..6 ready on c" all_on a app c 6
  wait_for 10 "app-1..6 once after the move" each_once app 6
  echo 'return function(' >"$T/policy.lua"
  wait_for 5 "the broken policy reported" has_error b policy.lua
  all_on b app c 6 || fail "a broken policy moved children"

  # Partition: c cut off from a and b, both sides run everything, and after
  # the heal every child runs once again.
  net_cut 3 1; net_cut 3 2
  wait_up 5 2 a b
  wait_up 5 1 c
  wait_for 5 "on_node_down of c ran" grep -q "HOOK down c" "$T/a.log"
  wait_for 10 "a's side runs app-1..6 too" bash -c "[ \"\$('$POGO' eval -s '$T/a.sock' \"local n = 0 for _, r in ipairs(pogo.sup.children{global=true}) do if r.id:find('app-') == 1 and r.state == 'ready' then n = n + 1 end end return n\")\" = 6 ]"
  net_heal
  wait_up 15 3 a b c
  wait_for 5 "on_node_up of c ran" grep -q "HOOK up c" "$T/a.log"
  wait_for 10 "no duplicates after the heal" each_once app 6

  # Churn must not pile up in the Lua registry, where LeakSanitizer cannot
  # see it (lua_close frees it at exit): 20 more crashes, at most 10 more
  # entries on any agent.
  local before=() after=() i
  for n in a b c; do before+=("$(registry_size "$n")"); done
  local crashes; crashes=$(hook_count "HOOK exit crash")
  wait_for 20 "20 more crashes" hook_seen "HOOK exit crash" $((crashes + 20))
  for n in a b c; do after+=("$(registry_size "$n")"); done
  for i in 0 1 2; do
    [ "${after[i]}" -le $((before[i] + 10)) ] || fail "registry of agent $i grew from ${before[i]} to ${after[i]} entries over 20 crashes"
  done

  # A clean stop of every agent: status 0 (ASan exits 99 on a leak) and no
  # sanitizer report from any process of the test.
  for n in c b a; do stop_agent "$n" TERM; done
  grep -q "agent: stopped" "$T/a.log" || fail "a did not log its stop"
  if sanitizer_reports >&2; then fail "a sanitizer reported (above)"; fi
  [ "$(pgrep -c -f "^$TAG-")" = 0 ] || fail "children left after the agents stopped"
}
