# The REPL driven the way a person drives it: through a terminal (tmux),
# keys in, screen out.

# repl_open NAME [ARGS...] - `pogo repl ARGS` in a tmux session NAME, once
# its prompt shows. The history file is $T/history.
repl_open() {
  local name=$1; shift
  if [ ${#CLEANUPS[@]} -eq 0 ]; then CLEANUPS+=("tmux -L pogo-$$ kill-server"); fi
  tmux -L "pogo-$$" new-session -d -s "$name" -x 160 -y 50 \
    "POGO_HISTORY=$T/history $POGO repl $*; echo REPL-EXIT-\$?; sleep 30"
  wait_for 5 "the REPL prompt in $name" screen_has "$name" '> ?$'
}

screen() { tmux -L "pogo-$$" capture-pane -t "$1" -p -S -200; }
screen_has() { screen "$1" | grep -Eq -- "$2"; }
# type NAME TEXT - types TEXT literally, then Enter.
type_line() { tmux -L "pogo-$$" send-keys -t "$1" -l "$2"; tmux -L "pogo-$$" send-keys -t "$1" Enter; }
keys() { local n=$1; shift; tmux -L "pogo-$$" send-keys -t "$n" "$@"; }
expect_screen() { # expect_screen NAME REGEX [SECS]
  wait_for "${3:-5}" "/$2/ on the screen of $1; it shows:
$(screen "$1" | grep -v '^$' | tail -15)" screen_has "$1" "$2"
}

test_multi_line_definitions_values_and_errors() {
  start_agent a
  repl_open r -s "$T/a.sock"
  type_line r 'function double(x)'
  expect_screen r '^>> ?$'
  type_line r '  return x * 2'
  type_line r 'end'
  type_line r 'double(21)'
  expect_screen r '^42$'
  type_line r '=double(2), "two"'
  expect_screen r '^"two"$'
  type_line r 'local_value = { list = { 1, 2, 3 }, name = "n" }'
  type_line r 'local_value'
  expect_screen r '\{ list = \{ 1, 2, 3 \}, name = "n" \}'
  type_line r 'error("boom")'
  expect_screen r 'eval:1: boom'
  screen r | grep -q 'agent.lua' && fail "the traceback shows the agent's own frames"
  type_line r 'double(5)'
  expect_screen r '^10$'
  keys r C-d
  expect_screen r 'REPL-EXIT-0'
}

test_cyclic_tables_are_printed_with_the_cycle_marked() {
  start_agent a
  repl_open r -s "$T/a.sock"
  type_line r 't = { a = 1 } t.self = t t.inner = { back = t }'
  type_line r 't'
  expect_screen r 'self = <cycle table: 0x[0-9a-f]+>'
}

test_completion_of_globals_and_live_table_fields() {
  start_agent a
  repl_open r -s "$T/a.sock"
  keys r -l 'pogo.sup.chi'
  keys r Tab Tab
  expect_screen r 'pogo\.sup\.child\( +pogo\.sup\.children\('
  keys r C-u
  type_line r 'my_table = { alpha = 1, beta = 2 }'
  keys r -l 'my_tab'
  keys r Tab
  keys r -l 'alp'
  keys r Tab
  keys r Enter
  expect_screen r '^1$'
}

test_ctrl_c_interrupts_an_endless_loop_and_the_agent_goes_on() {
  start_agent a
  repl_open r -s "$T/a.sock"
  type_line r 'n = 0 while true do n = n + 1 end'
  sleep 0.5
  keys r C-c
  expect_screen r 'interrupted \(Ctrl-C\)'
  type_line r 'n > 0'
  expect_screen r '^true$'
  expect_eq 2 "$(ev a '1 + 1')" "the agent answers others after the interrupt"
  # Ctrl-C at the prompt drops a half-typed chunk
  type_line r 'x = {'
  expect_screen r '^>> ?$'
  keys r C-c
  type_line r '"fresh"'
  expect_screen r '^"fresh"$'
}

test_history_persists_and_reverse_search_finds_it() {
  start_agent a
  repl_open r -s "$T/a.sock"
  type_line r 'remembered = 1234'
  keys r C-d
  expect_screen r 'REPL-EXIT-0'
  tmux -L "pogo-$$" kill-session -t r
  grep -q 'remembered' "$T/history" || fail "history file lacks the line: $(cat "$T/history")"
  repl_open r2 -s "$T/a.sock"
  keys r2 C-r
  keys r2 -l 'rememb'
  expect_screen r2 'bck:rememb'
  expect_screen r2 'a> remembered = 1234'
  keys r2 Enter
  type_line r2 'remembered'
  expect_screen r2 '^1234$'
  keys r2 Up
  expect_screen r2 'a> remembered$'
}

test_sessions_are_isolated_from_each_other_and_the_agent() {
  start_agent a
  repl_open one -s "$T/a.sock"
  repl_open two -s "$T/a.sock"
  type_line one 'secret = "one"'
  type_line one 'local hidden = 5 ; visible = hidden'
  type_line two 'secret'
  expect_screen two '^nil$'
  type_line one 'secret, visible'
  expect_screen one '^"one"$'
  expect_eq nil "$(ev a 'secret')" "a session's global seen by pogo eval"
  expect_eq nil "$(ev a 'rawget(_G, "secret")')" "a session's global in the agent's globals"
}

test_meta_commands_and_help() {
  start_node a 1 -- "log_dir = \"$T/logs\""
  start_node b 2 1 -- "log_dir = \"$T/logs-b\""
  wait_up 10 2 a b
  printf 'return { id = "hello", cmd = { "sh", "-c", "echo hello from $POGO_NODE; exec sleep 1000" } }\n' >"$T/hello.lua"
  "$POGO" start -s "$T/a.sock" --wait --file "$T/hello.lua" >/dev/null || fail "start hello"
  repl_open r -s "$T/a.sock"
  type_line r ':nodes'
  expect_screen r '^a \* +127\.0\.0\.1'
  type_line r ':ps hel*'
  expect_screen r '^hello +[ab] +ready'
  type_line r ':explain hello'
  expect_screen r 'answer +[ab]'
  type_line r 'help("sup.explain")'
  expect_screen r '^pogo\.sup\.explain\(id\)$'
  type_line r ':nosuch'
  expect_screen r 'unknown command :nosuch'
  type_line r ':watch #pogo.cluster.nodes() 0.2'
  expect_screen r 'every 0.2s: #pogo.cluster.nodes\(\)'
  keys r C-c
  type_line r '"after watch"'
  expect_screen r '^"after watch"$'
}

test_node_option_reaches_another_node_through_the_local_agent() {
  start_node a 1
  start_node b 2 1
  wait_up 10 2 a b
  repl_open r -s "$T/a.sock" --node b
  expect_screen r 'on b \(through a\)'
  type_line r 'pogo.cluster.self().name'
  expect_screen r '^"b"$'
  type_line r 'kept = 99'
  type_line r 'kept + 1'
  expect_screen r '^100$'
  expect_eq '"b"' "$("$POGO" eval -s "$T/a.sock" --node b 'pogo.cluster.self().name')" "pogo eval --node"
  type_line r ':rpc a pogo.cluster.self().name'
  expect_screen r '^"a"$'
  repl_open local -s "$T/a.sock"
  type_line local 'rpc("b", "pogo.cluster.self().name, 1 + 1")'
  expect_screen local '^2$'
  screen local | grep -qx '"b"' || fail "rpc() did not run on b: $(screen local | grep -v '^$' | tail -5)"
}
