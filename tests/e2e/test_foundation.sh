# End-to-end tests of the foundation: agent, config, control socket, CLI.

test_eval_prints_values() {
  start_agent a
  expect_eq "2" "$(ev a '1+1')" "1+1"
  expect_eq '"x"' "$(ev a '"x"')" "a string"
  expect_eq $'1\n2.5\nnil' "$(ev a 'return 1, 2.5, nil')" "several results"
  expect_eq '"a"' "$(ev a 'pogo.cluster.self().name')" "the node name"
  expect_eq $'hi\t3' "$(ev a 'print("hi", 3)')" "print inside eval"
  expect_eq '{"a":[1,2]}' "$(ev a --json '{a = {1, 2}}')" "--json"
  expect_eq "" "$(ev a 'local x = 1')" "a statement prints nothing"
  expect_eq "42" "$(echo 'return 6 * 7' | ev a -)" "code from stdin"
}

test_eval_error_is_reported_and_agent_keeps_serving() {
  start_agent a
  local err
  err=$(ev a 'error("boom")' 2>&1 >/dev/null); local rc=$?
  expect_eq 1 "$rc" "exit status of a failing eval"
  expect_match 'eval:1: boom' "$err" "error message"
  err=$(ev a 'local t = nil; return t.x' 2>&1 >/dev/null)
  expect_match "attempt to index a nil value" "$err"
  err=$(ev a 'this is not lua' 2>&1 >/dev/null)
  expect_match "eval:1:" "$err" "syntax error"
  err=$(ev a -v 'error("deep")' 2>&1 >/dev/null)
  expect_match "stack traceback" "$err" "-v shows the traceback"
  expect_eq "2" "$(ev a '1+1')" "agent still serves"
}

test_infinite_loop_is_interrupted_by_the_budget() {
  write_config a 'eval_budget = "200ms"'
  start_agent a
  local err
  err=$(ev a 'while true do end' 2>&1 >/dev/null); local rc=$?
  expect_eq 1 "$rc" "exit status"
  expect_match "interrupted: ran past its budget of 200 ms" "$err"
  # pcall inside user code cannot swallow the interruption
  err=$(ev a 'while true do pcall(function() while true do end end) end' 2>&1 >/dev/null)
  expect_match "interrupted" "$err" "pcall cannot catch the budget"
  err=$(ev a -t 50ms 'local n = 0 while true do n = n + 1 end' 2>&1 >/dev/null)
  expect_match "budget of 50 ms" "$err" "-t sets the budget"
  expect_eq "2" "$(ev a '1+1')" "agent still serves"
}

# pogo.busy() measures the loop: a timer that works 30 ms is the busiest
# iteration and the slowest callback, named by its file and line.
test_busy_names_the_slowest_callback() {
  start_agent a
  ev a 'pogo.busy()' >/dev/null
  ev a '_G.slow = require("pogo.core.loop").timer(0.05, 0, function()
          local t = os.clock() while os.clock() - t < 0.03 do end
        end)' >/dev/null
  timer_done() { [ "$(ev a 'slow:active()')" = false ]; }
  wait_for 3 "the timer ran" timer_done
  local out
  out=$(ev a 'local b = pogo.busy()
              print(b.iterations > 0, b.max_cpu_ms >= 25, b.slowest_call_ms >= 25, b.slowest_call)')
  expect_match $'^true	true	true	pogo.timer \(eval:1\)$' "$out" "pogo.busy() after a 30 ms timer"
  out=$(ev a 'local b = pogo.busy() print(b.slowest_call_ms < 25)')
  expect_eq "true" "$out" "a second call starts again"
}

test_sessions_do_not_leak_into_the_agent() {
  start_agent a
  ev a 'secret = 42' >/dev/null
  expect_eq "nil" "$(ev a 'secret')" "a global from another connection"
  expect_eq "nil" "$(ev a 'rawget(_G, "secret")')" "the agent's globals"
}

test_sigterm_stops_cleanly_and_removes_the_socket() {
  start_agent a
  [ -S "$T/a.sock" ] || fail "no socket at $T/a.sock"
  stop_agent a TERM
  [ ! -e "$T/a.sock" ] || fail "socket left behind after SIGTERM"
  grep -q "shutting down (SIGTERM)" "$T/a.log" || fail "no shutdown line in the log"
}

test_sigint_stops_cleanly() {
  start_agent a
  stop_agent a INT
  [ ! -e "$T/a.sock" ] || fail "socket left behind after SIGINT"
}

test_control_socket_is_private() {
  start_agent a
  expect_eq "600" "$(stat -c %a "$T/a.sock")" "socket mode"
}

test_two_agents_do_not_interfere() {
  start_agent a
  start_agent b
  expect_eq '"a"' "$(ev a 'pogo.cluster.self().name')"
  expect_eq '"b"' "$(ev b 'pogo.cluster.self().name')"
  ev a 'answer = 1' >/dev/null
  stop_agent a
  expect_eq '"b"' "$(ev b 'pogo.cluster.self().name')" "b after a stopped"
  [ -S "$T/b.sock" ] || fail "b's socket vanished"
}

