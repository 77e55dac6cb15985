# End-to-end tests of the process mechanism (pogo.core.proc) through
# `pogo eval` on a real agent: spawn, reap, signal, capture, clean up.
#
# Each eval is its own session, so state that must outlive one eval lives in
# the agent's real globals: _G.P.

PRELUDE="local proc = require 'pogo.core.proc'; _G.P = _G.P or {}; local P = _G.P
local function out(...) local t = table.pack(...) for i = 1, t.n do t[i] = tostring(t[i]) end print(table.concat(t, ' ', 1, t.n)) end
"

# px CODE - eval CODE with `proc`, P (= _G.P) and out(...) (print with
# spaces) in scope; prints what it prints or returns.
px() { ev a "$PRELUDE$1"; }

# lua_true CODE - succeeds when the Lua expression CODE is true in the agent.
lua_true() { [ "$(ev a "${PRELUDE}return ($1) == true" 2>/dev/null)" = true ]; }

# script NAME - $T/NAME.sh from stdin; children get $T as $1.
script() { cat >"$T/$1.sh"; }

# wait_lua SECS WHAT CODE - poll until the Lua expression CODE is true.
wait_lua() { wait_for "$1" "$2" lua_true "$3"; }

# Every test ends with stop_agent, whose exit status check is what makes
# the ASan run (e2e-asan) catch a leak or a memory error in these paths.

# Prints the agent's zombie children (there must be none).
zombies() { ps -o pid=,stat= --ppid "${AGENT_PID[a]}" | awk '$2 ~ /^Z/ {print $1}'; }

test_exit_status_and_output_are_reported() {
  start_agent a
  px "P.s = proc.output{path = '$T/c.log'}
      P.h = proc.spawn{id = 'c1', argv = {'sh', '-c', 'echo hi; echo err >&2; sleep 0.2; exit 3'},
                       output = P.s, on_exit = function(st) P.st = st end}" >/dev/null
  wait_lua 3 "on_exit" "P.st ~= nil"
  expect_eq "3 nil nil false" "$(px 'out(P.st.code, P.st.signal, P.st.signame, P.st.core)')" "status"
  # lower bound only: a loaded machine (or ASan) may stretch it, never shrink it
  expect_eq true "$(px 'out(P.st.runtime >= 0.19)')" "runtime"
  expect_eq "$(px 'out(P.h:pid())')" "$(px 'out(P.st.pid)')" "status.pid"
  expect_eq false "$(px 'out(P.h:running())')" "running() after exit"
  # both lines in the ring, with their streams
  local lines; lines=$(px "for _, l in ipairs(P.s:lines()) do out(l.stream, l.text) end" | sort)
  expect_eq $'stderr err\nstdout hi' "$lines" "sink:lines()"
  # and in the log file, timestamped
  grep -qE '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z stdout hi$' "$T/c.log" \
    || fail "no stdout line in the log: $(cat "$T/c.log")"
  grep -qE 'Z stderr err$' "$T/c.log" || fail "no stderr line in the log"
  expect_eq "2 0 0" "$(px 'local s = P.s:stats() out(s.lines, s.dropped, s.truncated)')" "stats"
  expect_eq 0 "$(px 'out(proc.count())')" "count() once reaped"
  [ -z "$(zombies)" ] || fail "zombies left: $(zombies)"
  stop_agent a   # exit status 0: under ASan, no leak and no error
}

test_killed_by_a_signal_and_final_partial_line() {
  start_agent a
  px "P.s = proc.output{}
      P.h = proc.spawn{id = 'k', argv = {'sh', '-c', 'printf \"no newline\"; exec sleep 1000'},
                       output = P.s, on_exit = function(st) P.st = st end}" >/dev/null
  wait_lua 3 "the partial line read" "#P.s:lines() == 0 and P.h:running()"
  kill -KILL "$(px 'out(P.h:pid())')"
  wait_lua 3 "on_exit" "P.st ~= nil"
  expect_eq "nil 9 SIGKILL" "$(px 'out(P.st.code, P.st.signal, P.st.signame)')" "status"
  expect_eq "no newline" "$(px 'out(P.s:lines()[1].text)')" "the unterminated last line"
  stop_agent a   # exit status 0: under ASan, no leak and no error
}

