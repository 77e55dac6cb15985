# End-to-end tests of pogo.core.link: real agents on loopback, driven
# through pogo eval (nothing in the agent calls link.* without a
# secret_file, so each test sets the link layer up itself).

# new_key FILE - a fresh cluster key file, mode 0600.
new_key() {
  "$POGO" keygen "$1" >/dev/null || fail "pogo keygen $1"
}

# link_agent AGENT NODE_NAME KEYFILE [EXTRA_INIT_FIELDS] - start AGENT and
# init its link layer as NODE_NAME. Callbacks record into _G.ev_log
# ("up P", "down P: why", "failed: why") and _G.got (messages, in order).
# Sets INC to the incarnation. (Not in $(...): the agent must be started
# by the test's own shell, which kills it at the end.)
link_agent() {
  local agent=$1 name=$2 key=$3 extra=${4:-}
  start_agent "$agent"
  INC=$(ev "$agent" "
    local link = require 'pogo.core.link'
    _G.link, _G.ev_log, _G.got = link, {}, {}
    link.on {
      up = function(l) table.insert(ev_log, 'up ' .. l.peer) end,
      message = function(l, m) table.insert(got, m) end,
      down = function(l, why) table.insert(ev_log, 'down ' .. l.peer .. ': ' .. why) end,
      failed = function(host, port, why) table.insert(ev_log, 'failed: ' .. why) end,
    }
    return assert(link.init { name = '$name', keyfile = '$key' $extra })") \
    || fail "link.init on $agent"
}

# listen AGENT - listen on 127.0.0.1, an ephemeral port; prints the port.
listen() {
  ev "$1" '_G.ln = assert(link.listen("127.0.0.1", 0)) return ln:port()' \
    || fail "link.listen on $1"
}

# dial AGENT PORT
dial() {
  ev "$1" "assert(link.dial('127.0.0.1', $2))" >/dev/null || fail "link.dial from $1"
}

# events AGENT - the recorded events, joined with '|'.
events() { ev "$1" 'print(table.concat(ev_log, "|"))'; }
nlinks() { ev "$1" 'print(#link.links())'; }
events_are() { [ "$(events "$1")" = "$2" ]; }
last_event_is() { [ "$(ev "$1" 'print(ev_log[#ev_log])')" = "$2" ]; }
last_event_matches() { [[ "$(ev "$1" 'print(ev_log[#ev_log])')" =~ $2 ]]; }
# evals_to AGENT CODE VALUE - CODE prints VALUE.
evals_to() { [ "$(ev "$1" "$2")" = "$3" ]; }
# ups_downs AGENT - the events without the failed dials.
ups_downs() { events "$1" | tr '|' '\n' | grep -v '^failed' | paste -sd'|'; }

# log_count AGENT REGEX - lines of AGENT's log matching REGEX.
log_count() { grep -cE "$2" "$T/$1.log"; }
log_has() { [ "$(log_count "$1" "$2")" -ge "${3:-1}" ]; }

# stop_all - SIGTERM every agent still running and expect clean exits:
# under ASan a leak or a memory error makes the status non-zero.
stop_all() {
  local n
  for n in "${!AGENT_PID[@]}"; do stop_agent "$n"; done
}

# The one line a dropped, never-authenticated connection leaves.
DROPPED=' warn  [a-z]+ link: link (from|to) 127\.0\.0\.1:[0-9]+: .*, dropped$'

# link_pair - agents a and b with a shared key, b dialled a, both up.
# Sets PORT_A and INC_A.
link_pair() {
  new_key "$T/key"
  link_agent a a "$T/key"
  INC_A=$INC
  link_agent b b "$T/key"
  PORT_A=$(listen a)
  dial b "$PORT_A"
  wait_for 3 "a saw b up (a: $(events a))" events_are a "up b"
  wait_for 3 "b saw a up (b: $(events b))" events_are b "up a"
}

test_link_messages_flow_both_ways_in_order() {
  link_pair
  expect_eq "a true up integer $INC_A 127.0.0.1:$PORT_A" \
    "$(ev b 'local l = link.links()[1]
             print(l.peer, l.initiator, l.state, math.type(l.incarnation), l.incarnation, l.addr)' | tr '\t' ' ')" \
    "b's view of the link"
  expect_eq "b false up" "$(ev a 'local l = link.links()[1] print(l.peer, l.initiator, l.state)' | tr '\t' ' ')" \
    "a's view of the link"

  # Nested values; integers stay integers, floats floats, arrays arrays.
  ev b 'assert(link.links()[1]:send({ n = 1, f = 2.5, big = 1 << 60,
          list = { 1, 2, { 3, "x" } }, map = { k = { deep = true } }, s = "é" }))' >/dev/null
  wait_for 2 "a got the nested message" evals_to a 'print(#got)' 1
  expect_eq "integer float integer x 3 true é" \
    "$(ev a 'local m = got[1]
             print(math.type(m.n), math.type(m.f), math.type(m.big), m.list[3][2], #m.list, m.map.k.deep, m.s)' | tr '\t' ' ')" \
    "decoded message"
  ev a '_G.got = {}' >/dev/null

  # 1000 messages each way, sent in one go: order preserved.
  ev a 'local l = link.links()[1]
        for i = 1, 1000 do assert(l:send({ i = i, pad = ("x"):rep(i % 97) })) end' >/dev/null
  ev b 'local l = link.links()[1]
        for i = 1, 1000 do assert(l:send({ i = i, from = "b" })) end' >/dev/null
  local in_order='local n = 0 for i, m in ipairs(got) do if m.i ~= i then return "out of order at " .. i end n = i end return n'
  wait_for 3 "1000 messages at b, in order" evals_to b "$in_order" 1000
  wait_for 3 "1000 messages at a, in order" evals_to a "$in_order" 1000
  expect_eq "true true 0" "$(ev a 'local s = link.links()[1]:stats()
                                   print(s.frames_out >= 1000, s.bytes_in > 0, s.queued)' | tr '\t' ' ')" "stats"

  # A value MessagePack cannot carry is the caller's mistake: it raises.
  local err
  err=$(ev a 'link.links()[1]:send({ f = print })' 2>&1 >/dev/null)
  expect_match "cannot encode the message" "$err" "unencodable send"
  expect_eq "up" "$(ev a 'print(link.links()[1].state)')" "link after a refused send"

  # Agents exit cleanly (and leak-free under ASan) with links still up.
  stop_all
}

