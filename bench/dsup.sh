#!/usr/bin/env bash
# Distributed supervisor benchmarks (lua/pogo/dsup.lua): start latency,
# many children from cold, failover after kill -9 and SIGSTOP, a node
# joining (moves, duplicates, gaps) and the global view. Prints one table:
# median and p99 (by nearest rank) of every metric with its goal.
#
# Method. Every agent runs bench/dsup/monitor.lua (sent with pogo eval):
# a pg monitor on pogo.running, one member per instance whose value.s is
# its state, that timestamps with require("pogo.core.sys").monotonic()
# (CLOCK_MONOTONIC, the clock the script reads through perl) when it
# first sees a "ready" instance of each child, and, for a watch over a set
# of ids, when every id had a "ready" instance (optionally not counting one
# node), which ids had two (duplicates) and whether one had none (a gap).
# "Visible on every node" is the latest of the nodes' timestamps minus the
# time taken just before the command (or signal) that caused it. The
# children are a copy of sleep under the bench's temporary directory.
#
# Environment:
#   STARTS=50      single starts timed (section start)
#   COLD_RUNS=3    clusters started with COLD_N children (section cold)
#   COLD_N=1000
#   BIG_N=10000    children of the big run on BIG_NODES nodes (section big)
#   BIG_NODES=5
#   FAIL_RUNS=3    runs of each failover benchmark (kill -9, SIGSTOP)
#   FAIL_N=900     children on the 3 nodes of a failover run
#   JOIN_RUNS=2    a 5th node joining 4 nodes with JOIN_N children
#   JOIN_N=1000
#   VIEW_N=5000    children on 5 nodes for the global view (section view),
#                  started 500 at a time
#   VIEW_RUNS=20   timings of the global view, inside the agent and by pogo ps
#   ONLY=a,b       run some sections only: start, cold, big, failover, join, view
#
# Every agent (with its watchdog) and every child is killed on exit.
set -u
cd "$(dirname "$0")/.." || exit 1
POGO=$(realpath "${POGO:-./pogo}")
STARTS=${STARTS:-50}
COLD_RUNS=${COLD_RUNS:-3}
COLD_N=${COLD_N:-1000}
BIG_N=${BIG_N:-10000}
BIG_NODES=${BIG_NODES:-5}
FAIL_RUNS=${FAIL_RUNS:-3}
FAIL_N=${FAIL_N:-900}
JOIN_RUNS=${JOIN_RUNS:-2}
JOIN_N=${JOIN_N:-1000}
VIEW_N=${VIEW_N:-5000}
VIEW_RUNS=${VIEW_RUNS:-20}
ONLY=${ONLY:-start,cold,big,failover,join,view}

[ -x "$POGO" ] || { echo "bench/dsup.sh: no pogo binary at $POGO (run make)" >&2; exit 1; }
command -v perl >/dev/null || { echo "bench/dsup.sh: needs perl (Time::HiRes)" >&2; exit 1; }

T=$(mktemp -d /tmp/pogo-bench-dsup.XXXXXX)
mkdir -p "$T/run" "$T/logs" "$T/samples" "$T/bin"
NOTES=()
CHILD=$T/bin/dsleep
cp "$(command -v sleep)" "$CHILD" || exit 1
. bench/dsup/lib.sh
trap dsup_teardown EXIT
trap 'exit 130' INT TERM
copy_pogo
"$POGO" keygen "$T/cluster.key" >/dev/null || exit 1

note "$("$POGO" version 2>/dev/null), $(nproc) cores, load average at start $(load)"

# ---- 1. one start until visible on every node ---------------------------------------------

