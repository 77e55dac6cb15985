# End-to-end tests of bad input that no other test file tries: every kind
# of bad field in a children directory, a placement policy and a hooks file
# that raise or loop, a child that forks wildly, and abuse of the control
# socket. Each shows a clear error and that nothing else is lost. (The
# README's "Bad input" table lists where the other classes are tested.)

# expect_error AGENT FILE REGEX - pogo.errors() of AGENT has FILE failing
# with a message matching REGEX.
expect_error() {
  local msg
  msg=$(ev "$1" "print(pogo.errors()['$T/$2'])")
  expect_match "$3" "$msg" "the error for $2"
}

test_each_bad_spec_field_is_named_and_the_good_children_run() {
  write_child good 'return { id = "good", cmd = "sleep 1000" }'
  write_child restart 'return { id = "r", cmd = "sleep 1000", restart = "always" }'
  write_child unknown 'return { id = "u", cmd = "sleep 1000", restrat = "permanent" }'
  write_child shell 'return { id = "s", cmd = "sleep 1 | cat" }'
  write_child empty 'return { id = "e", cmd = {} }'
  write_child id 'return { id = "bad id!", cmd = "sleep 1000" }'
  write_child rlimit 'return { id = "n", cmd = "sleep 1000", rlimits = { nofile = "lots" } }'
  write_child duration 'return { id = "d", cmd = "sleep 1000", shutdown = "5 parsecs" }'
  write_child hook 'return { id = "h", cmd = "sleep 1000", hooks = { on_boom = function() end } }'
  write_child ready 'return { id = "rd", cmd = "sleep 1000", readiness = { tcp = "localhost:99999" } }'
  write_child syntax 'return { id = "syn", cmd = '
  write_child raises 'error("spec exploded")'
  write_child loops 'while true do end'
  write_child number 'return 42'
  write_child global 'return { id = "g", cmd = undefined_var }'
  write_child zdup 'return { id = "good", cmd = "sleep 1001" }'
  start_supervisor a 'budget = "100ms"'
  wait_field 10 a good state ready
  wait_for 10 "16 files loaded, 15 of them failed" \
    bash -c "[ \"\$('$POGO' eval -s '$T/a.sock' 'local n = 0 for _ in pairs(pogo.errors()) do n = n + 1 end return n')\" = 15 ]"
  local c="children"
  expect_error a $c/restart.lua "restart.lua:1: child 'r': 'restart' must be \"permanent\", \"transient\" or \"temporary\", got string \"always\""
  expect_error a $c/unknown.lua "unknown.lua:1: child 'u': unknown field 'restrat' \(did you mean 'restart'\?\)"
  expect_error a $c/shell.lua "child 's': 'cmd' must be .* is a shell operator"
  expect_error a $c/empty.lua "child 'e': 'cmd' must be"
  expect_error a $c/id.lua "id.lua:1: item 1: 'id' must be a string of 1 to 128"
  expect_error a $c/rlimit.lua "child 'n': 'rlimits.nofile' must be an integer >= 0 or \"infinity\", got string \"lots\""
  expect_error a $c/duration.lua "child 'd': 'shutdown' must be a duration .* unknown unit \"parsecs\""
  expect_error a $c/hook.lua "child 'h': unknown field 'hooks.on_boom'"
  expect_error a $c/ready.lua "child 'rd': 'readiness.tcp' must be an address .* port must be a number from 1 to 65535"
  expect_error a $c/syntax.lua "syntax.lua:2: unexpected symbol near <eof>"
  expect_error a $c/raises.lua "raises.lua:1: spec exploded"
  expect_error a $c/loops.lua "loops.lua:1: interrupted: ran past its budget of 100 ms"
  expect_error a $c/number.lua "number.lua: a spec file must return a spec table or a list of them, got number 42"
  expect_error a $c/global.lua "global.lua:1: undefined global 'undefined_var'"
  expect_error a $c/zdup.lua "zdup.lua: child 'good' is already defined in .*/good.lua"
  expect_eq "good" "$(ev a 'local ids = {} for _, c in ipairs(pogo.sup.children()) do ids[#ids + 1] = c.id end print(table.concat(ids, " "))')" \
    "the only child running"
  expect_match "sleep 1000" "$(tr '\0' ' ' </proc/"$(field a good pid)"/cmdline)" "good runs its own file's command"
  # A fixed file clears its error and its child starts.
  write_child restart 'return { id = "r", cmd = "sleep 1000", restart = "transient" }'
  wait_field 10 a r state ready
  expect_eq "" "$(ev a "print(pogo.errors()['$T/children/restart.lua'] or '')")" "the fixed file's error"
}

