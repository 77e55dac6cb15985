# End-to-end tests of the cluster layer on loopback: real agents, real
# sockets, real keys.

test_five_nodes_form_a_full_mesh_from_one_seed() {
  start_node a 1
  for n in b c d e; do :; done
  start_node b 2 1; start_node c 3 1; start_node d 4 1; start_node e 5 1
  wait_up 10 5 a b c d e
  local out; out=$("$POGO" members -s "$T/c.sock")
  for n in a b c d e; do expect_match "$n" "$out" "pogo members lists $n"; done
  expect_match "NAME +ADDRESS +STATE +INCARNATION +RTT +TAGS" "$out"
  # every node has a link to every other (full mesh, one link per pair)
  for n in a b c d e; do
    expect_eq 4 "$(ev $n '#require("pogo.core.link").links()')" "links of $n"
  done
}

test_seeds_down_at_start_are_retried() {
  start_node b 2 1           # its seed (a) is not there yet
  sleep 0.5
  start_node a 1
  wait_up 10 2 a b
}

test_metadata_is_advertised() {
  start_node a 1 -- 'tags = { "web", "ssd" }' 'weight = 3'
  start_node b 2 1
  wait_up 10 2 a b
  expect_eq '{ "web", "ssd" }' "$(ev b 'for _, x in ipairs(pogo.cluster.nodes()) do if x.name == "a" then return x.meta.tags end end')"
  expect_eq 3 "$(ev b 'for _, x in ipairs(pogo.cluster.nodes()) do if x.name == "a" then return x.meta.weight end end')"
}

test_process_groups_replicate_joins_and_leaves() {
  start_node a 1; start_node b 2 1; start_node c 3 1
  wait_up 10 3 a b c
  ev b 'pogo.pg.join("jobs", "workers", "w1", { cpu = 2 })' >/dev/null
  for n in a b c; do
    wait_for 5 "$n sees b's member" bash -c "[ \"\$('$POGO' eval -s '$T/$n.sock' '#pogo.pg.members(\"jobs\", \"workers\")')\" = 1 ]"
  done
  expect_eq '{ cpu = 2 }' "$(ev c 'pogo.pg.members("jobs", "workers")[1].value')" "the value travels"
  expect_eq '"b"' "$(ev a 'pogo.pg.members("jobs", "workers")[1].node')"
  ev b 'pogo.pg.leave("jobs", "workers", "w1")' >/dev/null
  for n in a c; do
    wait_for 5 "$n sees the leave" bash -c "[ \"\$('$POGO' eval -s '$T/$n.sock' '#pogo.pg.members(\"jobs\", \"workers\")')\" = 0 ]"
  done
  local out; out=$("$POGO" groups -s "$T/a.sock")
  expect_match "SCOPE +GROUP +NODE +KEY +VALUE" "$out"
}

test_a_late_joiner_gets_the_snapshot() {
  start_node a 1
  ev a 'for i = 1, 3000 do pogo.pg.join("s", "g" .. (i % 7), i, i) end' >/dev/null
  start_node b 2 1
  wait_up 10 2 a b
  wait_for 10 "b has all 3000 members" bash -c "[ \"\$('$POGO' eval -s '$T/b.sock' 'local n = 0 for _, g in ipairs(pogo.pg.groups(\"s\")) do n = n + #pogo.pg.members(\"s\", g) end return n')\" = 3000 ]"
}

test_a_killed_node_and_its_members_vanish_at_once() {
  start_node a 1; start_node b 2 1; start_node c 3 1
  wait_up 10 3 a b c
  ev c 'pogo.pg.join("s", "g", "k", 1)' >/dev/null
  wait_for 5 "a sees c's member" bash -c "[ \"\$('$POGO' eval -s '$T/a.sock' '#pogo.pg.members(\"s\", \"g\")')\" = 1 ]"
  local t0; t0=$(date +%s%N)
  kill -KILL "${AGENT_PID[c]}"; wait "${AGENT_PID[c]}" 2>/dev/null; unset 'AGENT_PID[c]'
  wait_for 2 "a sees c down" bash -c "[ \"\$('$POGO' eval -s '$T/a.sock' '#pogo.pg.members(\"s\", \"g\")')\" = 0 ]"
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  wait_up 2 2 a b
  echo "members of a killed node gone after ${ms} ms"
  [ $ms -lt 1000 ] || fail "took ${ms} ms"
}

test_a_restarted_node_comes_back_with_a_new_incarnation() {
  start_node a 1; start_node b 2 1
  wait_up 10 2 a b
  local inc1; inc1=$(ev a 'for _, x in ipairs(pogo.cluster.nodes()) do if x.name == "b" then return x.incarnation end end')
  stop_agent b
  start_agent b
  wait_up 10 2 a b
  local inc2; inc2=$(ev a 'for _, x in ipairs(pogo.cluster.nodes()) do if x.name == "b" then return x.incarnation end end')
  [ "$inc1" != "$inc2" ] || fail "incarnation did not change ($inc1)"
}