# A flood of frames that each cost the receiver some work is handed over a
# bounded amount per loop iteration (LINK_DELIVER_MS), in order, none lost.
test_link_a_flood_is_delivered_a_bounded_amount_per_loop_iteration() {
  link_pair
  # tick counts a's loop iterations: a repeating timer that is always due
  # fires once per iteration.
  ev a '_G.tick = 0
        _G.ticker = require("pogo.core.loop").timer(0, 1e-6, function() _G.tick = _G.tick + 1 end)
        link.on { message = function(l, m)
          for _ = 1, 3000 do end            -- some work per message
          got[#got + 1] = { i = m.i, tick = _G.tick }
        end }' >/dev/null
  ev b 'local l = link.links()[1]
        for i = 1, 20000 do assert(l:send({ i = i })) end' >/dev/null
  local verdict='
    local per, most, ticks = {}, 0, 0
    for i, m in ipairs(got) do
      if m.i ~= i then return print("out of order at " .. i) end
      if not per[m.tick] then per[m.tick] = 0; ticks = ticks + 1 end
      per[m.tick] = per[m.tick] + 1
      if per[m.tick] > most then most = per[m.tick] end
    end
    print(#got, ticks >= 10, most <= 1000)'
  wait_for 20 "20000 messages at a, in order, over many iterations" \
    evals_to a "$verdict" "$(printf '20000\ttrue\ttrue')"
  ev a 'ticker:close()' >/dev/null
  stop_all
}

test_link_wrong_key_is_refused_with_one_line_on_each_side() {
  new_key "$T/k1"
  new_key "$T/k2"
  link_agent a a "$T/k1"
  link_agent b b "$T/k2"
  local port
  port=$(listen a)
  dial b "$port"
  wait_for 3 "a's line" log_has a "link: link from 127\.0\.0\.1:[0-9]+: wrong cluster key.*, dropped$"
  wait_for 3 "b's line" log_has b "link: link to 127\.0\.0\.1:$port: closed by the peer during the handshake.*, dropped$"
  wait_for 3 "b's failed callback" events_are b "failed: closed by the peer during the handshake (a wrong cluster key?)"
  expect_eq 1 "$(log_count a "$DROPPED")" "lines on a"
  expect_eq 1 "$(log_count b "$DROPPED")" "lines on b"
  expect_eq "" "$(events a)" "events on a"
  expect_eq 0 "$(nlinks a)" "links on a"
  stop_all
}

test_link_key_rotation_by_reload() {
  new_key "$T/k1"
  new_key "$T/k2"
  cp "$T/k1" "$T/a.key"
  link_agent a a "$T/a.key"
  link_agent b b "$T/k1"
  link_agent c c "$T/k2"
  local port
  port=$(listen a)
  dial b "$port"
  wait_for 3 "b up" events_are b "up a"
  dial c "$port"
  wait_for 3 "c refused" events_are c "failed: closed by the peer during the handshake (a wrong cluster key?)"
  # a accepts the new key too: rotation step 1. Links up keep going.
  cat "$T/k1" "$T/k2" >"$T/a.key"
  expect_eq "true" "$(ev a 'link.reload_keys()')" "reload_keys"
  dial c "$port"
  wait_for 3 "c up after the reload (c: $(events c))" events_are c "failed: closed by the peer during the handshake (a wrong cluster key?)|up a"
  wait_for 3 "a has b and c" events_are a "up b|up c"
  expect_eq 2 "$(nlinks a)" "links on a"
  ev b 'assert(link.links()[1]:send("still here"))' >/dev/null
  wait_for 2 "b's message after the reload" evals_to a 'print(got[1])' "still here"
  # A broken key file is refused and the old keys stay.
  echo "not a key" >"$T/a.key"
  expect_match "a.key line 1: a key is 64 hex digits" "$(ev a 'print(select(2, link.reload_keys()))')" "a broken key file"
  expect_eq 2 "$(nlinks a)" "links after a failed reload"
  stop_all
}

# Exactly one link each side, and exactly one dial reported as a duplicate.
dup_count() { { events a; events b; } | tr '|' '\n' | grep -c '^failed: duplicate'; }
settled() { [ "$(nlinks a) $(nlinks b) $(dup_count)" = "1 1 1" ]; }

test_link_simultaneous_dial_keeps_one_link() {
  new_key "$T/key"
  link_agent a a "$T/key"
  link_agent b b "$T/key"
  local pa pb round
  pa=$(listen a)
  pb=$(listen b)
  # Round 1: both dial at once. Round 2: a dials b twice in one go.
  # Round 3: b dials again while the link is up.
  for round in 1 2 3; do
    case $round in
      1) local p1 p2
         dial a "$pb" & p1=$!
         dial b "$pa" & p2=$!
         wait $p1 $p2 ;;
      2) ev a "assert(link.dial('127.0.0.1', $pb)) assert(link.dial('127.0.0.1', $pb))" >/dev/null ;;
      3) dial a "$pb"
         wait_for 3 "up before the redial" events_are a "up b"
         dial b "$pa" ;;
    esac
    wait_for 3 "round $round: one link each side (a: $(events a); b: $(events b))" settled
    sleep 0.1   # let any stray frame land before looking again
    settled || fail "round $round: unsettled again (a: $(events a); b: $(events b))"
    # No link that was dropped as a duplicate ever came up.
    expect_eq "up b" "$(ups_downs a)" "round $round: a's ups and downs"
    expect_eq "up a" "$(ups_downs b)" "round $round: b's ups and downs"
    # Both ends kept the same connection: one initiated it, one accepted it.
    local ia ib
    ia=$(ev a 'link.links()[1].initiator')
    ib=$(ev b 'link.links()[1].initiator')
    [ "$ia" != "$ib" ] || fail "round $round: both ends say initiator=$ia"
    ev a 'link.links()[1]:close("next round")' >/dev/null
    wait_for 2 "round $round: b's down" last_event_is b "down a: closed by peer: next round"
    ev a '_G.ev_log = {}' >/dev/null
    ev b '_G.ev_log = {}' >/dev/null
  done
  expect_eq 0 "$(log_count a "$DROPPED")" "warnings on a"
  expect_eq 0 "$(log_count b "$DROPPED")" "warnings on b"
  stop_all
}