test_spawn_errors_are_structured() {
  start_agent a
  printf 'echo hello from a script without a shebang\n' >"$T/noshebang"
  printf '\177ELF garbage' >"$T/badelf"
  chmod +x "$T/noshebang" "$T/badelf"
  local r
  r=$(px "out(select(2, proc.spawn{id = 'e', argv = {'/no/such/binary'}}))")
  expect_match '^ENOENT: spawn e: exec /no/such/binary: No such file or directory' "$r"
  expect_eq "exec 2 ENOENT" "$(px "local _, _, _, d = proc.spawn{id = 'e', argv = {'/no/such/binary'}} out(d.stage, d.errno, d.code)")" "details"
  expect_eq "exec ENOENT" "$(px "local _, _, c, d = proc.spawn{id = 'e', argv = {'no-such-command-xyz'}} out(d.stage, c)")" "PATH search"
  expect_eq "exec EACCES" "$(px "local _, _, c, d = proc.spawn{id = 'e', argv = {'/etc/passwd'}} out(d.stage, c)")" "not executable"
  expect_eq "exec ENOEXEC" "$(px "local _, _, c, d = proc.spawn{id = 'e', argv = {'$T/badelf'}} out(d.stage, c)")" "bad binary"
  expect_eq "chdir ENOENT" "$(px "local _, _, c, d = proc.spawn{id = 'e', argv = {'true'}, cwd = '/no/such/dir'} out(d.stage, c)")" "cwd"
  expect_eq "user ENOENT" "$(px "local _, _, c, d = proc.spawn{id = 'e', argv = {'true'}, user = 'no-such-user-xyz'} out(d.stage, c)")" "user"
  expect_eq "group ENOENT" "$(px "local _, _, c, d = proc.spawn{id = 'e', argv = {'true'}, group = 'no-such-group-xyz'} out(d.stage, c)")" "group"
  # a hard limit over the kernel's maximum cannot be set, even by root
  expect_eq "setrlimit EPERM" "$(px "local _, _, c, d = proc.spawn{id = 'e', argv = {'true'}, rlimits = {nofile = {16, 1 << 40}}} out(d.stage, c)")" "rlimit"
  if [ "$(id -u)" != 0 ]; then
    expect_eq "setuid EPERM" "$(px "local _, _, c, d = proc.spawn{id = 'e', argv = {'true'}, user = 0} out(d.stage, c)")" "setuid"
  fi
  # misuse raises instead
  r=$(px "proc.spawn{id = 'e', argv = {}}" 2>&1)
  expect_match "argv" "$r" "empty argv"
  r=$(px "proc.spawn{argv = {'true'}}" 2>&1)
  expect_match "'id'" "$r" "no id"
  r=$(px "proc.spawn{id = 'e', argv = {'true'}, rlimits = {bogus = 1}}" 2>&1)
  expect_match "unknown rlimit 'bogus'" "$r"
  # nothing left behind by the failures
  expect_eq 0 "$(px 'out(proc.count())')" "count()"
  [ -z "$(zombies)" ] || fail "zombies left: $(zombies)"
  stop_agent a   # exit status 0: under ASan, no leak and no error
}