test_a_frozen_node_is_declared_down_within_2s_and_rejoins() {
  start_node a 1; start_node b 2 1; start_node c 3 1
  wait_up 10 3 a b c
  kill -STOP "${AGENT_PID[c]}"
  local t0; t0=$(date +%s%N)
  wait_for 3 "a sees c down" bash -c "[ \"\$('$POGO' eval -s '$T/a.sock' 'for _, x in ipairs(pogo.cluster.nodes()) do if x.name == \"c\" then return x.state end end')\" != '\"up\"' ]"
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  echo "frozen node declared down after ${ms} ms"
  [ $ms -lt 2000 ] || fail "detection took ${ms} ms"
  wait_up 3 2 a b
  kill -CONT "${AGENT_PID[c]}"
  wait_up 10 3 a b c
}

test_wrong_key_is_refused_with_one_line() {
  start_node a 1
  new_key "$T/other.key"
  write_config x "listen = \"127.0.0.1:$((PORT_BASE + 9))\"" "secret_file = \"$T/other.key\"" "seeds = { \"127.0.0.1:$((PORT_BASE + 1))\" }"
  start_agent x
  wait_for 5 "a logs the wrong key" grep -q "wrong cluster key" "$T/a.log"
  sleep 0.5
  expect_eq 1 "$(up_count a)" "a's view"
  expect_eq 1 "$(up_count x)" "x's view"
}

test_junk_and_port_scans_are_dropped_and_nothing_else_changes() {
  start_node a 1; start_node b 2 1
  wait_up 10 2 a b
  local port=$((PORT_BASE + 1))
  head -c 5000 /dev/urandom | socat -t1 - "TCP:127.0.0.1:$port" >/dev/null 2>&1
  printf 'POGO\xff\xff\xff\xff' | socat -t1 - "TCP:127.0.0.1:$port" >/dev/null 2>&1
  printf '\x7f\xff\xff\xff' | socat -t1 - "TCP:127.0.0.1:$port" >/dev/null 2>&1
  socat -u /dev/null "TCP:127.0.0.1:$port" 2>/dev/null
  sleep 0.3
  wait_up 2 2 a b
  expect_eq "2" "$(ev a '1+1')" "a still serves"
}

test_duplicate_node_name_is_refused_on_both_sides() {
  start_node a 1; start_node b 2 1
  wait_up 10 2 a b
  write_config b2 'name = "b"' "listen = \"127.0.0.1:$((PORT_BASE + 3))\"" "secret_file = \"$T/cluster.key\"" "seeds = { \"127.0.0.1:$((PORT_BASE + 1))\" }"
  start_agent b2
  wait_for 5 "a refuses the second b" grep -q "already in use" "$T/a.log"
  wait_for 5 "the newcomer logs the refusal" grep -q "already in use" "$T/b2.log"
  expect_eq '"up"' "$(ev a 'for _, x in ipairs(pogo.cluster.nodes()) do if x.name == "b" then return x.state end end')"
}

test_key_rotation_keeps_the_cluster_up() {
  start_node a 1; start_node b 2 1; start_node c 3 1
  wait_up 10 3 a b c
  # every node gets a new primary key, one at a time; links stay up
  cp "$T/cluster.key" "$T/old.key"
  "$POGO" keygen --rotate "$T/cluster.key" >/dev/null
  for n in a b c; do kill -HUP "${AGENT_PID[$n]}"; done
  sleep 0.5
  wait_up 5 3 a b c
  # a newcomer holding only the new key joins
  head -1 "$T/cluster.key" >"$T/new-only.key"; chmod 600 "$T/new-only.key"
  write_config d "listen = \"127.0.0.1:$((PORT_BASE + 4))\"" "secret_file = \"$T/new-only.key\"" "seeds = { \"127.0.0.1:$((PORT_BASE + 1))\" }"
  start_agent d
  wait_up 10 4 a b c d
  # the old key is retired: a node holding only it is refused
  write_config e "listen = \"127.0.0.1:$((PORT_BASE + 5))\"" "secret_file = \"$T/old.key\"" "seeds = { \"127.0.0.1:$((PORT_BASE + 1))\" }"
  head -1 "$T/cluster.key" >"$T/k2"; chmod 600 "$T/k2"; mv "$T/k2" "$T/cluster.key"
  for n in a b c; do kill -HUP "${AGENT_PID[$n]}"; done
  sleep 0.3
  start_agent e
  wait_for 5 "the old key refused" grep -q "wrong cluster key" "$T/a.log" "$T/b.log" "$T/c.log" "$T/d.log"
  wait_up 5 4 a b c d
}