test_link_duplicate_node_name_is_refused_on_both_sides() {
  link_pair
  # Agent c claims the name b while b's link is up.
  link_agent c b "$T/key"
  dial c "$PORT_A"
  wait_for 3 "a's line" log_has a \
    "warn  a link: node name 'b' is already in use by incarnation [0-9]+ \(127\.0\.0\.1:[0-9]+\); refused the newcomer from 127\.0\.0\.1:[0-9]+$"
  wait_for 3 "c's line" log_has c \
    "error c link: link to 127\.0\.0\.1:$PORT_A: refused by a: node name 'b' is already in use in the cluster, dropped$"
  wait_for 3 "c's failed callback" events_are c "failed: refused by a: node name 'b' is already in use in the cluster"
  expect_eq "up b" "$(events a)" "a's events"
  expect_eq "up a" "$(events b)" "b's events"
  expect_eq "1 0" "$(nlinks a) $(nlinks c)" "links"
  expect_eq 1 "$(log_count a 'already in use')" "lines on a"
  expect_eq 1 "$(log_count c 'already in use')" "lines on c"

  # Then c claims a's own name.
  ev c "link.shutdown() _G.ev_log = {} assert(link.init { name = 'a', keyfile = '$T/key' })" >/dev/null
  dial c "$PORT_A"
  wait_for 3 "a's own-name line" log_has a \
    "warn  a link: node name 'a' is this node's own name; refused the newcomer from 127\.0\.0\.1:[0-9]+$"
  wait_for 3 "c's own-name line" log_has c \
    "error c link: link to 127\.0\.0\.1:$PORT_A: refused by a: node name 'a' is already in use in the cluster, dropped$"
  expect_eq "0 1" "$(log_count c "own name") $(log_count a "own name")" "own-name lines on c and a"
  expect_eq "up b" "$(events a)" "a's events after the second newcomer"
  expect_eq "b" "$(ev a 'print(link.links()[1].peer)')" "a's link"
  stop_all
}