test_child_environment_and_process_setup() {
  start_agent a
  mkdir -p "$T/bin" "$T/work"
  printf '#!/bin/sh\necho from-path-search\n' >"$T/bin/hello-pogo"
  chmod +x "$T/bin/hello-pogo"
  local user=nobody; id -u nobody >/dev/null 2>&1 || user=
  px "P.s = proc.output{}
      P.n = 0
      local function run(id, argv, extra)
        local o = {id = id, argv = argv, output = P.s, env = {PATH = '$T/bin:/usr/bin:/bin', FOO = 'bar', N = 42, POGO_AGENT = 'forged'},
                   on_exit = function() P.n = P.n + 1 end}
        for k, v in pairs(extra or {}) do o[k] = v end
        assert(proc.spawn(o))
      end
      run('env', {'env'})
      run('path', {'hello-pogo'})
      run('stdin', {'sh', '-c', 'cat; echo stdin-closed'})
      run('sig', {'grep', '-E', '^Sig(Ign|Blk)', '/proc/self/status'})
      run('pgid', {'sh', '-c', 'echo pgid \$(cut -d\" \" -f5 /proc/\$\$/stat) pid \$\$'})
      run('setup', {'sh', '-c', 'echo umask \$(umask) nofile \$(ulimit -n) cwd \$(pwd)'},
          {umask = tonumber('027', 8), rlimits = {nofile = 100, core = {0, 'infinity'}}, cwd = '$T/work'})
      if '$user' ~= '' then run('user', {'sh', '-c', 'echo uid \$(id -u) gid \$(id -g)'}, {user = '$user'}) end" >/dev/null
  local want=6; [ -n "$user" ] && want=7
  wait_lua 5 "$want exits" "P.n == $want"
  local out; out=$(px "for _, l in ipairs(P.s:lines()) do out(l.text) end")
  grep -qx "FOO=bar" <<<"$out" || fail "env FOO missing: $out"
  grep -qx "N=42" <<<"$out" || fail "a number in env: $out"
  grep -qx "POGO_CHILD_ID=env" <<<"$out" || fail "POGO_CHILD_ID not added: $out"
  grep -qx "POGO_AGENT=${AGENT_PID[a]}\..*" <<<"$out" || fail "no marker of this agent: $out"
  grep -q "forged" <<<"$out" && fail "the caller's POGO_AGENT was passed through"
  expect_eq 1 "$(grep -c '^POGO_AGENT=' <<<"$out")" "one POGO_AGENT"
  grep -qx "from-path-search" <<<"$out" || fail "PATH of the child's env not searched: $out"
  grep -qx "stdin-closed" <<<"$out" || fail "stdin not /dev/null"
  # seen from outside: a process that opens nothing has 0, 1, 2 only
  px "P.fds = proc.spawn{id = 'fds', argv = {'sleep', '1000'}, output = P.s}" >/dev/null
  local fp; fp=$(px 'out(P.fds:pid())')
  expect_eq "0 1 2" "$(ls /proc/"$fp"/fd | sort -n | tr '\n' ' ' | sed 's/ $//')" "the child's fds"
  expect_eq /dev/null "$(readlink /proc/"$fp"/fd/0)" "stdin"
  expect_match "^pipe:" "$(readlink /proc/"$fp"/fd/1)" "stdout"
  px "P.fds:close()" >/dev/null
  grep -qx $'SigIgn:\t0000000000000000' <<<"$out" || fail "ignored signals leaked: $out"
  grep -qx $'SigBlk:\t0000000000000000' <<<"$out" || fail "blocked signals leaked: $out"
  local pg; pg=$(grep '^pgid ' <<<"$out")
  [[ "$pg" =~ ^pgid\ ([0-9]+)\ pid\ ([0-9]+)$ ]] && [ "${BASH_REMATCH[1]}" = "${BASH_REMATCH[2]}" ] \
    || fail "child does not lead its own group: $pg"
  grep -qx "umask 0027 nofile 100 cwd $T/work" <<<"$out" || fail "setup: $(grep '^umask' <<<"$out")"
  if [ -n "$user" ]; then
    grep -qx "uid $(id -u nobody) gid $(id -g nobody)" <<<"$out" || fail "user: $(grep '^uid' <<<"$out")"
  fi
  stop_agent a   # exit status 0: under ASan, no leak and no error
}

test_grandchild_in_the_group_dies_with_the_main() {
  start_agent a
  px "P.h = proc.spawn{id = 'g', argv = {'sh', '-c', 'sleep 1000 & echo \$! >$T/gc; exec sleep 1000'},
                       on_exit = function(st) P.st = st end}" >/dev/null
  wait_for 3 "the grandchild's pid" test -s "$T/gc"
  local gc; gc=$(cat "$T/gc")
  kill -0 "$gc" || fail "grandchild $gc not running"
  kill -KILL "$(px 'out(P.h:pid())')"
  wait_for 1 "grandchild $gc gone within a second" gone "$gc"
  wait_lua 2 "on_exit" "P.st ~= nil"
  stop_agent a   # exit status 0: under ASan, no leak and no error
}

test_escaped_grandchildren_die_with_the_main() {
  start_agent a
  # One leaves with setsid straight away; a deeper one is the child of a
  # process in the group, so it only becomes ours once that one is killed.
  script esc <<'SH'
setsid sleep 1000 & echo $! >"$1/esc1"
sh -c 'setsid sleep 1001 & echo $! >"$1/esc2"; exec sleep 1002' sh "$1" &
exec sleep 1000
SH
  script other <<'SH'
setsid sleep 1003 & echo $! >"$1/other"; exec sleep 1000
SH
  px "P.h = proc.spawn{id = 'esc', argv = {'sh', '$T/esc.sh', '$T'}, on_exit = function(st) P.st = st end}
      P.other = proc.spawn{id = 'other', argv = {'sh', '$T/other.sh', '$T'}}" >/dev/null
  wait_for 3 "escapee pids" bash -c "test -s '$T/esc1' && test -s '$T/esc2' && test -s '$T/other'"
  local e1 e2 other; e1=$(cat "$T/esc1"); e2=$(cat "$T/esc2"); other=$(cat "$T/other")
  [ "$(ps -o sid= -p "$e1" | tr -d ' ')" = "$e1" ] || fail "escapee $e1 did not leave the session"
  kill -KILL "$(px 'out(P.h:pid())')"
  wait_for 1 "setsid escapee $e1 gone within a second" gone "$e1"
  wait_for 1 "deeper escapee $e2 gone within a second" gone "$e2"
  wait_lua 2 "on_exit" "P.st ~= nil"
  # another child's escapee is not touched
  sleep 0.1
  gone "$other" && fail "the escapee of an unrelated child was killed"
  grep -q "esc: killed pid $e1, left behind" "$T/a.log" || fail "no log line for the sweep"
  px "P.other:close()" >/dev/null
  wait_for 1 "the other escapee gone once its child is closed" gone "$other"
  stop_agent a   # exit status 0: under ASan, no leak and no error
}