if want start; then
  note "start: $STARTS single starts on 3 nodes"
  if cluster_up 3; then
    for i in $(seq "$STARTS"); do
      echo "return { id = \"s-$i\", cmd = \"$CHILD 100000\" }" >"$T/s$i.lua"
      n=${NODES[$(( (i - 1) % 3 ))]}   # the request goes to n1, n2, n3 in turn
      read -r t0 t1 st < <(timed "$T/out" "$POGO" start -s "$T/$n.sock" --file "$T/s$i.lua" --wait -t 5)
      [ "$st" = 0 ] || NOTES+=("start s-$i: pogo start --wait failed: $(cat "$T/out" "$T/out.err")")
      echo "s-$i $t0 $t1" >>"$T/starts"
      sleep 0.05
    done
    sleep 0.2
    for n in "${NODES[@]}"; do
      ev "$n" 'local o = {} for id, t in pairs(B.first) do if id:match("^s%-") then o[#o + 1] = string.format("%s %.6f", id, t) end end print(table.concat(o, "\n"))'
    done >"$T/seen"
    awk -v out="$T/samples/start_cli" -v nn=3 '
      NR == FNR { t0[$1] = $2; t1[$1] = $3; next }
      { if (!($1 in last) || $2 > last[$1]) last[$1] = $2; seen[$1]++ }
      END {
        for (id in t0) {
          printf "%.6f\n", t1[id] - t0[id] >> out
          if (seen[id] < nn) { missing++; continue }
          printf "%.6f\n", last[id] - t0[id]
        }
        if (missing) printf "start: %d children not seen ready on every node\n", missing > "/dev/stderr"
      }' "$T/starts" "$T/seen" | sample start_all
  else
    NOTES+=("start: the 3-node cluster did not form")
  fi
  down_all
fi

# ---- 2. many children from cold ---------------------------------------------------------------

# cold K N NAME [--wait] - a K-node cluster, N children started with one
# pogo start --file (to n1); samples the time until every node saw all of
# them ready (NAME) and the time pogo start took to answer (NAME_cli).
cold() {
  local k=$1 n=$2 name=$3 wait=${4:-} secs=$(( 20 + $2 / 250 )) t0 t1 st last
  cluster_up "$k" || { NOTES+=("$name: the $k-node cluster did not form"); down_all; return; }
  CAP=$(( n * 3 / 2 + 20 ))   # no runaway of duplicates on a shared machine
  spec "$T/c.lua" c- "$n"
  arm c- "$n" "" "${NODES[@]}"
  if [ -n "$wait" ]; then
    read -r t0 t1 st < <(timed "$T/out" "$POGO" start -s "$T/n1.sock" --file "$T/c.lua" --wait -t "$secs")
  else
    read -r t0 t1 st < <(timed "$T/out" "$POGO" start -s "$T/n1.sock" --file "$T/c.lua")
  fi
  [ "$st" = 0 ] || NOTES+=("$name: pogo start failed: $(head -c 300 "$T/out.err")")
  since "$t0" "$t1" | sample "${name}_cli"
  if wait_cover "$secs" "${NODES[@]}"; then
    last=$(latest "${NODES[@]}")
    since "$t0" "$last" | sample "$name"
    for x in "${NODES[@]}"; do
      echo "$x $(ev "$x" "local c = 0 for _, r in ipairs(pogo.sup.children()) do if r.id:match('^c%-') then c = c + 1 end end return c")"
    done | tr '\n' ' ' | sed "s/^/$name: children per node: /" >"$T/spread"
    note "  $(cat "$T/spread")"
  else
    NOTES+=("$name: not all $n children ready on every node: $WHY (children lacking, as each node sees it: $(for x in "${NODES[@]}"; do echo -n "$x $(field "$x" 2 2>/dev/null || echo '?') "; done); most processes under each agent at once: $(peaks))")
    NOTES+=("$name: what the agents logged: $(head -c 20000000 -q "$T"/n*.log | cut -c26- | cut -d: -f1-2 | sed 's/[0-9][0-9.]*/N/g' | sort | uniq -c | sort -rn | head -5 | tr -s ' ' | tr '\n' ';')")
  fi
  CAP=
  down_all
}

if want cold; then
  note "cold: $COLD_RUNS x $COLD_N children on 3 nodes, then once with --wait"
  for r in $(seq "$COLD_RUNS"); do cold 3 "$COLD_N" cold; done
  cold 3 "$COLD_N" coldwait --wait
fi
if want big; then
  note "big: $BIG_N children on $BIG_NODES nodes"
  cold "$BIG_NODES" "$BIG_N" big