test_second_agent_on_a_live_socket_is_refused() {
  start_agent a
  cp "$T/a.lua" "$T/a2.lua"
  local out
  out=$("$POGO" agent -c "$T/a2.lua" 2>&1); local rc=$?
  expect_eq 1 "$rc" "exit status of the second agent"
  expect_match "another agent is listening" "$out"
  expect_eq "2" "$(ev a '1+1')" "the first agent still serves"
}

test_stale_socket_is_replaced() {
  start_agent a
  kill -KILL "${AGENT_PID[a]}"; wait "${AGENT_PID[a]}" 2>/dev/null
  unset 'AGENT_PID[a]'
  [ -S "$T/a.sock" ] || fail "expected a stale socket after kill -9"
  start_agent a
  expect_eq "2" "$(ev a '1+1')"
}

test_config_errors_name_the_file_line_and_key() {
  local out
  printf 'return {\n  name = "x",\n  lisen = "1.2.3.4:5",\n}\n' >"$T/unknown.lua"
  out=$("$POGO" agent -c "$T/unknown.lua" 2>&1); expect_eq 1 $? "unknown key status"
  expect_match "unknown.lua:3: unknown key 'lisen' \(did you mean 'listen'\?\)" "$out"

  printf 'return {\n  name = "x",\n  weight = "heavy",\n}\n' >"$T/type.lua"
  out=$("$POGO" agent -c "$T/type.lua" 2>&1); expect_eq 1 $? "wrong type status"
  expect_match "type.lua:3: 'weight' must be a positive number, got string \"heavy\"" "$out"

  printf 'return {\n  name = "x"\n  tags = {}\n}\n' >"$T/syntax.lua"
  out=$("$POGO" agent -c "$T/syntax.lua" 2>&1); expect_eq 1 $? "syntax error status"
  expect_match "syntax.lua:3: '}' expected" "$out"

  printf 'return {\n  name = "x",\n  tags = { undefined_thing },\n}\n' >"$T/global.lua"
  out=$("$POGO" agent -c "$T/global.lua" 2>&1); expect_eq 1 $? "undefined global status"
  expect_match "global.lua:3: undefined global 'undefined_thing'" "$out"

  printf 'return {\n  log = { level = "loud" },\n}\n' >"$T/nested.lua"
  out=$("$POGO" agent -c "$T/nested.lua" 2>&1); expect_eq 1 $? "nested key status"
  expect_match "nested.lua:2: 'log.level' must be one of" "$out"

  printf 'while true do end\n' >"$T/loop.lua"
  out=$("$POGO" agent -c "$T/loop.lua" 2>&1); expect_eq 1 $? "looping config status"
  expect_match "loop.lua:1: interrupted" "$out"

  # Reading what a config returned runs its metamethods: under the budget too.
  printf 'return setmetatable({}, { __pairs = function() while true do end end })\n' >"$T/meta.lua"
  out=$(timeout 10 "$POGO" agent -c "$T/meta.lua" 2>&1); expect_eq 1 $? "looping __pairs status"
  expect_match "meta.lua:1: interrupted" "$out"

  out=$("$POGO" agent -c "$T/missing.lua" 2>&1); expect_eq 1 $? "missing file status"
  expect_match "missing.lua: No such file" "$out"
}

test_sighup_reloads_and_a_broken_config_changes_nothing() {
  write_config a 'tags = { "web" }'
  start_agent a
  expect_eq '{ "web" }' "$(ev a 'pogo.cluster.self().tags')"
  write_config a 'tags = { "web", "ssd" }'
  kill -HUP "${AGENT_PID[a]}"
  wait_for 5 "new tags after SIGHUP" bash -c "[ \"\$('$POGO' eval -s '$T/a.sock' '#pogo.cluster.self().tags')\" = 2 ]"
  printf 'return { tags = { "broken" \n' >"$T/a.lua"
  kill -HUP "${AGENT_PID[a]}"
  wait_for 5 "the reload error in pogo.errors()" bash -c "'$POGO' eval -s '$T/a.sock' 'next(pogo.errors())' | grep -q a.lua"
  expect_eq '{ "web", "ssd" }' "$(ev a 'pogo.cluster.self().tags')" "tags after a broken reload"
  expect_match "reload failed, keeping the running config" "$(cat "$T/a.log")"
}

test_log_lines_have_time_level_node_subsystem() {
  write_config a "log = { level = 'debug', file = '$T/a-file.log' }"
  start_agent a
  ev a 'pogo.log.warn("disk at %d%%", 93)' >/dev/null
  wait_for 5 "the warn line in the log file" grep -q "disk at 93%" "$T/a-file.log"
  local line
  line=$(grep "disk at 93%" "$T/a-file.log")
  expect_match '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z warn  a lua: disk at 93%$' "$line" "log line format"
}