test_kill_signals_the_whole_group() {
  start_agent a
  # The grandchild records the TERM it got; the main waits for it, so the
  # SIGKILL that follows the main's exit cannot cut it short.
  script term <<'SH'
sh -c 'trap "echo gc-term >>\"$1/got\"; exit 0" TERM; echo up >"$1/gc-up"; while :; do sleep 0.05; done' sh "$1" &
trap 'echo main-term >>"$1/got"; wait; exit 7' TERM
while :; do sleep 0.05; done
SH
  px "P.h = proc.spawn{id = 't', argv = {'sh', '$T/term.sh', '$T'}, on_exit = function(st) P.st = st end}" >/dev/null
  wait_for 3 "grandchild up" test -s "$T/gc-up"
  expect_eq true "$(px 'out(P.h:kill("TERM"))')" "kill(TERM)"
  wait_lua 3 "on_exit" "P.st ~= nil"
  expect_eq 7 "$(px 'out(P.st.code)')" "the main exited from its trap"
  grep -qx main-term "$T/got" || fail "main did not get TERM"
  grep -qx gc-term "$T/got" || fail "the grandchild did not get TERM"
  # names and numbers; the group is gone now
  expect_match "^nil ESRCH: kill t" "$(px 'out(P.h:kill(15))')" "kill after exit"
  px "P.h2 = proc.spawn{id = 'n', argv = {'sleep', '1000'}, on_exit = function(st) P.st2 = st end}" >/dev/null
  expect_eq true "$(px 'out(P.h2:kill("sigusr1"))')" "kill('sigusr1')"
  wait_lua 3 "on_exit" "P.st2 ~= nil"
  expect_eq "SIGUSR1 $(px 'out(proc.signals().SIGUSR1)')" "$(px 'out(P.st2.signame, P.st2.signal)')"
  expect_eq SIGTERM "$(px 'out(proc.signame(15))')" "signame"
  expect_match "unknown signal 'NOPE'" "$(px 'P.h2:kill("NOPE")' 2>&1)" "a bad name raises"
  stop_agent a   # exit status 0: under ASan, no leak and no error
}

test_close_kills_a_running_group_and_skips_on_exit() {
  start_agent a
  px "P.called = false
      P.h = proc.spawn{id = 'c', argv = {'sh', '-c', 'sleep 1000 & echo \$! >$T/gc; exec sleep 1000'},
                       on_exit = function() P.called = true end}" >/dev/null
  wait_for 3 "grandchild" test -s "$T/gc"
  local main gc; main=$(px 'out(P.h:pid())'); gc=$(cat "$T/gc")
  expect_eq 1 "$(px 'out(proc.count())')" "count() while running"
  px "P.h:close()" >/dev/null
  wait_for 1 "main gone" gone "$main"
  wait_for 1 "grandchild gone" gone "$gc"
  wait_lua 1 "count() back to 0" "proc.count() == 0"
  expect_eq "false false $main" "$(px 'out(P.called, P.h:running(), P.h:pid())')" "after close"
  # a handle dropped by Lua keeps its child and its callback
  px "proc.spawn{id = 'd', argv = {'sh', '-c', 'sleep 0.3'}, on_exit = function(st) _G.P.dropped = st.code end}
      collectgarbage() collectgarbage()" >/dev/null
  px "collectgarbage()" >/dev/null
  wait_lua 3 "the dropped handle's on_exit" "P.dropped == 0"
  stop_agent a   # exit status 0: under ASan, no leak and no error
}