fi

# ---- 3. failover --------------------------------------------------------------------------------

# failover MODE SIGNAL - FAIL_RUNS times: FAIL_N children on 3 nodes, signal
# n3, time until n1 and n2 both see every child ready on n1 or n2.
failover() {
  local mode=$1 sig=$2 r t0 tc had last
  for r in $(seq "$FAIL_RUNS"); do
    cluster_up 3 || { NOTES+=("failover/$mode: the cluster did not form"); down_all; return; }
    spec "$T/f.lua" f- "$FAIL_N"
    arm f- "$FAIL_N" "" n1 n2 n3
    "$POGO" start -s "$T/n1.sock" --file "$T/f.lua" >/dev/null
    if ! wait_cover 60 n1 n2 n3; then
      NOTES+=("failover/$mode run $r: the $FAIL_N children did not all start"); down_all; continue
    fi
    sleep 0.5
    had=$(ev n1 'local c = 0 for id, m in pairs(B.inst) do if id:match("^f%-") and m.n3 == "ready" then c = c + 1 end end return c')
    echo "$had" | sample "fail_${mode}_held"
    arm f- "$FAIL_N" n3 n1 n2
    t0=$(signal_at "$sig" "${PID[n3]}")
    [ "$mode" = kill ] && { { wait "${PID[n3]}"; } 2>/dev/null; unset 'PID[n3]'; }
    if wait_for 15 covered n1 n2; then
      last=$(latest n1 n2)
      since "$t0" "$last" | sample "fail_$mode"
    else
      NOTES+=("failover/$mode run $r: n1/n2 still lack $(field n1 2)/$(field n2 2) of n3's $had children after 15 s")
    fi
    if [ "$mode" = stop ]; then
      # n3 comes back with its children still running: duplicates, until
      # one side stops its copy
      arm f- "$FAIL_N" "" n1
      tc=$(signal_at CONT "${PID[n3]}")
      if wait_for 15 bash -c "[ \"\$('$POGO' eval -s '$T/n1.sock' 'B.w.dup_ids > 0 and B.w.dups == 0 and B.quiet() > 0.5')\" = true ]"; then
        since "$tc" "$(field n1 6)" | sample fail_cont_dups
        field n1 4 | sample fail_cont_dup_ids
      else
        NOTES+=("failover/stop run $r: after SIGCONT, n1 saw $(field n1 4) duplicated children, $(field n1 3) still duplicated after 15 s")
      fi
    fi
    down_all
  done
}

if want failover; then
  note "failover: kill -9, $FAIL_RUNS runs of $FAIL_N children"; failover kill KILL
  note "failover: SIGSTOP, $FAIL_RUNS runs of $FAIL_N children"; failover stop STOP
fi

# ---- 4. a node joins ------------------------------------------------------------------------------

