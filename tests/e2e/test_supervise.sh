# End-to-end tests of local supervision: real agents, real processes.

test_children_start_and_permanent_restart_at_once() {
  write_child web 'return { id = "web", cmd = "sleep 1000" }'
  start_supervisor a
  wait_field 5 a web state ready
  local pid; pid=$(field a web pid)
  kill -0 "$pid" || fail "web's pid $pid is not running"
  [ "$(cat /proc/$pid/comm)" = sleep ] || fail "pid $pid is not sleep"
  grep -q "^POGO_CHILD_ID=web$" <(tr '\0' '\n' </proc/$pid/environ) || fail "no POGO_CHILD_ID"
  grep -q "^POGO_NODE=a$" <(tr '\0' '\n' </proc/$pid/environ) || fail "no POGO_NODE"
  local gen; gen=$(tr '\0' '\n' </proc/$pid/environ | sed -n 's/^POGO_GENERATION=//p')
  kill -KILL "$pid"
  wait_for 5 "a new pid for web" bash -c "p=\$('$POGO' eval -s '$T/a.sock' 'pogo.sup.child(\"web\").pid'); [ -n \"\$p\" ] && [ \"\$p\" != nil ] && [ \"\$p\" != $pid ]"
  wait_field 5 a web state ready
  expect_eq 1 "$(field a web restarts)" "restarts"
  local pid2 gen2; pid2=$(field a web pid)
  gen2=$(tr '\0' '\n' </proc/$pid2/environ | sed -n 's/^POGO_GENERATION=//p')
  [ "$gen2" -gt "$gen" ] || fail "POGO_GENERATION did not grow: $gen -> $gen2"
  expect_match "killed by SIGKILL" "$(field a web last_exit)"
}

test_restart_types_follow_the_exit_status() {
  write_child types 'return {
    { id = "perm-ok", cmd = "sh -c \"sleep 0.2; exit 0\"", restart = "permanent", backoff = { initial = "50ms" } },
    { id = "trans-ok", cmd = "sh -c \"sleep 0.2; exit 0\"", restart = "transient" },
    { id = "trans-err", cmd = "sh -c \"sleep 0.2; exit 3\"", restart = "transient", backoff = { initial = "50ms" } },
    { id = "trans-sig", cmd = "sh -c \"sleep 0.2; kill -TERM $$\"", restart = "transient", success_signals = { "TERM" } },
    { id = "temp-err", cmd = "sh -c \"sleep 0.2; exit 1\"", restart = "temporary" },
  }'
  start_supervisor a
  wait_for 5 "perm-ok restarted twice" bash -c "[ \$('$POGO' eval -s '$T/a.sock' 'pogo.sup.child(\"perm-ok\").restarts') -ge 2 ]"
  wait_for 5 "trans-err restarted twice" bash -c "[ \$('$POGO' eval -s '$T/a.sock' 'pogo.sup.child(\"trans-err\").restarts') -ge 2 ]"
  wait_field 5 a trans-ok state stopped
  wait_field 5 a trans-sig state stopped
  wait_field 5 a temp-err state stopped
  expect_eq 0 "$(field a trans-ok restarts)" "transient, normal exit"
  expect_eq 0 "$(field a trans-sig restarts)" "transient, success signal"
  expect_eq 0 "$(field a temp-err restarts)" "temporary"
  expect_match "exited with code 1" "$(field a temp-err last_exit)"
}

test_intensity_exceeded_fails_then_cools_down_and_retries() {
  write_child crash 'return { id = "crash", cmd = "sh -c \"exit 1\"", max_restarts = 2, max_seconds = "10s",
    backoff = { initial = "10ms", max = "20ms" }, cooldown = "1s",
    hooks = { on_give_up = function(c) pogo.log.warn("GAVE UP ON %s", c.id) end } }'
  start_supervisor a
  wait_field 5 a crash state failed
  grep -q "GAVE UP ON crash" "$T/a.log" || fail "on_give_up did not run"
  local r; r=$(field a crash restarts)
  [ "$r" -eq 2 ] || fail "expected 2 restarts before giving up, got $r"
  # after the cool-down it tries again (and fails again)
  wait_for 5 "a retry after the cool-down" bash -c "[ \$('$POGO' eval -s '$T/a.sock' 'pogo.sup.child(\"crash\").restarts') -gt 2 ]"
}