test_log_rotates_at_max_size() {
  start_agent a
  # 200 lines of 73 bytes in the file (24 + 1 + 6 + 1 + 40 + 1).
  px "P.s = proc.output{path = '$T/r.log', max_size = 2000, max_files = 2, ring = 50}
      proc.spawn{id = 'r', argv = {'sh', '-c', 'i=100; while [ \$i -lt 300 ]; do echo line-\$i-abcdefghijklmnopqrstuvwxyz0123; i=\$((i+1)); done'},
                 output = P.s, on_exit = function(st) P.st = st end}" >/dev/null
  wait_lua 3 "on_exit" "P.st ~= nil"
  local f
  for f in r.log r.log.1 r.log.2; do
    [ -f "$T/$f" ] || fail "$f missing"
    [ "$(stat -c %s "$T/$f")" -le 2000 ] || fail "$f is $(stat -c %s "$T/$f") bytes, over max_size"
  done
  [ ! -e "$T/r.log.3" ] || fail "more rotated files than max_files"
  expect_eq "line-299-abcdefghijklmnopqrstuvwxyz0123" "$(tail -1 "$T/r.log" | cut -d' ' -f3)" "newest line"
  grep -q "line-2[0-9][0-9]-" "$T/r.log.2" || fail "r.log.2 should hold older lines"
  local rot; rot=$(px 'out(P.s:stats().rotations)')
  [ "$rot" -ge 6 ] || fail "only $rot rotations"
  expect_eq "50 line-250" "$(px 'local l = P.s:lines() out(#l, l[1].text:sub(1, 8))')" "the ring keeps the last 50"
  # the directory recreated: reopen starts a new file there
  rm -rf "$T/r.log"*
  expect_eq true "$(px 'out(P.s:reopen())')" "reopen"
  px "P.s:write('pogo', 'after reopen')" >/dev/null
  grep -q " pogo after reopen$" "$T/r.log" || fail "nothing written after reopen"
  stop_agent a   # exit status 0: under ASan, no leak and no error
}

test_a_flood_does_not_starve_others_or_the_agent() {
  start_agent a
  px "P.flood = proc.output{path = '$T/flood.log', max_size = 1000000, max_files = 1, ring = 100}
      P.tick = proc.output{}
      P.hf = proc.spawn{id = 'flood', argv = {'yes', 'flood'}, output = P.flood}
      P.ht = proc.spawn{id = 'tick', argv = {'sh', '-c', 'i=0; while :; do i=\$((i+1)); echo tick \$i; sleep 0.02; done'}, output = P.tick}" >/dev/null
  wait_lua 3 "the flood flowing" "P.flood:stats().lines > 100000"
  local worst=0 i t0 ms a b
  a=$(px 'out(P.tick:stats().lines)')
  for i in 1 2 3 4 5; do
    t0=$(date +%s%N)
    ev a 1 >/dev/null || fail "eval failed during the flood"
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    [ "$ms" -gt "$worst" ] && worst=$ms
    sleep 0.05
  done
  b=$(px 'out(P.tick:stats().lines)')
  [ "$worst" -lt 500 ] || fail "an eval took ${worst} ms during the flood"
  [ $((b - a)) -ge 5 ] || fail "tick's output stalled during the flood ($a -> $b lines)"
  # (flood.log itself may be missing for an instant while it rotates)
  local f size
  for f in flood.log flood.log.1; do
    size=$(stat -c %s "$T/$f" 2>/dev/null || echo 0)
    [ "$size" -le 1000000 ] || fail "$f grew past max_size: $size"
  done
  [ -e "$T/flood.log.1" ] || fail "the flood never rotated its log"
  [ ! -e "$T/flood.log.2" ] || fail "more rotated files than max_files"
  echo "flood: $(px 'out(P.flood:stats().lines)') lines, worst eval ${worst} ms, tick +$((b - a))"
  px "P.hf:close() P.ht:close()" >/dev/null
  stop_agent a   # exit status 0: under ASan, no leak and no error
}