if want join; then
  note "join: a 5th node joins 4 with $JOIN_N children, $JOIN_RUNS runs"
  for r in $(seq "$JOIN_RUNS"); do
    cluster_up 4 || { NOTES+=("join: the cluster did not form"); down_all; continue; }
    spec "$T/j.lua" j- "$JOIN_N"
    arm j- "$JOIN_N" "" "${NODES[@]}"
    "$POGO" start -s "$T/n1.sock" --file "$T/j.lua" >/dev/null
    if ! wait_cover 60 "${NODES[@]}"; then
      NOTES+=("join run $r: the $JOIN_N children did not all start"); down_all; continue
    fi
    wait_for 10 bash -c "[ \"\$('$POGO' eval -s '$T/n1.sock' 'B.quiet() > 1')\" = true ]"
    ev n1 'print(B.where("j-"))' | sort >"$T/where0"
    arm j- "$JOIN_N" "" "${NODES[@]}"   # every id covered now: gaps count from here
    node_up n5
    if wait_up 20 5 n1 n5 &&
        wait_for 30 bash -c "[ \"\$('$POGO' eval -s '$T/n1.sock' 'B.w.dups == 0 and B.quiet() > 1.5')\" = true ]"; then
      t0=$(cat "$T/n5.t0")
      ev n1 'print(B.where("j-"))' | sort >"$T/where1"
      read -r moved to5 nowhere < <(join "$T/where0" "$T/where1" |
        awk '$2 != $3 { m++ } $3 == "n5" { f++ } $3 == "-" { z++ } END { print m + 0, f + 0, z + 0 }')
      awk -v m="$moved" -v n="$JOIN_N" 'BEGIN { printf "%.6f\n", m / n }' | sample join_frac
      awk -v m="$moved" -v n="$JOIN_N" 'BEGIN { printf "%.6f\n", m / (n / 5) }' | sample join_ratio
      [ "$moved" -ne "$to5" ] && NOTES+=("join run $r: $((moved - to5)) of the $moved moved children went to an old node, not n5")
      [ "$nowhere" -gt 0 ] && NOTES+=("join run $r: $nowhere children ready nowhere at the end")
      read -r _ _ _ dup_ids dup_first dup_last dup_sum dup_max _ < <(ev n1 'B.report()' | tr -d '"')
      if [ "$dup_ids" -gt 0 ]; then
        since "$t0" "$dup_last" | sample join_settle
        since "$dup_first" "$dup_last" | sample join_dup_window
        awk -v s="$dup_sum" -v n="$dup_ids" 'BEGIN { printf "%.6f\n", s / n }' | sample join_dup_mean
        echo "$dup_max" | sample join_dup_max
      else
        NOTES+=("join run $r: no duplicates seen on n1 ($moved moved)")
      fi
      gaps=0
      for x in n1 n2 n3 n4; do
        read -r _ _ _ _ _ _ _ _ miss miss_at miss_id < <(ev "$x" 'B.report()' | tr -d '"')
        [ "$miss" -gt 0 ] && NOTES+=("join run $r: $x saw up to $miss children with no ready instance at once (first: $miss_id, $(since "$t0" "$miss_at") s after n5 started)")
        [ "$miss" -gt "$gaps" ] && gaps=$miss
      done
      echo "$gaps" | sample join_gaps
    else
      NOTES+=("join run $r: n5 did not join, or the moves did not settle within 30 s")
    fi
    down_all
  done
fi

# ---- 5. the global view ------------------------------------------------------------------------------

if want view; then
  note "view: $VIEW_N children on 5 nodes, $VIEW_RUNS timings"
  if cluster_up 5; then
    CAP=$(( VIEW_N * 3 / 2 + 20 ))
    # in batches of 500: one request for thousands of children stalls the
    # agents for seconds and runs away (see the cold/big section)
    arm v- "$VIEW_N" "" "${NODES[@]}"
    for from in $(seq 1 500 "$VIEW_N"); do
      to=$((from + 499)); [ "$to" -gt "$VIEW_N" ] && to=$VIEW_N
      spec "$T/v.lua" v- "$to" "$from"
      "$POGO" start -s "$T/n1.sock" --file "$T/v.lua" >/dev/null
      wait_for 20 bash -c "[ \"\$('$POGO' eval -s '$T/n1.sock' 'B.w.zero <= $((VIEW_N - to))')\" = true ]" || break
    done
    if wait_cover 90 "${NODES[@]}"; then
      sleep 1
      ev n2 "
        local sys = require 'pogo.core.sys'
        local rows
        for _ = 1, $VIEW_RUNS do
          local t = sys.monotonic()
          rows = pogo.sup.children{ global = true }
          print(string.format('%.6f', sys.monotonic() - t))
        end
        _G.BENCH_ROWS = #rows" | sample view_lua
      # what pogo start --wait does for each id it waits for, every 10 ms
      ev n2 "
        local sys = require 'pogo.core.sys'
        for _ = 1, $VIEW_RUNS do
          local t = sys.monotonic()
          pogo.sup.children{ global = true, match = '^v%-17\$' }
          print(string.format('%.6f', sys.monotonic() - t))
        end" | sample view_match
      rows=$(ev n2 'BENCH_ROWS')
      [ "$rows" = "$VIEW_N" ] || NOTES+=("view: pogo.sup.children{global=true} had $rows rows, not $VIEW_N")
      for _ in $(seq "$VIEW_RUNS"); do
        read -r t0 t1 st < <(timed "$T/ps.json" "$POGO" ps -s "$T/n2.sock" --global --json)
        since "$t0" "$t1" | sample view_ps
      done
      got=$(grep -o '"id":' "$T/ps.json" | wc -l)
      [ "$got" = "$VIEW_N" ] || NOTES+=("view: pogo ps --global --json printed $got rows, not $VIEW_N")
      note "  pogo ps --global --json: $(wc -c <"$T/ps.json") bytes"
    else
      NOTES+=("view: the $VIEW_N children did not all start: $WHY (most processes under each agent: $(peaks))")
    fi
  else
    NOTES+=("view: the 5-node cluster did not form")
  fi
  CAP=
  down_all