test_backoff_grows_and_resets_after_staying_up() {
  # Exits at once 3 times, then stays up: delays between starts must grow.
  write_child flap "return { id = 'flap', cmd = { 'sh', '-c', 'n=\$(cat $T/count 2>/dev/null || echo 0); echo \$((n+1)) >$T/count; date +%s%N >>$T/starts; [ \$n -ge 3 ] && exec sleep 1000; exit 1' },
    max_restarts = 10, backoff = { initial = '100ms', factor = 2, jitter = 0, max = '5s', reset_after = '300ms' } }"
  start_supervisor a
  wait_for 10 "4 starts" bash -c "[ \$(wc -l <'$T/starts') -ge 4 ]"
  wait_field 5 a flap state ready
  mapfile -t s <"$T/starts"
  local d1=$(( (s[1] - s[0]) / 1000000 )) d2=$(( (s[2] - s[1]) / 1000000 )) d3=$(( (s[3] - s[2]) / 1000000 ))
  # first restart immediate, then 100 ms, then 200 ms
  [ $d1 -lt 80 ] || fail "first restart should be immediate, took ${d1} ms"
  [ $d2 -ge 90 ] && [ $d2 -lt 400 ] || fail "second delay should be ~100 ms, was ${d2} ms"
  [ $d3 -ge 190 ] && [ $d3 -lt 600 ] || fail "third delay should be ~200 ms, was ${d3} ms"
  # up for longer than reset_after: the next crash restarts at once again
  sleep 0.5
  local pid; pid=$(field a flap pid)
  local t0; t0=$(date +%s%N)
  kill -KILL "$pid"
  wait_for 5 "5 starts" bash -c "[ \$(wc -l <'$T/starts') -ge 5 ]"
  mapfile -t s <"$T/starts"
  local d4=$(( (s[4] - t0) / 1000000 ))
  [ $d4 -lt 80 ] || fail "after a reset the restart should be immediate, took ${d4} ms"
}

test_stop_escalates_to_kill_for_a_child_ignoring_term() {
  write_child stubborn "return { id = 'stubborn', cmd = { 'sh', '-c', 'trap \"\" TERM; echo up; while :; do sleep 0.05; done' }, shutdown = '300ms' }"
  start_supervisor a
  wait_field 5 a stubborn state ready
  local pid; pid=$(field a stubborn pid)
  local t0; t0=$(date +%s%N)
  "$POGO" stop -s "$T/a.sock" stubborn || fail "pogo stop failed"
  wait_field 5 a stubborn state stopped
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  gone "$pid" || fail "pid $pid still alive"
  [ $ms -ge 250 ] || fail "killed after ${ms} ms, before the 300 ms shutdown timeout"
  expect_match "SIGKILL" "$(field a stubborn last_exit)"
  # it stays stopped until started again
  sleep 0.2
  expect_eq stopped "$(field a stubborn state)"
  "$POGO" start -s "$T/a.sock" stubborn || fail "pogo start failed"
  wait_field 5 a stubborn state ready
}

test_grandchildren_die_with_their_child() {
  local u=$RANDOM
  write_child family "return { id = 'family', cmd = { 'sh', '-c', 'sleep 1001.$u & setsid sleep 1002.$u & echo \$! >$T/escaped; exec sleep 1000.$u' }, restart = 'temporary' }"
  start_supervisor a
  wait_field 5 a family state ready
  wait_for 5 "the escaped grandchild's pid" test -s "$T/escaped"
  local main; main=$(field a family pid)
  local gc; gc=$(pgrep -f "sleep 1001.$u")
  local esc; esc=$(cat "$T/escaped")
  [ -n "$gc" ] || fail "no grandchild"
  kill -KILL "$main"
  wait_for 2 "grandchild $gc gone" gone "$gc"
  wait_for 2 "setsid grandchild $esc gone" gone "$esc"
  # and on an operator stop
  "$POGO" start -s "$T/a.sock" family
  wait_field 5 a family state ready
  gc=$(pgrep -f "sleep 1001.$u")
  "$POGO" stop -s "$T/a.sock" family
  wait_for 2 "grandchild gone after stop" gone "$gc"
}