test_sink_write_callbacks_and_close() {
  start_agent a
  px "P.s = proc.output{path = '$T/w.log', ring = 10}
      P.seen = {}
      P.s:on_line(function(stream, text, time) P.seen[#P.seen + 1] = stream .. ':' .. text end)
      P.s:write('pogo', 'one\ntwo\n')
      P.s:write('stderr', '')
      proc.spawn{id = 'w', argv = {'echo', 'child'}, output = P.s, on_exit = function() P.done = true end}" >/dev/null
  wait_lua 3 "on_exit" "P.done"
  expect_eq "pogo:one pogo:two stderr: stdout:child" "$(px 'out(table.concat(P.seen, " "))')" "on_line saw every line"
  expect_eq 4 "$(grep -c . "$T/w.log")" "lines in the file"
  px "P.s:on_line(nil) P.s:write('pogo', 'quiet')" >/dev/null
  expect_eq 4 "$(px 'out(#P.seen)')" "no callback once removed"
  expect_eq "5 true" "$(px 'local s = P.s:stats() out(s.lines, s.open)')" "stats"
  px "P.s:close()" >/dev/null
  expect_eq "false" "$(px 'out(P.s:stats().open)')" "closed"
  expect_match "output sink is closed" "$(px 'P.s:lines()' 2>&1)" "a closed sink raises"
  expect_match "closed sink" "$(px "proc.spawn{id = 'x', argv = {'true'}, output = P.s}" 2>&1)" "spawn with a closed sink"
  expect_match "^nil ENOENT" "$(px "out(proc.output{path = '$T/no/such/dir/x.log'})")" "an unopenable path"
  expect_match "'max_files' is over 1000" "$(px "proc.output{max_files = 1 << 40}" 2>&1)" "misuse raises"
  expect_match "'ring' must be a non-negative integer" "$(px "proc.output{ring = -1}" 2>&1)" "misuse raises"
  expect_eq true "$(px 'out(proc.init())')" "init() is idempotent"
  stop_agent a   # exit status 0: under ASan, no leak and no error
}

test_notify_socket_delivers_fields_and_sender_pid() {
  [ -x build/helpers/notify ] || make -s build/helpers/notify >/dev/null || fail "cannot build the notify helper"
  start_agent a
  px "P.got = {}
      P.n = assert(proc.notify('$T/n.sock', function(pid, f) P.got[#P.got + 1] = {pid = pid, f = f} end))
      P.h = proc.spawn{id = 'nt', argv = {'$PWD/build/helpers/notify', 'READY=1\nSTATUS=warming up\nignored line', 'sleep', '1000'},
                       env = {NOTIFY_SOCKET = '$T/n.sock'}}" >/dev/null
  wait_lua 3 "a notify message" "#P.got == 1"
  expect_eq "$(px 'out(P.h:pid())')" "$(px 'out(P.got[1].pid)')" "the sender's pid"
  expect_eq "1|warming up|nil" "$(px 'local f = P.got[1].f out(f.READY .. "|" .. f.STATUS .. "|" .. tostring(f["ignored line"]))')" "fields"
  [ -S "$T/n.sock" ] || fail "no socket file"
  expect_eq "$T/n.sock" "$(px 'out(P.n:path())')" "path()"
  px "P.n:close() P.h:close()" >/dev/null
  [ ! -e "$T/n.sock" ] || fail "close() left the socket file"
  stop_agent a   # exit status 0: under ASan, no leak and no error
}

test_agent_exit_kills_what_it_spawned() {
  start_agent a
  script esc <<'SH'
setsid sleep 1003 & echo $! >"$1/esc"; exec sleep 1000
SH
  px "P.h = proc.spawn{id = 'x', argv = {'sh', '-c', 'sleep 1000 & echo \$! >$T/gc; exec sleep 1000'}}
      proc.spawn{id = 'y', argv = {'sleep', '1001'}}
      P.s = proc.output{path = '$T/x.log'}
      proc.spawn{id = 'z', argv = {'sh', '-c', 'echo up; exec sleep 1002'}, output = P.s}
      proc.spawn{id = 'e', argv = {'sh', '$T/esc.sh', '$T'}}" >/dev/null
  wait_for 3 "grandchild and escapee" bash -c "test -s '$T/gc' && test -s '$T/esc'"
  local pids; pids="$(px 'out(P.h:pid())') $(cat "$T/gc") $(cat "$T/esc") $(pgrep -f 'sleep 100[12]' | tr '\n' ' ')"
  # a clean stop: the watchdog exits quietly, the agent cleans up itself
  stop_agent a TERM
  local p; for p in $pids; do wait_for 1 "pid $p gone after the agent stopped" gone "$p"; done
}

test_open_file_limit_is_raised_for_the_agent_only() {
  local hard; hard=$(ulimit -H -n)
  if [ "$hard" != unlimited ] && [ "$hard" -le 512 ]; then
    echo "SKIP: the hard open file limit ($hard) leaves no room above 256"; exit 77
  fi
  ulimit -S -n 256       # the agent inherits it; the hard limit stays
  start_agent a
  # 3 fds per child in the agent (two pipes and a log file): 150 children
  # need some 450, far over the soft limit the agent started with.
  px "P.n = 0
      for i = 1, 150 do
        local s = assert(proc.output{path = '$T/c' .. i .. '.log'})
        assert(proc.spawn{id = 'c' .. i, argv = {'sh', '-c', 'grep \"Max open files\" /proc/self/limits; ulimit -n; exec sleep 1000'},
                          output = s, on_exit = function() P.n = P.n + 1 end})
      end" >/dev/null || fail "150 spawns failed"
  expect_eq 150 "$(px 'out(proc.count())')" "children running"
  wait_for 5 "the last child's output" grep -q 'stdout 256$' "$T/c150.log"
  local soft; soft=$(awk '/^Max open files/ {print $4}' /proc/"${AGENT_PID[a]}"/limits)
  [ "$soft" = "$(awk '/^Max open files/ {print $5}' /proc/"${AGENT_PID[a]}"/limits)" ] \
    || fail "the agent's soft limit ($soft) was not raised to the hard one"
  # the children get the limit the agent started with, hard limit untouched
  local f; f=$(cat "$T/c150.log")
  expect_match "stdout Max open files +256 +$hard +files" "$f" "the child's /proc/self/limits"
  expect_match "stdout 256$" "$f" "ulimit -n in the child"
  # a spec's own limit still wins
  px "P.s = proc.output{}
      proc.spawn{id = 'own', argv = {'sh', '-c', 'ulimit -n'}, output = P.s, rlimits = {nofile = 100},
                 on_exit = function() P.own = true end}" >/dev/null
  wait_lua 3 "the child with its own limit" "P.own"
  expect_eq 100 "$(px 'out(P.s:lines()[1].text)')" "rlimits.nofile"
  # and a child's fds are 0, 1, 2 however many the agent holds
  local pid; pid=$(pgrep -P "${AGENT_PID[a]}" -x sleep | head -1)
  expect_eq "0 1 2" "$(ls /proc/"$pid"/fd | sort -n | tr '\n' ' ' | sed 's/ $//')" "fds of a child among 150"
  stop_agent a   # exit status 0: under ASan, no leak and no error
}

test_path_search_takes_the_first_executable_match() {
  start_agent a
  mkdir -p "$T/noexec" "$T/dir/prog-pogo" "$T/bin" "$T/later" "$T/work/rel"
  printf '#!/bin/sh\necho noexec\n' >"$T/noexec/prog-pogo"       # mode 644: skipped
  printf '#!/bin/sh\necho bin\n' >"$T/bin/prog-pogo"
  printf '#!/bin/sh\necho later\n' >"$T/later/prog-pogo"
  printf '#!/bin/sh\necho relative\n' >"$T/work/rel/rel-pogo"
  printf '#!/bin/sh\necho other\n' >"$T/rel-pogo"
  chmod 644 "$T/noexec/prog-pogo"
  chmod 755 "$T/bin/prog-pogo" "$T/later/prog-pogo" "$T/work/rel/rel-pogo" "$T/rel-pogo"
  px "P.s = proc.output{}
      P.n = 0
      function P.run(id, argv, path, extra)
        local o = {id = id, argv = argv, output = P.s, env = {PATH = path},
                   on_exit = function() P.n = P.n + 1 end}
        for k, v in pairs(extra or {}) do o[k] = v end
        return proc.spawn(o)
      end
      assert(P.run('first', {'prog-pogo'}, '$T/noexec:$T/dir:/no/such/dir:$T/bin:$T/later'))
      -- a relative entry is relative to the child's cwd, as in execvp
      assert(P.run('rel', {'rel-pogo'}, 'rel:$T', {cwd = '$T/work'}))" >/dev/null
  wait_lua 3 "both exits" "P.n == 2"
  expect_eq $'bin\nrelative' "$(px "for _, l in ipairs(P.s:lines()) do out(l.text) end" | sort)" "what ran"
  # nothing executable anywhere: EACCES if something was found, else ENOENT
  expect_eq "exec EACCES" "$(px "local _, _, c, d = P.run('e', {'prog-pogo'}, '$T/noexec:$T/dir') out(d.stage, c)")" "only a non-executable match"
  expect_eq "exec ENOENT" "$(px "local _, _, c, d = P.run('e', {'prog-pogo'}, '/no/such/dir:$T/work') out(d.stage, c)")" "no match"
  expect_match "^ENOENT: spawn e: exec missing-pogo: No such file or directory" \
    "$(px "out(select(2, P.run('e', {'missing-pogo'}, '$T/bin:/usr/bin:/bin')))")" "a missing program"
  # a match the child's user may not run: the search goes on past it
  if [ "$(id -u)" = 0 ] && id -u nobody >/dev/null 2>&1; then
    mkdir -p "$T/rootonly"; chmod 755 "$T" "$T/rootonly" "$T/later"
    printf '#!/bin/sh\necho rootonly\n' >"$T/rootonly/prog-pogo"
    chmod 700 "$T/rootonly/prog-pogo"
    px "assert(P.run('user', {'prog-pogo'}, '$T/rootonly:$T/later', {user = 'nobody'}))" >/dev/null
    wait_lua 3 "the exit" "P.n == 3"
    expect_eq later "$(px "out(P.s:lines()[3].text)")" "the search as the child's user"
    expect_eq "exec EACCES" "$(px "local _, _, c, d = P.run('e', {'prog-pogo'}, '$T/rootonly', {user = 'nobody'}) out(d.stage, c)")" "only a match the user may not run"
  fi
  expect_eq 0 "$(px 'out(proc.count())')" "count()"
  [ -z "$(zombies)" ] || fail "zombies left: $(zombies)"
  stop_agent a   # exit status 0: under ASan, no leak and no error
}

test_children_start_with_default_signal_dispositions() {
  # Ignored in the shell that starts the agent, so ignored in the agent;
  # the agent itself catches TERM, INT, HUP, CHLD and USR2 (a REPL's
  # interrupt) and ignores PIPE.
  trap '' USR1 ALRM
  start_agent a
  trap - USR1 ALRM
  local ign; ign=$(awk '/^SigIgn/ {print $2}' /proc/"${AGENT_PID[a]}"/status)
  [ $(( 0x$ign & (1 << 9) )) -ne 0 ] || fail "USR1 not ignored in the agent: SigIgn $ign"
  px "P.s = proc.output{}
      proc.spawn{id = 'sig', argv = {'cat', '/proc/self/status'}, output = P.s, on_exit = function() P.done = true end}" >/dev/null
  wait_lua 3 "the exit" "P.done"
  local st; st=$(px "for _, l in ipairs(P.s:lines()) do out(l.text) end")
  local f
  for f in SigIgn SigBlk SigCgt SigPnd; do
    grep -qx "$f:"$'\t'"0000000000000000" <<<"$st" || fail "$f in the child: $(grep "^$f" <<<"$st")"
  done
  # HUP, which the agent catches (reload), has its default action again in
  # a child: it kills it, and the agent reloads nothing
  px "P.got = {}
      for i = 1, 20 do
        local h = proc.spawn{id = 's' .. i, argv = {'sleep', '1000'}, on_exit = function(st) P.got[#P.got + 1] = st.signame end}
        h:kill('HUP')
      end" >/dev/null
  wait_lua 3 "20 exits" "#P.got == 20"
  expect_eq 20 "$(px 'local n = 0 for _, s in ipairs(P.got) do if s == "SIGHUP" then n = n + 1 end end out(n)')" "killed by HUP"
  grep -qi reload "$T/a.log" && fail "the agent saw a HUP: $(grep -i reload "$T/a.log")"
  stop_agent a   # exit status 0: under ASan, no leak and no error
}

test_leftovers_die_even_when_the_replacement_starts_at_once() {
  start_agent a
  # Each generation leaves a daemon re-parented to the agent, then exits
  # (but the 4th, which stays up); on_exit starts the next one at once, so
  # a daemon and the replacement start within a clock tick of each other.
  script gen <<'SH'
sh -c 'setsid sleep 1000 & echo $! >"$1/d$2"' sh "$1" "$2"
[ "$2" -ge 4 ] && exec sleep 1000
exit 1
SH
  px "P.n = 0
      function P.start()
        P.n = P.n + 1
        P.h = assert(proc.spawn{id = 'gen', argv = {'sh', '$T/gen.sh', '$T', tostring(P.n)},
                                on_exit = function() if P.n < 4 then P.start() end end})
      end
      P.start()" >/dev/null
  wait_for 3 "the 4th daemon" test -s "$T/d4"
  local d
  for d in 1 2 3; do
    wait_for 1 "daemon $d gone" gone "$(cat "$T/d$d")"
  done
  # a sweep while the 4th runs spares its daemon: it started after its main
  px "P.t = proc.spawn{id = 'other', argv = {'true'}, on_exit = function() P.other = true end}" >/dev/null
  wait_lua 3 "the other exit" "P.other"
  sleep 0.1
  gone "$(cat "$T/d4")" && fail "the running generation's daemon was killed"
  px "P.h:close()" >/dev/null
  wait_for 1 "daemon 4 gone once its main is" gone "$(cat "$T/d4")"
  stop_agent a   # exit status 0: under ASan, no leak and no error
}
