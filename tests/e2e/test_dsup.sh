# End-to-end tests of the distributed supervisor: real agents on loopback
# (or in a network namespace for partitions), real child processes. Each
# child runs `sleep` under the name "<tag>-<id>", so a test counts the real
# processes of a child, wherever they run.

TAG="pd$$"

# A spec (Lua) of a child that sleeps under its countable name.
sleeper() { # sleeper ID [EXTRA_LUA_FIELDS]
  printf '{ id = "%s", cmd = { "bash", "-c", "exec -a %s-$POGO_CHILD_ID sleep 100000" }, shutdown = "1s"%s }' \
    "$1" "$TAG" "${2:+, $2}"
}

# family FILE PREFIX N - a spec file generating N sleepers PREFIX-1..N.
family() {
  mkdir -p "$T/children"
  cat >"$T/children/.$1.tmp" <<EOF
local out = {}
for i = 1, $3 do
  out[i] = { id = "$2-" .. i, cmd = { "bash", "-c", "exec -a $TAG-\$POGO_CHILD_ID sleep 100000" },
    shutdown = "1s" }
end
return out
EOF
  mv "$T/children/.$1.tmp" "$T/children/$1.lua"
}

# copies ID - how many processes of child ID run on this machine.
copies() { pgrep -c -f "^$TAG-$1( |\$)" || true; }
pid_of() { pgrep -f "^$TAG-$1( |\$)" | head -1; }

# dnode NAME IDX [SEED_IDX...] [-- LUA_FIELDS...] - a cluster node with a log dir.
dnode() {
  local name=$1 idx=$2; shift 2
  local seeds=() extra=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do seeds+=("$1"); shift; done
  [ "${1:-}" = -- ] && { shift; extra=("$@"); }
  start_node "$name" "$idx" "${seeds[@]}" -- "log_dir = \"$T/logs-$name\"" "${extra[@]}"
}

# global NAME [PATTERN] - "id node state" lines of NAME's global view.
global() {
  local match=nil
  [ -n "${2:-}" ] && match="'$2'"
  ev "$1" "local t = {} for _, r in ipairs(pogo.sup.children{global=true, match=$match}) do t[#t+1] = r.id .. ' ' .. (r.node or '-') .. ' ' .. r.state end print(table.concat(t, '\n'))"
}

# node_of NAME ID - the node NAME sees running ID ("" if none, "a b" if two).
node_of() {
  ev "$1" "local t = {} for _, r in ipairs(pogo.sup.children{global=true}) do if r.id == '$2' and r.state == 'ready' then t[#t+1] = r.node end end print(table.concat(t, ' '))"
}

# once IDS... - every child has exactly one process.
once() { local id; for id in "$@"; do [ "$(copies "$id")" = 1 ] || return 1; done; }

# settled NAME N - NAME's global view shows N children, each ready once.
settled() {
  [ "$(ev "$1" "local n, seen = 0, {} for _, r in ipairs(pogo.sup.children{global=true}) do if r.state == 'ready' and not seen[r.id] then seen[r.id] = true n = n + 1 elseif r.state ~= 'ready' or seen[r.id] then return -1 end end return n")" = "$2" ]
}

ids() { local p=$1 n=$2 i; for i in $(seq 1 "$n"); do echo "$p-$i"; done; }

# The environment variable NAME of process PID.
env_of() { tr '\0' '\n' <"/proc/$1/environ" | sed -n "s/^$2=//p"; }

test_children_of_a_spec_file_run_once_across_three_nodes() {
  family fam fam 9
  dnode a 1 -- "children = \"$T/children\""; dnode b 2 1; dnode c 3 1
  wait_up 10 3 a b c
  wait_for 10 "9 children ready in a's global view" settled a 9
  for n in b c; do wait_for 5 "$n's view settled" settled "$n" 9; done
  once $(ids fam 9) || fail "not exactly one process each: $(for i in $(ids fam 9); do echo -n "$i=$(copies $i) "; done)"
  local nodes; nodes=$(global c | awk '{print $2}' | sort -u | wc -l)
  [ "$nodes" -ge 2 ] || fail "all 9 children landed on one node"
  # the policy's answer is where they run
  for id in fam-1 fam-5 fam-9; do
    expect_eq "$(ev b "return pogo.sup.explain('$id').placement.node")" "\"$(node_of b "$id")\"" "$id runs where the policy says"
  done
  local out; out=$("$POGO" ps -s "$T/b.sock" --global)
  expect_match "ID +NODE +STATE +PID +GEN +UPTIME" "$out" "ps --global header"
  expect_match "fam-9 +[abc] +ready +[0-9]+ +[0-9]+ " "$out" "ps --global row"
}