test_a_placement_policy_that_raises_loops_or_answers_nonsense_falls_back() {
  cat >"$T/policy.lua" <<'EOF'
return function(child, nodes)
  if child.id == "p-err" then error("policy exploded") end
  if child.id == "p-loop" then while true do end end
  if child.id == "p-nowhere" then return "nowhere" end
  if child.id == "p-num" then return 7 end
  return pogo.placement.default(child, nodes)
end
EOF
  write_child p 'local t = {}
for _, id in ipairs { "p-err", "p-loop", "p-nowhere", "p-num", "p-ok" } do t[#t + 1] = { id = id, cmd = "sleep 1000" } end
return t'
  start_node a 1 -- "children = \"$T/children\"" "log_dir = \"$T/logs\"" "placement = \"$T/policy.lua\"" 'budget = "100ms"'
  local id
  for id in p-err p-loop p-nowhere p-num p-ok; do wait_field 10 a "$id" state ready; done
  wait_for 5 "the policy's failures in the log" grep -q "policy exploded" "$T/a.log"
  grep -q "for child 'p-loop' failed: .*ran past its budget" "$T/a.log" || fail "no line for the looping policy"
  grep -q "returned 'nowhere', which is not a live node" "$T/a.log" || fail "no line for the answer 'nowhere'"
  grep -q "returned a number, not a node name" "$T/a.log" || fail "no line for the answer 7"
  expect_match "using default" "$(grep 'policy exploded' "$T/a.log")" "the fallback named"
  # A policy file that does not load keeps the running one, and says so.
  local pid; pid=$(field a p-ok pid)
  echo 'return function(' >"$T/policy.lua"
  wait_for 5 "the policy's load error in pogo.errors()" \
    bash -c "'$POGO' eval -s '$T/a.sock' 'pogo.errors()' | grep -q 'policy.lua'"
  grep -q "keeping the previous placement policy" "$T/a.log" || fail "no line for the broken policy file"
  printf 'return 42\n' >"$T/policy.lua"
  wait_for 5 "the wrong return value reported" \
    bash -c "'$POGO' eval -s '$T/a.sock' 'pogo.errors()' | grep -q 'must return a function'"
  expect_eq "$pid" "$(field a p-ok pid)" "p-ok keeps its process through the broken policies"
  expect_eq 2 "$(ev a '1 + 1')" "agent still serves"
}

test_a_hooks_file_that_fails_to_load_or_loops_keeps_the_children_going() {
  printf 'return { on_exit = function(c) pogo.log.info("HOOK1 %%s", c.id) end }\n' >"$T/hooks.lua"
  write_child crash "return { id = 'crash', cmd = { 'sh', '-c', 'sleep 0.1; exit 1' },
    max_restarts = 1000, backoff = { initial = '50ms', max = '50ms' } }"
  start_supervisor a "hooks = \"$T/hooks.lua\"" 'budget = "100ms"'
  wait_for 5 "the first hooks at work" grep -q "HOOK1 crash" "$T/a.log"
  # A syntax error: the previous hooks stay.
  printf 'return { on_exit = function(c) \n' >"$T/hooks.lua"
  wait_for 5 "the hooks error in pogo.errors()" bash -c "'$POGO' eval -s '$T/a.sock' 'pogo.errors()' | grep -q hooks.lua"
  grep -q "keeping the previous hooks" "$T/a.log" || fail "no line for the broken hooks file"
  local n; n=$(grep -c "HOOK1 crash" "$T/a.log")
  wait_for 5 "HOOK1 still running" bash -c "[ \$(grep -c 'HOOK1 crash' '$T/a.log') -gt $n ]"
  # A file that loops while loading is interrupted.
  printf 'while true do end\n' >"$T/hooks.lua"
  wait_for 5 "the looping hooks file interrupted" bash -c "'$POGO' eval -s '$T/a.sock' 'pogo.errors()' | grep -q 'hooks.lua:1: interrupted'"
  # An on_exit that loops and one that raises: each run is cut off, the
  # child goes on restarting.
  printf 'return { on_exit = function() while true do end end, on_start = function() error("HOOK2 raised") end }\n' >"$T/hooks.lua"
  wait_for 5 "the looping on_exit interrupted" grep -q "on_exit.*interrupted: ran past its budget" "$T/a.log"
  wait_for 5 "the raising on_start logged" grep -q "HOOK2 raised" "$T/a.log"
  local r; r=$(field a crash restarts)
  wait_for 10 "crash restarted 3 more times" bash -c "[ \$('$POGO' eval -s '$T/a.sock' 'pogo.sup.child(\"crash\").restarts') -ge $((r + 3)) ]"
  expect_eq 2 "$(ev a '1 + 1')" "agent still serves"
}

