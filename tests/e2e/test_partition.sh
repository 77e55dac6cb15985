# Partition tests with real network isolation: every agent in one private
# network namespace on its own 127.0.0.x address, nftables rules dropping
# packets between addresses. Skipped (exit 77) where namespaces are refused.

test_a_node_cut_off_is_detected_and_resyncs_after_the_heal() {
  netns_start
  ns_node a 1; ns_node b 2 1; ns_node c 3 1
  wait_up 10 3 a b c
  ev c 'pogo.pg.join("s", "g", "from-c", 1)' >/dev/null
  wait_for 5 "a sees c's member" bash -c "[ \"\$('$POGO' eval -s '$T/a.sock' '#pogo.pg.members(\"s\", \"g\")')\" = 1 ]"
  local t0; t0=$(date +%s%N)
  for x in 1 2; do net_cut 3 $x; done
  wait_up 4 2 a b
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  echo "cut-off node detected after ${ms} ms"
  [ $ms -lt 2500 ] || fail "detection took ${ms} ms"
  wait_up 4 1 c
  wait_for 2 "c's members gone on a's side" bash -c "[ \"\$('$POGO' eval -s '$T/a.sock' '#pogo.pg.members(\"s\", \"g\")')\" = 0 ]"
  ev c 'pogo.pg.join("s", "g", "during-cut", 2)' >/dev/null
  net_heal
  wait_up 15 3 a b c
  wait_for 5 "a re-synced c's members" bash -c "[ \"\$('$POGO' eval -s '$T/a.sock' '#pogo.pg.members(\"s\", \"g\")')\" = 2 ]"
}

# A cannot reach B, both reach C. The rule: the greater name of the broken
# pair (b) is excluded by everyone until the pair can talk again.
test_a_non_transitive_cut_settles_on_one_view_and_heals() {
  netns_start
  ns_node a 1; ns_node b 2 1; ns_node c 3 1
  wait_up 10 3 a b c
  net_cut 1 2
  wait_for 6 "a and c agree on {a, c}" bash -c "
    [ \"\$('$POGO' eval -s '$T/a.sock' 'local t = {} for _, x in ipairs(pogo.cluster.nodes()) do if x.state == \"up\" then t[#t+1] = x.name end end return table.concat(t, \",\")')\" = '\"a,c\"' ] &&
    [ \"\$('$POGO' eval -s '$T/c.sock' 'local t = {} for _, x in ipairs(pogo.cluster.nodes()) do if x.state == \"up\" then t[#t+1] = x.name end end return table.concat(t, \",\")')\" = '\"a,c\"' ]"
  wait_up 5 1 b
  # stable: still the same view a while later
  sleep 1.5
  wait_up 1 2 a c
  net_heal
  wait_up 15 3 a b c
}

test_one_way_loss_settles_and_heals() {
  netns_start
  ns_node a 1; ns_node b 2 1; ns_node c 3 1
  wait_up 10 3 a b c
  net_drop 1 2           # a's packets to b are lost; b's to a arrive
  wait_for 6 "a and c agree on {a, c}" bash -c "
    [ \"\$('$POGO' eval -s '$T/c.sock' 'local t = {} for _, x in ipairs(pogo.cluster.nodes()) do if x.state == \"up\" then t[#t+1] = x.name end end return table.concat(t, \",\")')\" = '\"a,c\"' ]"
  wait_up 5 2 a c
  net_heal
  wait_up 15 3 a b c
}