test_agent_kill_9_leaves_no_process_behind() {
  local u=$RANDOM
  write_child many "local t = {}
    for i = 1, 10 do t[i] = { id = 'w' .. i, cmd = { 'sh', '-c', 'sleep 2000.$u & setsid sleep 2001.$u & exec sleep 2002.$u' } } end
    return t"
  start_supervisor a
  wait_for 5 "30 processes" bash -c "[ \$(pgrep -f 'sleep 200[012].$u' | wc -l) -ge 30 ]"
  kill -KILL "${AGENT_PID[a]}"
  local t0; t0=$(date +%s%N)
  wait_for 2 "every child and grandchild gone" bash -c "! pgrep -f 'sleep 200[012].$u' >/dev/null"
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  [ $ms -lt 1000 ] || fail "processes outlived the agent by ${ms} ms"
  echo "all gone ${ms} ms after kill -9"
}

test_spawn_errors_are_reported_as_such() {
  write_child bad 'return { id = "bad", cmd = "/no/such/binary", max_restarts = 1, cooldown = "1h" }'
  write_child badcwd 'return { id = "badcwd", cmd = "sleep 1", cwd = "/no/such/dir", max_restarts = 0, cooldown = "1h" }'
  start_supervisor a
  wait_field 5 a bad state failed
  expect_match "spawn error: ENOENT.*/no/such/binary" "$(field a bad last_exit)"
  wait_field 5 a badcwd state failed
  expect_match "spawn error: ENOENT.*(chdir|/no/such/dir)" "$(field a badcwd last_exit)"
}

test_output_is_captured_rotated_and_a_flood_stalls_nobody() {
  write_child talk "return { id = 'talk', cmd = { 'sh', '-c', 'i=0; while :; do i=\$((i+1)); echo out \$i; echo err \$i >&2; sleep 0.01; done' },
    log = { max_size = '4KiB', max_files = 2 } }"
  write_child flood "return { id = 'flood', cmd = 'yes flood' }"
  start_supervisor a
  wait_for 5 "talk's log rotated" test -f "$T/logs/talk.log.1"
  [ ! -e "$T/logs/talk.log.3" ] || fail "more rotated files than max_files"
  cat "$T/logs/talk.log"* | grep -qE "stdout out [0-9]+" || fail "no stdout line in the log"
  cat "$T/logs/talk.log"* | grep -qE "stderr err [0-9]+" || fail "no stderr line in the log"
  local out; out=$("$POGO" logs -s "$T/a.sock" -n 5 talk)
  expect_match "(out|err) [0-9]+" "$out" "pogo logs"
  # the agent answers quickly despite the flood, and talk keeps talking
  local t0; t0=$(date +%s%N)
  ev a 1 >/dev/null
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  [ $ms -lt 1000 ] || fail "eval took ${ms} ms during the flood"
  local n1; n1=$(ev a "#pogo.sup.logs('talk', 1000)")
  local last1; last1=$(ev a "pogo.sup.logs('talk', 1)[1].text")
  sleep 0.3
  local last2; last2=$(ev a "pogo.sup.logs('talk', 1)[1].text")
  [ "$last1" != "$last2" ] || fail "talk's output stalled during the flood ($last1)"
}

test_logs_follow_streams_new_lines() {
  write_child tick "return { id = 'tick', cmd = { 'sh', '-c', 'i=0; while :; do i=\$((i+1)); echo tick \$i; sleep 0.05; done' } }"
  start_supervisor a
  wait_field 5 a tick state ready
  timeout 1 "$POGO" logs -s "$T/a.sock" -n 0 -f tick >"$T/follow.out"
  local n; n=$(grep -c "stdout tick" "$T/follow.out")
  [ "$n" -ge 5 ] || fail "logs -f printed $n lines in 1 s"
}