fi

# ---- the table ------------------------------------------------------------------------------------------
if want start; then
  metric "start -> ready on all 3 nodes (pogo start --file)" start_all 1000 1 " ms" "p50 <= 20 ms" median "<=" 20
  metric "  pogo start --wait answers" start_cli 1000 1 " ms" "-" "" "" ""
fi
if want cold; then
  metric "$COLD_N children from cold, 3 nodes, all ready" cold 1000 0 " ms" "<= 2000 ms" p99 "<=" 2000
  metric "  pogo start --file answers (no --wait)" cold_cli 1000 0 " ms" "-" "" "" ""
  metric "  with --wait: pogo start answers" coldwait_cli 1000 0 " ms" "-" "" "" ""
  metric "  with --wait: all ready on all nodes" coldwait 1000 0 " ms" "-" "" "" ""
fi
if want big; then
  metric "$BIG_N children from cold, $BIG_NODES nodes, all ready" big 1 2 " s" "report" "" "" ""
  metric "  pogo start --file answers (no --wait)" big_cli 1 2 " s" "-" "" "" ""
fi
if want failover; then
  metric "failover, kill -9 of a node: all ready elsewhere" fail_kill 1000 0 " ms" "<= 1000 ms" p99 "<=" 1000
  metric "  children the killed node held" fail_kill_held 1 0 "" "~300" "" "" ""
  metric "failover, SIGSTOP of a node: all ready elsewhere" fail_stop 1000 0 " ms" "<= 3000 ms" p99 "<=" 3000
  metric "  children the stopped node held" fail_stop_held 1 0 "" "~300" "" "" ""
  metric "  SIGCONT -> last duplicate gone" fail_cont_dups 1000 0 " ms" "-" "" "" ""
  metric "  children duplicated after SIGCONT" fail_cont_dup_ids 1 0 "" "-" "" "" ""
fi
if want join; then
  metric "join 4 -> 5 nodes, $JOIN_N children: moved" join_frac 100 1 " %" "ideal 20 %" "" "" ""
  metric "  moved / ideal (1/5)" join_ratio 1 2 "x" "<= 1.15x" p99 "<=" 1.15
  metric "  n5 start -> last duplicate gone" join_settle 1000 0 " ms" "-" "" "" ""
  metric "  duplicates: first start -> last end" join_dup_window 1000 0 " ms" "-" "" "" ""
  metric "  duplicate time per moved child, mean" join_dup_mean 1000 1 " ms" "-" "" "" ""
  metric "  duplicate time per moved child, max" join_dup_max 1000 1 " ms" "-" "" "" ""
  metric "  most children with no ready instance at once" join_gaps 1 0 "" "0" p99 "<=" 0
fi
if want view; then
  metric "global view of $VIEW_N: pogo.sup.children{global=true}" view_lua 1000 1 " ms" "<= 50 ms" median "<=" 50
  metric "  pogo ps --global --json, end to end" view_ps 1000 0 " ms" "-" "" "" ""
  metric "  one id: children{global=true, match=ID}" view_match 1000 1 " ms" "-" "" "" ""
fi

echo
echo "dsup benchmarks: $(nproc) cores, load average now $(load); medians and p99 (nearest rank) over n samples"
print_table
for line in "${NOTES[@]}"; do echo "note: $line"; done
exit 0