test_start_and_stop_from_any_node_with_fencing_generations() {
  dnode a 1; dnode b 2 1; dnode c 3 1
  wait_up 10 3 a b c
  echo "return $(sleeper solo)" >"$T/solo.lua"
  local out; out=$("$POGO" start -s "$T/b.sock" --wait --file "$T/solo.lua") || fail "start --wait: $out"
  expect_match "^solo running on [abc]$" "$out" "start --wait says where"
  expect_eq 1 "$(copies solo)" "one process"
  local pid g1; pid=$(pid_of solo); g1=$(env_of "$pid" POGO_GENERATION)
  expect_eq "${out##* }" "$(env_of "$pid" POGO_NODE)" "POGO_NODE is where it landed"
  "$POGO" stop -s "$T/c.sock" solo || fail "stop from c"
  wait_for 5 "solo stopped" bash -c "[ \"\$(pgrep -c -f '^$TAG-solo( |\$)')\" = 0 ]"
  wait_for 2 "a shows solo stopped" bash -c "'$POGO' eval -s '$T/a.sock' \"return pogo.sup.children{global=true}[1].state\" | grep -qx '\"stopped\"'"
  out=$("$POGO" start -s "$T/a.sock" --wait solo) || fail "start solo again: $out"
  pid=$(pid_of solo)
  local g2; g2=$(env_of "$pid" POGO_GENERATION)
  [ "$g2" -gt "$g1" ] || fail "generation did not grow: $g1 then $g2"
  expect_status 1 "$POGO" stop -s "$T/b.sock" nosuch
  # a spec table from the API travels as Lua source; functions are refused
  ev c "assert(pogo.sup.start($(sleeper api)))" >/dev/null || fail "pogo.sup.start(table)"
  wait_for 5 "api running once" once api
  out=$(ev c "return pogo.sup.start({ id = 'fn', cmd = 'true', hooks = { on_exit = function() end } })")
  expect_match "cannot be written as Lua source" "$out" "a table with functions is refused"
}

test_the_desired_set_survives_the_requesting_node_and_fails_over_after_kill_9() {
  family fam fam 6
  dnode a 1 -- "children = \"$T/children\""; dnode b 2 1; dnode c 3 1
  wait_up 10 3 a b c
  wait_for 10 "6 children ready" settled b 6
  local t0; t0=$(date +%s%N)
  kill -9 "${AGENT_PID[a]}"
  wait_for 5 "6 children ready on b and c" settled b 6
  echo "failover after kill -9 of a: $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  wait_for 2 "exactly once" once $(ids fam 6)
  global b | grep -q " a " && fail "a still listed: $(global b)"
  # what a asked for is still wanted: stopping and starting it works from c
  "$POGO" stop -s "$T/c.sock" fam-1 || fail "stop fam-1"
  wait_for 5 "fam-1 gone" bash -c "[ \"\$(pgrep -c -f '^$TAG-fam-1( |\$)')\" = 0 ]"
}

test_failover_after_sigstop_and_duplicates_gone_after_sigcont() {
  family fam fam 6
  dnode a 1 -- "children = \"$T/children\""; dnode b 2 1; dnode c 3 1
  wait_up 10 3 a b c
  wait_for 10 "6 children ready" settled a 6
  local frozen=b
  [ -n "$(global a | awk '$2 == "b"')" ] || frozen=c
  local t0; t0=$(date +%s%N)
  kill -STOP "${AGENT_PID[$frozen]}"
  local other=a
  wait_for 5 "6 children ready without $frozen" bash -c "[ \"\$('$POGO' eval -s '$T/a.sock' \"local n = 0 for _, r in ipairs(pogo.sup.children{global=true}) do if r.state == 'ready' and r.node ~= '$frozen' then n = n + 1 end end return n\")\" = 6 ]"
  echo "failover after SIGSTOP of $frozen: $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  kill -CONT "${AGENT_PID[$frozen]}"
  t0=$(date +%s%N)
  wait_for 5 "duplicates gone after SIGCONT" once $(ids fam 6)
  echo "duplicates gone $(( ($(date +%s%N) - t0) / 1000000 )) ms after SIGCONT"
  wait_up 10 3 a b c
  wait_for 5 "settled" settled "$other" 6
}