test_malformed_control_frames_drop_only_that_client() {
  start_agent a
  printf '\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1' | socat -t1 - "UNIX-CONNECT:$T/a.sock" >/dev/null 2>&1
  printf '\xff\xff\xff\xffjunk' | socat -t1 - "UNIX-CONNECT:$T/a.sock" >/dev/null 2>&1
  head -c 100000 /dev/urandom | socat -t1 - "UNIX-CONNECT:$T/a.sock" >/dev/null 2>&1
  expect_eq "2" "$(ev a '1+1')" "agent still serves"
  grep -q "malformed request" "$T/a.log" || fail "no log line for the malformed request"
  grep -q "frame over" "$T/a.log" || fail "no log line for the oversized frame"
}

test_cli_usage_errors_exit_2() {
  local out
  out=$("$POGO" 2>&1); expect_eq 2 $? "no command"
  out=$("$POGO" frobnicate 2>&1); expect_eq 2 $? "unknown command"
  expect_match "unknown command 'frobnicate'" "$out"
  out=$("$POGO" eval --bogus 1 2>&1); expect_eq 2 $? "unknown option"
  expect_match "unknown option '--bogus'" "$out"
  expect_match "usage: pogo eval" "$out"
  out=$("$POGO" eval 2>&1); expect_eq 2 $? "missing code"
  out=$("$POGO" agent 2>&1); expect_eq 2 $? "agent without -c"
  out=$("$POGO" eval -s 2>&1); expect_eq 2 $? "option without value"
  out=$("$POGO" eval -s "$T/none.sock" 1 2>&1); expect_eq 1 $? "no agent there"
  expect_match "cannot reach the agent" "$out"
}

test_help_explains_every_command() {
  local out cmd
  out=$("$POGO" --help); expect_eq 0 $? "pogo --help"
  for cmd in agent check eval ps start stop restart logs keygen version; do
    expect_match "  $cmd " "$out" "pogo --help lists $cmd"
    "$POGO" "$cmd" --help | grep -q "^usage: pogo $cmd" || fail "pogo $cmd --help"
  done
  expect_match "^pogo [0-9]+\.[0-9]+" "$("$POGO" --version)"
}

test_check_validates_without_running() {
  write_config good 'tags = { "x" }'
  printf 'return { name = "bad", weight = -1 }\n' >"$T/bad.lua"
  mkdir "$T/children"
  printf 'return { id = "web", cmd = "sleep 100" }\n' >"$T/children/web.lua"
  printf 'return function(child, nodes) return nodes[1].name end\n' >"$T/policy.lua"
  printf 'return { on_start = function(c) end }\n' >"$T/hooks.lua"
  local out
  out=$("$POGO" check "$T/good.lua" "$T/children" "$T/policy.lua" "$T/hooks.lua" 2>&1)
  expect_eq 0 $? "status for valid files: $out"
  expect_match "ok .*good.lua \(config\)" "$out"
  expect_match "ok .*web.lua \(spec\)" "$out"
  expect_match "ok .*policy.lua \(policy\)" "$out"
  expect_match "ok .*hooks.lua \(hooks\)" "$out"
  out=$("$POGO" check "$T/good.lua" "$T/bad.lua" 2>&1); expect_eq 1 $? "status with a bad file"
  expect_match "bad.lua:1: 'weight' must be a positive number" "$out"
  out=$("$POGO" check --as hooks "$T/policy.lua" 2>&1); expect_eq 1 $? "--as hooks on a policy"
  expect_match "must return a table of functions" "$out"
}

test_keygen_writes_a_private_key_and_rotates() {
  "$POGO" keygen "$T/k" >/dev/null || fail "keygen failed"
  expect_eq 600 "$(stat -c %a "$T/k")" "key file mode"
  expect_match '^[0-9a-f]{64}$' "$(cat "$T/k")" "one hex key"
  local out; out=$("$POGO" keygen "$T/k" 2>&1); expect_eq 1 $? "keygen over an existing file"
  expect_match "File exists" "$out"
  local first; first=$(cat "$T/k")
  "$POGO" keygen --rotate "$T/k" >/dev/null || fail "rotate failed"
  expect_eq 2 "$(wc -l <"$T/k")" "keys after a rotation"
  expect_eq "$first" "$(sed -n 2p "$T/k")" "the old key stays second"
  expect_eq 600 "$(stat -c %a "$T/k")" "mode after rotation"
}

test_a_hooks_file_that_loops_when_read_does_not_freeze_the_agent() {
  printf 'return setmetatable({}, { __pairs = function() while true do end end })\n' >"$T/hooks.lua"
  write_config a "hooks = \"$T/hooks.lua\"" 'budget = "100ms"'
  start_agent a
  grep -q "hooks.lua:1: interrupted: ran past its budget" "$T/a.log" || fail "the looping hooks file was not interrupted"
}

test_groups_without_a_cluster_is_answered() {
  start_agent a
  local err
  err=$(timeout 10 "$POGO" groups -s "$T/a.sock" 2>&1); local rc=$?
  expect_eq 1 "$rc" "exit status (124 would be a client left waiting)"
  expect_match "groups needs the cluster" "$err"
}