# count_procs PATTERN - live processes whose command line matches PATTERN.
count_procs() {
  local p n=0
  for p in $(pgrep -f "$1"); do gone "$p" || n=$((n + 1)); done
  echo $n
}
at_least() { [ "$(count_procs "$2")" -ge "$1" ]; }   # at_least N PATTERN
none_left() { [ "$(count_procs "$1")" = 0 ]; }       # none_left PATTERN

test_a_child_that_forks_wildly_is_contained() {
  local u=$RANDOM
  # 300 descendants, a third of them escaped into sessions of their own.
  write_child swarm "return { id = 'swarm', restart = 'temporary',
    cmd = { 'sh', '-c', 'for i in \$(seq 100); do sleep 1000.$u & sleep 1001.$u & setsid sleep 1002.$u & done; exec sleep 1003.$u' } }"
  start_supervisor a
  wait_for 20 "301 processes of the swarm" at_least 301 "100[0-3]\.$u"
  expect_eq 2 "$(ev a '1 + 1')" "agent serves beside the swarm"
  "$POGO" stop -s "$T/a.sock" swarm || fail "pogo stop swarm"
  wait_for 5 "every process of the swarm gone" none_left "100[0-3]\.$u"

  # A fork bomb, bounded by its own process limit: only root can start a
  # child as another user, and root's own limit is not enforced.
  [ "$(id -u)" = 0 ] && id nobody >/dev/null 2>&1 || return 0
  # Every process forks 7 times, 10 ms apart, then lives on: 128 processes
  # without the limit, 40 with it.
  write_child bomb "return { id = 'bomb', user = 'nobody', cwd = '/', rlimits = { nproc = 40 }, restart = 'temporary',
    cmd = { 'perl', '-e', '\$0 = \"bomb.$u\"; my \$n = 0; while (1) { fork if \$n++ < 7; select(undef, undef, undef, 0.01) }' } }"
  wait_for 10 "the bomb at its limit" at_least 30 "bomb\.$u"
  expect_eq 2 "$(ev a '1 + 1')" "agent serves beside the bomb"
  local n; n=$(count_procs "bomb\.$u")
  [ "$n" -le 40 ] || fail "the bomb has $n processes, over its rlimits.nproc of 40"
  "$POGO" stop -s "$T/a.sock" bomb || fail "pogo stop bomb"
  wait_field 10 a bomb state stopped
  wait_for 5 "every process of the bomb gone" none_left "bomb\.$u"
  expect_eq 2 "$(ev a '1 + 1')" "agent serves after the bomb"
}