test_readiness_kinds() {
  local port=$((20000 + RANDOM % 20000))
  write_child ready "return {
    { id = 'pat', cmd = { 'sh', '-c', 'sleep 0.3; echo Listening on 8080; exec sleep 1000' },
      readiness = { pattern = 'Listening on *' } },
    { id = 'tcp', cmd = { 'sh', '-c', 'sleep 0.3; exec socat TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork SYSTEM:true' },
      readiness = { tcp = '127.0.0.1:$port' } },
    { id = 'notify', cmd = { 'sh', '-c', 'sleep 0.3; exec $PWD/build/helpers/notify READY=1 sleep 1000' },
      readiness = { notify = true } },
    { id = 'fn', cmd = 'sleep 1000',
      readiness = { check = function(c) return c.uptime and c.uptime > 0.3 end, interval = '50ms' } },
    { id = 'never', cmd = 'sleep 1000', readiness = { pattern = 'never printed', timeout = '300ms' },
      restart = 'temporary' },
  }"
  start_supervisor a
  for id in pat tcp notify fn; do
    expect_eq running "$(field a $id state)" "$id before it is ready"
  done
  for id in pat tcp notify fn; do wait_field 5 a $id state ready; done
  # a child that never gets ready is stopped when its readiness times out
  wait_field 5 a never state stopped
}

test_hooks_run_and_a_failing_hook_is_isolated() {
  cat >"$T/hooks.lua" <<'LUA'
return {
  on_start = function(c) pogo.log.info("HOOK start %s", c.id) end,
  on_exit = function(c, st) pogo.log.info("HOOK exit %s code %s", c.id, tostring(st.code)) end,
}
LUA
  write_child h "return {
    { id = 'h', cmd = { 'sh', '-c', 'sleep 0.2; exit 4' }, restart = 'temporary',
      hooks = { on_start = function() error('hook exploded') end } },
    { id = 'loop', cmd = 'sleep 1000', hooks = { on_start = function() while true do end end } },
  }"
  start_supervisor a "hooks = \"$T/hooks.lua\"" 'budget = "100ms"'
  wait_field 5 a h state stopped
  wait_field 5 a loop state ready
  grep -q "HOOK start h" "$T/a.log" || fail "global on_start did not run"
  grep -q "HOOK exit h code 4" "$T/a.log" || fail "global on_exit did not run"
  grep -q "hook exploded" "$T/a.log" || fail "the failing hook was not logged"
  grep -q "interrupted: ran past its budget" "$T/a.log" || fail "the looping hook was not interrupted"
  expect_eq "2" "$(ev a '1+1')" "agent still serves"
}

test_live_reload_applies_only_the_diff() {
  write_child keep 'return { id = "keep", cmd = "sleep 1000" }'
  write_child change 'return { id = "change", cmd = "sleep 1000" }'
  write_child gone 'return { id = "gone", cmd = "sleep 1000" }'
  start_supervisor a
  for id in keep change gone; do wait_field 5 a $id state ready; done
  local keep_pid change_pid gone_pid
  keep_pid=$(field a keep pid); change_pid=$(field a change pid); gone_pid=$(field a gone pid)
  write_child change 'return { id = "change", cmd = "sleep 1001" }'
  rm "$T/children/gone.lua"
  write_child new 'return { id = "new", cmd = "sleep 1000" }'
  wait_field 5 a new state ready
  wait_for 5 "gone removed" bash -c "[ \"\$('$POGO' eval -s '$T/a.sock' 'pogo.sup.child(\"gone\")')\" = nil ]"
  wait_for 5 "change restarted" bash -c "p=\$('$POGO' eval -s '$T/a.sock' 'pogo.sup.child(\"change\").pid'); [ \"\$p\" != nil ] && [ \"\$p\" != $change_pid ]"
  expect_eq "$keep_pid" "$(field a keep pid)" "the unchanged child keeps its pid"
  gone "$gone_pid" || fail "removed child still running"
  gone "$change_pid" || fail "old version of the changed child still running"
  # truncate + write in place, same size, within the same second
  local u=$RANDOM
  printf 'return { id = "change", cmd = "sleep 1002.%s" }\n' $u >"$T/children/change.lua"
  wait_for 5 "sleep 1002.$u running" pgrep -f "sleep 1002.$u"
  # a broken file changes nothing, and the error is visible
  change_pid=$(field a change pid)
  printf 'return { id = "change", cmd = "sleep 1003" ,, }\n' >"$T/children/change.lua"
  wait_for 5 "the error in pogo.errors()" bash -c "'$POGO' eval -s '$T/a.sock' 'pogo.errors()' | grep -q change.lua"
  expect_eq "$change_pid" "$(field a change pid)" "a broken file keeps the running version"
  expect_eq "$keep_pid" "$(field a keep pid)" "still the same pid"
}