test_link_junk_is_dropped_with_one_line_each() {
  new_key "$T/key"
  link_agent a a "$T/key" ", handshake_timeout = 0.3"
  link_agent b b "$T/key"
  local port n=0
  port=$(listen a)
  dial b "$port"
  wait_for 3 "b up" events_are a "up b"
  local fds
  fds=$(ls "/proc/${AGENT_PID[a]}/fd" | wc -l)

  # Random bytes: the first four make a length far over the pre-auth cap
  # (or, once in a million runs, a body without the magic).
  head -c 10000 /dev/urandom | timeout 2 socat - "TCP:127.0.0.1:$port" >/dev/null 2>&1
  n=$((n + 1)); wait_for 2 "garbage dropped" log_has a "$DROPPED" $n
  # A length header alone.
  printf '\x07\x5b\xcd\x15' | timeout 2 socat - "TCP:127.0.0.1:$port" >/dev/null 2>&1
  n=$((n + 1)); wait_for 2 "oversized frame dropped" log_has a "$DROPPED" $n
  log_has a "link from 127\.0\.0\.1:[0-9]+: frame of 123456789 bytes over the 4096-byte limit, dropped$" \
    || fail "no oversized-frame line"
  # A connection that never says anything.
  exec 5<>"/dev/tcp/127.0.0.1/$port"
  n=$((n + 1)); wait_for 2 "silent connection dropped" log_has a "$DROPPED" $n
  exec 5<&-
  log_has a "link from 127\.0\.0\.1:[0-9]+: handshake timed out after 0\.3 s, dropped$" \
    || fail "no handshake-timeout line"
  # Half a header, then a stall mid-handshake.
  exec 5<>"/dev/tcp/127.0.0.1/$port"
  printf '\x00\x00' >&5
  n=$((n + 1)); wait_for 2 "stalled connection dropped" log_has a "$DROPPED" $n
  exec 5<&-
  # A port scanner: connect, close.
  exec 6<>"/dev/tcp/127.0.0.1/$port"
  exec 6<&-
  n=$((n + 1)); wait_for 2 "scan dropped" log_has a "$DROPPED" $n
  log_has a "link from 127\.0\.0\.1:[0-9]+: closed by the peer before the handshake, dropped$" \
    || fail "no port-scan line"
  # Many of them: each leaves one line and nothing else behind.
  local i
  for i in $(seq 50); do
    exec 6<>"/dev/tcp/127.0.0.1/$port"
    printf '\x00\x00\x10\x01' >&6
    exec 6<&-
  done
  n=$((n + 50)); wait_for 3 "50 more lines" log_has a "$DROPPED" $n
  sleep 0.1
  expect_eq "$n" "$(log_count a "$DROPPED")" "one line per connection"
  expect_eq "$fds" "$(ls "/proc/${AGENT_PID[a]}/fd" | wc -l)" "a's descriptors"

  # a still serves, and its link to b never noticed.
  expect_eq 2 "$(ev a '1 + 1')" "eval on a"
  expect_eq "up b" "$(events a)" "a's events"
  expect_eq "1 1" "$(nlinks a) $(nlinks b)" "links"
  ev b 'assert(link.links()[1]:send("after the junk"))' >/dev/null
  wait_for 2 "a message after the junk" evals_to a 'print(got[1])' "after the junk"
  stop_all
}