# control_client ARGS... - a perl client of the control socket $T/a.sock:
#   idle N        holds N connections open without a byte until killed
#   partial       sends half a header on one, 3 bytes of a 100-byte frame
#                 on another, and holds both open until killed
#   unread N SIZE pipelines N evals printing SIZE bytes, never reads
control_client() {
  exec perl -MIO::Socket::UNIX -e '
    my ($sock, $mode, $n, $size) = @ARGV;
    sub conn { IO::Socket::UNIX->new(Peer => $sock) or die "connect: $!\n" }
    sub frame {   # a request { op = "eval", code = CODE } as MessagePack
      my $code = shift;
      my $body = "\x82\xa2op\xa4eval\xa4code\xd9" . chr(length $code) . $code;
      return pack("N", length $body) . $body;
    }
    my @held;
    if ($mode eq "idle") { push @held, conn() for 1 .. $n }
    elsif ($mode eq "partial") {
      my $a = conn(); syswrite($a, "\x00\x00"); push @held, $a;
      my $b = conn(); syswrite($b, "\x00\x00\x00\x64\x82\xa2o"); push @held, $b;
    } elsif ($mode eq "unread") {
      my $c = conn();
      for (1 .. $n) { syswrite($c, frame("print(string.rep(\"x\", $size))")) or exit 0 }
      push @held, $c;
    }
    print "ready\n"; STDOUT->flush;
    sleep 60;
  ' "$T/a.sock" "$@"
}

fd_count() { ls "/proc/${AGENT_PID[$1]}/fd" | wc -l; }

test_control_socket_abuse_leaves_the_agent_serving() {
  start_agent a
  local base; base=$(fd_count a)
  # 300 clients that connect and never send, two that stop mid-frame.
  control_client idle 300 >"$T/idle.out" & local idle=$!
  control_client partial >"$T/partial.out" & local partial=$!
  CLEANUPS+=("kill $idle $partial")
  wait_for 10 "the idle clients connected" grep -q ready "$T/idle.out"
  wait_for 10 "the partial clients connected" grep -q ready "$T/partial.out"
  wait_for 5 "302 more descriptors in the agent" bash -c "[ \$(ls /proc/${AGENT_PID[a]}/fd | wc -l) -ge $((base + 302)) ]"
  expect_eq 2 "$(ev a '1 + 1')" "agent serves beside 302 silent clients"
  kill "$idle" "$partial"
  wait_for 5 "the agent's descriptors back to $base" bash -c "[ \$(ls /proc/${AGENT_PID[a]}/fd | wc -l) -le $base ]"
  # A client that asks for a 70 MiB answer and does not read it.
  control_client unread 1 $((70 << 20)) >"$T/unread.out" & local unread=$!
  CLEANUPS+=("kill $unread")
  wait_for 30 "the slow reader dropped" grep -q "client reads too slowly, dropped" "$T/a.log"
  kill "$unread"
  expect_eq 2 "$(ev a '1 + 1')" "agent serves after the slow reader"
  wait_for 5 "the agent's descriptors back to $base" bash -c "[ \$(ls /proc/${AGENT_PID[a]}/fd | wc -l) -le $base ]"
  # A result whose own __tostring loops is cut off by the budget too.
  local err
  err=$(ev a -t 200ms 'return setmetatable({}, { __tostring = function() while true do end end })' 2>&1 >/dev/null)
  expect_match "printing the result: .*interrupted: ran past its budget of 200 ms" "$err" "a looping __tostring"
  # Many clients at once, each with a real request.
  local i pids=()
  for i in $(seq 50); do ev a "return $i * 2" >"$T/many.$i" 2>&1 & pids+=($!); done
  for i in "${pids[@]}"; do wait "$i" || fail "one of 50 concurrent evals failed"; done
  for i in $(seq 50); do expect_eq $((i * 2)) "$(cat "$T/many.$i")" "concurrent eval $i"; done
}