test_a_burst_of_saves_is_applied_once() {
  write_child b 'return { id = "b", cmd = "sleep 1000" }'
  start_supervisor a
  wait_field 5 a b state ready
  local u=$RANDOM
  for i in 1 2 3 4 5 6 7 8 9; do write_child b "return { id = 'b', cmd = 'sleep 100$i.$u' }"; done
  wait_for 5 "sleep 1009.$u running" pgrep -f "sleep 1009.$u"
  sleep 0.3
  local starts; starts=$(grep -c "child 'b' started" "$T/a.log")
  [ "$starts" -le 3 ] || fail "a burst of 9 saves caused $starts starts"
}

test_ps_and_control_commands() {
  write_child web 'return { id = "web", cmd = "sleep 1000" }'
  start_supervisor a
  wait_field 5 a web state ready
  local out; out=$("$POGO" ps -s "$T/a.sock")
  expect_match "ID +STATE +PID +UPTIME +RESTARTS +LAST EXIT" "$out"
  expect_match "web +ready +[0-9]+ " "$out"
  out=$("$POGO" ps -s "$T/a.sock" --json)
  expect_match '"id":"web"' "$out"
  local pid; pid=$(field a web pid)
  "$POGO" restart -s "$T/a.sock" web || fail "restart failed"
  wait_for 5 "a new pid after restart" bash -c "p=\$('$POGO' eval -s '$T/a.sock' 'pogo.sup.child(\"web\").pid'); [ \"\$p\" != nil ] && [ \"\$p\" != $pid ]"
  out=$("$POGO" stop -s "$T/a.sock" nosuch 2>&1); expect_eq 1 $? "stop of an unknown child"
  expect_match "no child 'nosuch'" "$out"
  printf 'return { id = "extra", cmd = "sleep 1000" }\n' >"$T/extra.lua"
  "$POGO" start -s "$T/a.sock" --file "$T/extra.lua" || fail "start --file failed"
  wait_field 5 a extra state ready
}

test_sigterm_stops_children_in_parallel() {
  write_child slow "local t = {} for i = 1, 5 do t[i] = { id = 's' .. i, shutdown = '400ms',
    cmd = { 'sh', '-c', 'trap \"\" TERM; while :; do sleep 0.05; done' } } end return t"
  start_supervisor a
  for i in 1 2 3 4 5; do wait_field 5 a s$i state ready; done
  local t0; t0=$(date +%s%N)
  stop_agent a TERM
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  [ $ms -lt 1500 ] || fail "stopping 5 children with 400 ms timeouts took ${ms} ms (not in parallel?)"
  [ -z "$(marked_processes)" ] || fail "children left after SIGTERM: $(marked_processes)"
  grep -q "after the shutdown deadline" "$T/a.log" && fail "the agent hit its shutdown deadline"
  return 0
}

test_at_most_three_fds_per_child() {
  start_supervisor a
  local base; base=$(ls /proc/${AGENT_PID[a]}/fd | wc -l)
  write_child many 'local t = {} for i = 1, 30 do t[i] = { id = "c" .. i, cmd = "sleep 1000" } end return t'
  wait_for 10 "30 children ready" bash -c "[ \$('$POGO' eval -s '$T/a.sock' 'local n = 0 for _, c in ipairs(pogo.sup.children()) do if c.state == \"ready\" then n = n + 1 end end return n') = 30 ]"
  local now; now=$(ls /proc/${AGENT_PID[a]}/fd | wc -l)
  local per=$(( (now - base) / 30 ))
  # 3 per child (stdout, stderr, log file); +2 for control connections in flight
  [ $((now - base)) -le 92 ] || fail "$((now - base)) fds for 30 children (more than 3 each)"
  echo "fds per child: $per"
}