test_link_killed_peer_goes_down_at_once() {
  link_pair
  local start=$(date +%s%N)
  kill -KILL "${AGENT_PID[b]}"
  wait "${AGENT_PID[b]}" 2>/dev/null
  unset "AGENT_PID[b]"
  wait_for 1 "a saw b down (a: $(events a))" last_event_matches a "^down b: closed by peer( \(connection reset\))?$"
  local ms=$(( ($(date +%s%N) - start) / 1000000 ))
  [ "$ms" -lt 1000 ] || fail "down took ${ms} ms"
  expect_eq 0 "$(nlinks a)" "links on a"
  stop_all
}

test_link_frozen_peer_is_dropped_once_its_queue_passes_the_cap() {
  link_pair
  kill -STOP "${AGENT_PID[b]}"
  # 1 MiB messages until the queue passes 64 MiB (the kernel's socket
  # buffers take a few MiB first).
  local out
  out=$(ev a 'local l, big = link.links()[1], ("x"):rep(1 << 20)
              for i = 1, 200 do
                local ok, err = l:send(big)
                if not ok then return err end
              end
              return "never refused"')
  expect_match '^"ENOBUFS: the peer reads too slowly \(64 MiB queued\); link dropped' "$out" "the send that passed the cap"
  wait_for 2 "a's down" events_are a "up b|down b: peer too slow: 64 MiB queued"
  expect_eq 0 "$(nlinks a)" "links on a"
  kill -CONT "${AGENT_PID[b]}"
  wait_for 3 "b's down" last_event_matches b "^down a: closed by peer"
  stop_all
}

test_link_close_shutdown_and_failed_dials() {
  link_pair
  ev b 'link.links()[1]:close("maintenance")' >/dev/null
  wait_for 2 "a's down" events_are a "up b|down b: closed by peer: maintenance"
  wait_for 2 "b's down" events_are b "up a|down a: closed locally: maintenance"
  # The peer's words reach our log as one line.
  dial b "$PORT_A"
  wait_for 2 "up again" last_event_is a "up b"
  ev b 'link.links()[1]:close("two\nlines")' >/dev/null
  wait_for 2 "a's down" last_event_is a "down b: closed by peer: two?lines"
  ev a '_G.ev_log = { "up b", "down b: closed by peer: maintenance" }' >/dev/null
  # A closed link refuses to send, with an error, not a raise.
  expect_eq "nil EPIPE: link closed: Broken pipe EPIPE" "$(ev b 'local l = link.dial("127.0.0.1", '"$PORT_A"')
      l:close() print(l:send(1))' | tr '\t' ' ')" "send on a closed link"

  # Without a reason.
  dial b "$PORT_A"
  wait_for 2 "up again" events_are a "up b|down b: closed by peer: maintenance|up b"
  ev a 'link.links()[1]:close()' >/dev/null
  wait_for 2 "b's down without a reason" last_event_is b "down a: closed by peer"
  expect_eq "down b: closed locally" "$(ev a 'print(ev_log[#ev_log])')" "a's down without a reason"

  dial b "$PORT_A"
  wait_for 2 "up a third time" last_event_is a "up b"
  # shutdown: no callback on this side; the peer hears why.
  ev a '_G.ev_log = {} link.shutdown()' >/dev/null
  wait_for 2 "b's down after a's shutdown" last_event_is b "down a: closed by peer: shutting down"
  sleep 0.1
  expect_eq "" "$(events a)" "a's events after shutdown"
  expect_eq 0 "$(nlinks a)" "a's links after shutdown"
  # The listener went with it: a dial now fails, through failed.
  ev b '_G.ev_log = {}' >/dev/null
  dial b "$PORT_A"
  wait_for 2 "b's failed dial" events_are b "failed: cannot connect: ECONNREFUSED: Connection refused"
  # Dialling our own listener (a seed list naming this node) fails once,
  # clearly, without a warning on either end.
  local pb
  pb=$(listen b)
  ev b '_G.ev_log = {}' >/dev/null
  dial b "$pb"
  wait_for 2 "b's dial of itself" events_are b "failed: connected to itself (127.0.0.1:$pb is this node's address)"
  expect_eq 0 "$(log_count b "$DROPPED")" "warnings on b"
  expect_match "call link.init first" "$(ev a 'link.dial("127.0.0.1", 1)' 2>&1)" "dial after shutdown"
  expect_match "^EINVAL: 'localhost' is not a numeric IP address" \
    "$(ev b 'print(select(2, link.dial("localhost", 1)))')" "a host name"
  stop_all
}