test_a_joining_node_takes_exactly_its_share_without_a_gap() {
  family fam fam 24
  dnode a 1 -- "children = \"$T/children\""; dnode b 2 1
  wait_up 10 2 a b
  wait_for 10 "24 children ready" settled a 24
  local before; before=$(global a | sort)
  dnode c 3 1
  wait_up 10 3 a b c
  local expected; expected=$(ev a "local nodes = {} for _, n in ipairs { 'a', 'b', 'c' } do nodes[#nodes+1] = { name = n, meta = {} } end
    local t = {} for i = 1, 24 do local id = 'fam-' .. i if pogo.placement.rendezvous({ id = id }, nodes) == 'c' then t[#t+1] = id end end
    table.sort(t) return table.concat(t, ' ')")
  wait_for 10 "c runs its share" bash -c "[ \"\$('$POGO' eval -s '$T/a.sock' \"local t = {} for _, r in ipairs(pogo.sup.children{global=true}) do if r.node == 'c' and r.state == 'ready' then t[#t+1] = r.id end end table.sort(t) return table.concat(t, ' ')\")\" = '$expected' ]"
  wait_for 5 "settled" settled a 24
  once $(ids fam 24) || fail "not exactly once after the join"
  local moved; moved=$(diff <(echo "$before") <(global a | sort) | grep -c '^>' || true)
  local share; share=$(echo "$expected" | tr -d '"' | wc -w)
  echo "moved $moved of 24 (ideal 8, policy's share $share)"
  expect_eq "$share" "$moved" "only the children the policy gives c moved"
  # make-before-break, from the agents' own logs (one clock): every copy
  # stopped for the move stopped after its replacement had started
  local late; late=$(cat "$T"/[abc].log | awk '
    /sup: child .* started, pid/ { match($0, /child .[^ ]*. started/); id = substr($0, RSTART + 7, RLENGTH - 16); if ($1 > start[id]) start[id] = $1 }
    /dsup: stopping child/ { match($0, /child .[^ ]*. here/); id = substr($0, RSTART + 7, RLENGTH - 13); stop[id] = $1 }
    END { for (id in stop) if (stop[id] < start[id]) print id " stopped " stop[id] " before its new copy started " start[id] }')
  [ -z "$late" ] || fail "a moved child had no copy for a while: $late"
}

test_drain_hands_every_child_over_then_the_agent_exits() {
  family fam fam 9
  dnode a 1 -- "children = \"$T/children\""; dnode b 2 1; dnode c 3 1
  wait_up 10 3 a b c
  wait_for 10 "9 ready" settled a 9
  local on_b; on_b=$(global a | awk '$2 == "b"' | wc -l)
  local out; out=$("$POGO" drain -s "$T/b.sock") || fail "drain: $out"
  expect_eq "drained: $on_b children handed over, 0 left" "$out"
  wait_for 5 "b exited" bash -c "! kill -0 ${AGENT_PID[b]} 2>/dev/null"
  wait "${AGENT_PID[b]}"; expect_eq 0 $? "b's exit status"
  unset "AGENT_PID[b]"
  wait_for 5 "settled on a and c" settled a 9
  once $(ids fam 9) || fail "not exactly once after the drain"
}

test_spec_file_changes_and_removal_reach_every_node() {
  family fam fam 4
  dnode a 1 -- "children = \"$T/children\""; dnode b 2 1; dnode c 3 1
  wait_up 10 3 a b c
  wait_for 10 "4 ready" settled c 4
  local p1 p3; p1=$(pid_of fam-1); p3=$(pid_of fam-3)
  # change one child only: it is replaced wherever it runs, the others stay
  cat >"$T/children/.x.tmp" <<EOF
local out = {}
for i = 1, 4 do
  out[i] = { id = "fam-" .. i, cmd = { "bash", "-c", "exec -a $TAG-\$POGO_CHILD_ID sleep 100000" },
    shutdown = "1s", env = i == 3 and { CHANGED = "yes" } or nil }
end
return out
EOF
  mv "$T/children/.x.tmp" "$T/children/fam.lua"
  wait_for 5 "fam-3 replaced" bash -c "p=\$(pgrep -f '^$TAG-fam-3( |\$)'); [ -n \"\$p\" ] && [ \"\$p\" != $p3 ] && tr '\\0' '\\n' </proc/\$p/environ | grep -qx CHANGED=yes"
  expect_eq "$p1" "$(pid_of fam-1)" "an unchanged child keeps its process"
  wait_for 5 "settled" settled b 4
  # a broken edit keeps what runs
  echo "return {" >"$T/children/fam.lua"
  sleep 0.3
  wait_for 2 "still 4" settled b 4
  rm "$T/children/fam.lua"
  wait_for 5 "all gone" bash -c "! pgrep -f '^$TAG-' >/dev/null"
  wait_for 2 "b shows them stopped" bash -c "[ \"\$('$POGO' eval -s '$T/b.sock' \"local n = 0 for _, r in ipairs(pogo.sup.children{global=true}) do if r.state == 'stopped' then n = n + 1 end end return n\")\" = 4 ]"
}

test_a_policy_edit_moves_exactly_the_children_whose_answer_changed() {
  family fam fam 12
  cat >"$T/policy.lua" <<'EOF'
return function(child, nodes) return pogo.placement.default(child, nodes) end
EOF
  local pol="placement = \"$T/policy.lua\""
  dnode a 1 -- "children = \"$T/children\"" "$pol"; dnode b 2 1 -- "$pol"; dnode c 3 1 -- "$pol"
  wait_up 10 3 a b c
  wait_for 10 "12 ready" settled a 12
  local before; before=$(global a | sort)
  local pids=() i; for i in $(seq 1 12); do pids[i]=$(pid_of "fam-$i"); done
  # new policy: the even children go to c
  cat >"$T/.policy.tmp" <<'EOF'
return function(child, nodes)
  local n = tonumber(child.id:match("%d+$"))
  if n % 2 == 0 then return "c" end
  return pogo.placement.default(child, nodes)
end
EOF
  # the dry run first: exactly the even children not on c would move, to c
  local expected; expected=$(echo "$before" | awk '{ split($1, p, "-"); if (p[2] % 2 == 0 && $2 != "c") n++ } END { print n + 0 }')
  expect_eq "$expected" "$(ev b "local m = assert(pogo.placement.preview('$T/.policy.tmp')) for _, x in ipairs(m) do assert(x.to == 'c', x.id) end return #m")" "moves in pogo.placement.preview"
  mv "$T/.policy.tmp" "$T/policy.lua"
  wait_for 10 "even children on c" bash -c "[ \"\$('$POGO' eval -s '$T/b.sock' \"local n = 0 for _, r in ipairs(pogo.sup.children{global=true}) do local k = tonumber(r.id:match('%d+$')) if k % 2 == 0 and r.node == 'c' and r.state == 'ready' then n = n + 1 end end return n\")\" = 6 ]"
  wait_for 5 "settled" settled a 12
  once $(ids fam 12) || fail "not exactly once after the policy edit"
  for i in $(seq 1 12); do
    local was; was=$(echo "$before" | awk -v id="fam-$i" '$1 == id {print $2}')
    if [ $((i % 2)) = 1 ] || [ "$was" = c ]; then
      expect_eq "${pids[i]}" "$(pid_of "fam-$i")" "fam-$i (answer unchanged) keeps its process"
    fi
  done
  local out; out=$("$POGO" members -s "$T/a.sock")
  expect_match "POLICY" "$out"
  [[ "$out" == *warning* ]] && fail "nodes disagree after the edit reached all: $out"
  # a broken policy keeps the last good one
  echo "return function(" >"$T/policy.lua"
  sleep 0.5
  wait_for 2 "still settled" settled a 12
  expect_match "policy.lua" "$(ev a 'pogo.errors()')" "the policy error is reported"
}

test_a_child_that_keeps_failing_on_one_node_moves_to_another() {
  dnode a 1; dnode b 2 1; dnode c 3 1
  wait_up 10 3 a b c
  local first; first=$(ev a "local nodes = {} for _, n in ipairs { 'a', 'b', 'c' } do nodes[#nodes+1] = { name = n, meta = {} } end return pogo.placement.rendezvous({ id = 'flaky' }, nodes)" | tr -d '"')
  cat >"$T/flaky.lua" <<EOF
return { id = "flaky", max_restarts = 2, max_seconds = 30, backoff = { initial = 0.05 },
  cmd = { "bash", "-c", "[ \"\$POGO_NODE\" = $first ] && exit 3; exec -a $TAG-flaky sleep 100000" } }
EOF
  "$POGO" start -s "$T/a.sock" --file "$T/flaky.lua" >/dev/null || fail "start flaky"
  wait_for 10 "flaky runs on a node other than $first" bash -c "n=\$('$POGO' eval -s '$T/b.sock' \"for _, r in ipairs(pogo.sup.children{global=true}) do if r.state == 'ready' then print(r.node) end end\"); [ -n \"\$n\" ] && [ \"\$n\" != $first ]"
  expect_eq 1 "$(copies flaky)"
  expect_match "failed" "$(global b)" "the failed copy stays listed on $first for its cool-down"
}

test_placement_change_and_node_hooks_run() {
  cat >"$T/hooks.lua" <<'EOF'
return {
  on_placement_change = function(child, from, to) pogo.log.info("HOOK move %s %s %s", child.id, tostring(from), tostring(to)) end,
  on_node_up = function(node) pogo.log.info("HOOK up %s", node.name) end,
  on_node_down = function(node) pogo.log.info("HOOK down %s", node.name) end,
}
EOF
  # the policy sends every child to z once z is there
  cat >"$T/policy.lua" <<'EOF'
return function(child, nodes)
  for _, n in ipairs(nodes) do if n.name == "z" then return "z" end end
  return nodes[1].name
end
EOF
  local f=("hooks = \"$T/hooks.lua\"" "placement = \"$T/policy.lua\"")
  dnode a 1 -- "${f[@]}"
  ev a "assert(pogo.sup.start($(sleeper m)))" >/dev/null
  wait_for 5 "m on a" once m
  dnode z 2 1 -- "${f[@]}"
  wait_up 10 2 a z
  wait_for 5 "a's on_node_up saw z" grep -q "HOOK up z" "$T/a.log"
  wait_for 5 "m moved to z" bash -c "[ \"\$('$POGO' eval -s '$T/a.sock' \"for _, r in ipairs(pogo.sup.children{global=true}) do if r.state == 'ready' then return r.node end end\")\" = '\"z\"' ]"
  wait_for 5 "a's hook saw the move" grep -q "HOOK move m a z" "$T/a.log"
  wait_for 5 "z's hook saw the move" grep -q "HOOK move m a z" "$T/z.log"
  kill -9 "${AGENT_PID[z]}"
  wait_for 5 "a's on_node_down saw z" grep -q "HOOK down z" "$T/a.log"
  wait_for 5 "m back on a" once m
}

# ---- partitions (network namespace) ----------------------------------------

# nsd NAME IDX [SEED...] [-- FIELDS] - ns_node with the fields we need.
nsd() {
  local name=$1 idx=$2; shift 2
  local seeds=() extra=() s
  while [ $# -gt 0 ] && [ "$1" != -- ]; do seeds+=("\"127.0.0.$(($1 + 1)):$PORT_BASE\""); shift; done
  [ "${1:-}" = -- ] && { shift; extra=("$@"); }
  [ -f "$T/cluster.key" ] || new_key "$T/cluster.key"
  local IFS=,
  write_config "$name" "listen = \"127.0.0.$((idx + 1)):$PORT_BASE\"" \
    "secret_file = \"$T/cluster.key\"" "seeds = { ${seeds[*]} }" "log_dir = \"$T/logs-$name\"" "${extra[@]}"
  unset IFS
  start_agent "$name"
}

test_partition_available_mode_runs_both_sides_then_removes_duplicates() {
  netns_start
  family fam fam 6
  nsd a 1 -- "children = \"$T/children\""; nsd b 2 1; nsd c 3 1
  wait_up 10 3 a b c
  wait_for 10 "6 ready" settled a 6
  net_cut 3 1; net_cut 3 2
  wait_up 5 1 c
  wait_for 5 "c runs all 6 on its side" bash -c "[ \"\$('$POGO' eval -s '$T/c.sock' \"local n = 0 for _, r in ipairs(pogo.sup.children{global=true}) do if r.state == 'ready' then n = n + 1 end end return n\")\" = 6 ]"
  wait_for 5 "a's side runs all 6" bash -c "[ \"\$('$POGO' eval -s '$T/a.sock' \"local n = 0 for _, r in ipairs(pogo.sup.children{global=true}) do if r.state == 'ready' then n = n + 1 end end return n\")\" = 6 ]"
  net_heal
  local t0; t0=$(date +%s%N)
  wait_up 15 3 a b c
  wait_for 5 "duplicates gone" once $(ids fam 6)
  echo "no duplicates $(( ($(date +%s%N) - t0) / 1000000 )) ms after the heal"
  wait_for 5 "settled" settled b 6
}

# Records every instant the number of copies of child q changes.
watch_copies() { # watch_copies FILE - in the background; sets WATCHER
  ( while :; do echo "$(date +%s%N) $(pgrep -c -f "^$TAG-q( |\$)")"; sleep 0.005; done ) >"$1" &
  WATCHER=$!
}

# quorum_cluster - a, b, c in a namespace (expect = 3) running the quorum
# child q.
quorum_cluster() {
  netns_start
  echo "return $(sleeper q 'partition = "quorum"')" >"$T/q.lua"
  local f='expect = 3'
  nsd a 1 -- "$f"; nsd b 2 1 -- "$f"; nsd c 3 1 -- "$f"
  wait_up 10 3 a b c
  "$POGO" start -s "$T/a.sock" --wait --file "$T/q.lua" >/dev/null || fail "start q"
}

# most_copies - the most copies of q in any sample of watch_copies.
most_copies() { awk '{ if ($2 > m) m = $2 } END { print m + 0 }' "$T/copies"; }

test_partition_quorum_mode_never_runs_two_copies() {
  quorum_cluster
  local holder; holder=$(node_of a q)
  local hi; hi=$(( $(printf '%d' "'$holder") - 96 ))   # a=1 b=2 c=3
  watch_copies "$T/copies"
  local t0; t0=$(date +%s%N)
  for x in 1 2 3; do [ "$x" != "$hi" ] && net_cut "$hi" "$x"; done
  wait_for 10 "q running on the majority side" bash -c "n=\$(pgrep -f '^$TAG-q( |\$)' | head -1); [ -n \"\$n\" ] && ! tr '\\0' '\\n' </proc/\$n/environ | grep -qx POGO_NODE=$holder"
  echo "quorum child back on the majority $(( ($(date +%s%N) - t0) / 1000000 )) ms after the cut"
  net_heal
  wait_up 15 3 a b c
  # a move after the heal (the policy may now pick another node) is stop-
  # first and waits out the fence: q may be down for a few seconds
  wait_for 15 "q running once after the heal" once q
  kill "$WATCHER"; wait "$WATCHER" 2>/dev/null
  expect_eq 1 "$(most_copies)" "most copies of q at any sampled instant"
}

test_quorum_child_of_a_frozen_agent_is_killed_by_the_lease() {
  quorum_cluster
  local holder pid; holder=$(node_of a q); pid=$(pid_of q)
  watch_copies "$T/copies"
  local t0; t0=$(date +%s%N)
  kill -STOP "${AGENT_PID[$holder]}"
  wait_for 5 "the watchdog killed the frozen agent's copy" gone "$pid"
  local killed=$(( ($(date +%s%N) - t0) / 1000000 ))
  wait_for 10 "q running elsewhere" bash -c "n=\$(pgrep -f '^$TAG-q( |\$)' | head -1); [ -n \"\$n\" ] && [ \"\$n\" != $pid ]"
  echo "frozen holder's copy killed after $killed ms, new copy after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  kill -CONT "${AGENT_PID[$holder]}"
  wait_up 15 3 a b c
  wait_for 15 "q running once after the resume" once q
  kill "$WATCHER"; wait "$WATCHER" 2>/dev/null
  expect_eq 1 "$(most_copies)" "most copies of q at any sampled instant"
}
