#!/usr/bin/env bash
# Cluster layer benchmarks (issue 4): failure detection, false alarms under
# load and loss, pg replication latency, a late joiner's snapshot, and a
# 50-agent cluster on this machine. Prints one table: median and p99 (by
# nearest rank) of every metric with its goal.
#
# Environment:
#   RUNS=20        runs of each detection benchmark and rounds of pg joins
#   PG_JOINS=50    joins per round of the pg latency benchmark
#   SNAP_RUNS=10   late joiners receiving the 100,000-member snapshot
#   SNAP_MEMBERS=100000
#   MESH_RUNS=3    50-agent clusters formed
#   MESH_NODES=50
#   SOAK=300       seconds of the false-alarm soak (SOAK=60 for a quick run)
#   LOSS=5         % of TCP packets dropped on every link during the soak
#   ONLY=a,b       run some sections only: detect, pg, snapshot, soak, mesh
#
# Timestamps: the agents record require("pogo.core.sys").monotonic()
# (CLOCK_MONOTONIC) in callbacks; the script reads the same clock through
# perl, so times taken in different processes compare. Every agent, busy
# loop and the network namespace are removed on exit.
set -u
cd "$(dirname "$0")/.." || exit 1
POGO=$(realpath "${POGO:-./pogo}")
RUNS=${RUNS:-20}
PG_JOINS=${PG_JOINS:-50}
SNAP_RUNS=${SNAP_RUNS:-10}
SNAP_MEMBERS=${SNAP_MEMBERS:-100000}
MESH_RUNS=${MESH_RUNS:-3}
MESH_NODES=${MESH_NODES:-50}
SOAK=${SOAK:-300}
LOSS=${LOSS:-5}
ONLY=${ONLY:-detect,pg,snapshot,soak,mesh}

[ -x "$POGO" ] || { echo "bench/cluster.sh: no pogo binary at $POGO (run make)" >&2; exit 1; }
command -v perl >/dev/null || { echo "bench/cluster.sh: needs perl (Time::HiRes)" >&2; exit 1; }

T=$(mktemp -d /tmp/pogo-bench-cluster.XXXXXX)
mkdir -p "$T/run" "$T/logs" "$T/samples"
. bench/cluster/lib.sh
trap teardown EXIT
trap 'exit 130' INT TERM
copy_pogo
"$POGO" keygen "$T/cluster.key" >/dev/null || exit 1

NOTES=()

note "$("$POGO" version 2>/dev/null), $(nproc) cores, load average at start $(load)"
others=$(pgrep -x pogo | wc -l)
[ "$others" -gt 0 ] && NOTES+=("$others other pogo process(es) were running when the bench started (other sessions)")

# Lua run in an observer: record every "down" event with the time it fired.
OBSERVE='
_G.BENCH = _G.BENCH or {}
local sys = require "pogo.core.sys"
BENCH.down = {}
if not BENCH.cancel_down then
  BENCH.cancel_down = pogo.cluster.on("down", function(n, reason)
    BENCH.down[#BENCH.down + 1] = string.format("%s %.6f %s", n.name, sys.monotonic(), tostring(reason))
  end)
end
return true'
DOWNS='for _, d in ipairs(BENCH.down) do print(d) end'

# down_at NAME PEER - the time NAME saw PEER go down (first event), if any.
down_at() { ev "$1" "$DOWNS" | awk -v p="$2" '$1 == p { print $2; exit }'; }
has_down() { [ -n "$(down_at "$1" "$2")" ]; }

# ---- 1. failure detection ----------------------------------------------------------

# detect MODE SIGNAL - RUNS times: signal c in a 3-node cluster, time until
# a and b both fire "down" for it; then bring c back.
detect() {
  local mode=$1 sig=$2 base r t0 ta tb
  base=$(port_base 10)
  write_cfg a "127.0.0.1:$((base + 1))"
  write_cfg b "127.0.0.1:$((base + 2))" "127.0.0.1:$((base + 1))"
  write_cfg c "127.0.0.1:$((base + 3))" "127.0.0.1:$((base + 1))"
  start a; start b; start c
  wait_up 15 3 a b c || { NOTES+=("detect/$mode: the 3-node cluster did not form"); stop_all; return; }
  for r in $(seq "$RUNS"); do
    ev a "$OBSERVE" >/dev/null; ev b "$OBSERVE" >/dev/null
    t0=$(signal_at "$sig" "${PID[c]}")
    # reap a killed agent at once, quietly (bash reports jobs killed by a signal)
    [ "$mode" = kill ] && { { wait "${PID[c]}"; } 2>/dev/null; unset 'PID[c]'; }
    if ! wait_for 10 has_down a c || ! wait_for 10 has_down b c; then
      NOTES+=("detect/$mode run $r: c not seen down within 10 s")
    else
      ta=$(down_at a c); tb=$(down_at b c)
      awk -v a="$ta" -v b="$tb" -v t="$t0" 'BEGIN { printf "%.6f\n", (a > b ? a : b) - t }' | sample "detect_$mode"
    fi
    # a and b must not lose each other meanwhile
    for n in a b; do
      ev "$n" "$DOWNS" | awk '$1 != "c"' | sed "s/^/detect\/$mode: $n saw down: /" >>"$T/false_alarms"
    done
    if [ "$mode" = stop ]; then
      local tc; tc=$(signal_at CONT "${PID[c]}")
    else
      start c "$T/c.t0"; local tc; tc=
    fi
    if wait_up 15 3 a b c; then
      [ -n "$tc" ] && awk -v t="$tc" -v now="$(mono)" 'BEGIN { printf "%.6f\n", now - t }' | sample "rejoin_$mode"
    else
      NOTES+=("detect/$mode run $r: c did not rejoin within 15 s"); break
    fi
    sleep 0.5
  done
  stop_all
}

if want detect; then
  note "detection: SIGSTOP, $RUNS runs"; detect stop STOP
  note "detection: kill -9, $RUNS runs"; detect kill KILL
fi

# ---- 2. pg join-to-visible latency ---------------------------------------------------

if want pg; then
  note "pg latency: $RUNS rounds of $PG_JOINS joins"
  base=$(port_base 10)
  write_cfg a "127.0.0.1:$((base + 1))"
  write_cfg b "127.0.0.1:$((base + 2))" "127.0.0.1:$((base + 1))"
  write_cfg c "127.0.0.1:$((base + 3))" "127.0.0.1:$((base + 1))"
  start a; start b; start c
  if wait_up 15 3 a b c; then
    for n in b c; do
      ev "$n" '
        _G.BENCH = { seen = {} }
        local sys = require "pogo.core.sys"
        BENCH.cancel = pogo.pg.monitor("bench", "lat", function(e)
          if e.op == "join" then BENCH.seen[e.key] = sys.monotonic() end
        end)
        return true' >/dev/null
    done
    for r in $(seq "$RUNS"); do
      # one join every 10 ms from a timer in a, so that every join starts
      # from an idle loop (no batching with the previous one)
      ev a "
        local loop, sys = require 'pogo.core.loop', require 'pogo.core.sys'
        _G.BENCH = { sent = {} }
        local i, n, base = 0, $PG_JOINS, $r * 100000
        BENCH.timer = loop.timer(0.01, 0.01, function()
          i = i + 1
          if i > n then BENCH.timer:stop() BENCH.done = true return end
          local t = sys.monotonic()
          pogo.pg.join('bench', 'lat', base + i, { i = i })
          BENCH.sent[base + i] = t
        end)
        return true" >/dev/null
      wait_for 30 bash -c "[ \"\$('$POGO' eval -s '$T/a.sock' 'BENCH.done == true')\" = true ]" ||
        { NOTES+=("pg: round $r did not finish"); break; }
      sleep 0.05
      dump='for k, t in pairs(BENCH.%s) do if k > %d then print(string.format("%%d %%.6f", k, t)) end end'
      ev a "$(printf "$dump" sent $((r * 100000)))" >"$T/pg_sent"
      ev b "$(printf "$dump" seen $((r * 100000)))" >"$T/pg_b"
      ev c "$(printf "$dump" seen $((r * 100000)))" >"$T/pg_c"
      awk -v out="$T/samples/pg_peer" '
        FILENAME ~ /pg_sent$/ { s[$1] = $2; next }
        FILENAME ~ /pg_b$/ { b[$1] = $2; next }
        { c[$1] = $2 }
        END {
          for (k in s) {
            if (!(k in b) || !(k in c)) { missing++; continue }
            lb = b[k] - s[k]; lc = c[k] - s[k]
            printf "%.6f\n%.6f\n", lb, lc >> out
            printf "%.6f\n", (lb > lc ? lb : lc)
          }
          if (missing) printf "pg: %d joins not seen on both peers\n", missing > "/dev/stderr"
        }' "$T/pg_sent" "$T/pg_b" "$T/pg_c" | sample pg_all
    done
  else
    NOTES+=("pg: the 3-node cluster did not form")
  fi
  stop_all
fi

# ---- 3. a late joiner's snapshot ----------------------------------------------------------

if want snapshot; then
  note "snapshot: $SNAP_MEMBERS members, $SNAP_RUNS late joiners"
  base=$(port_base 10)
  write_cfg a "127.0.0.1:$((base + 1))"
  write_cfg b "127.0.0.1:$((base + 2))" "127.0.0.1:$((base + 1))"
  start a
  if wait_for 10 answers a; then
    t0=$(mono)
    ev a "for i = 1, $SNAP_MEMBERS do pogo.pg.join('snap', 'g' .. (i % 100), i, { pid = i }) end collectgarbage() return true" -t 300s >/dev/null
    awk -v t="$t0" -v now="$(mono)" -v n="$SNAP_MEMBERS" 'BEGIN { printf "%.6f\n", now - t }' | sample snap_fill
    note "  $SNAP_MEMBERS joins on a took $(awk -v t="$t0" -v now="$(mono)" 'BEGIN { printf "%.2f s", now - t }') (one eval), a's RSS $(awk '/VmRSS/ { printf "%.1f MiB", $2 / 1024 }' /proc/${PID[a]}/status)"
    # a 1 ms timer: the longest gap between its firings is the longest the loop was blocked
    STALL='
      _G.STALL = _G.STALL or {}
      local loop, sys = require "pogo.core.loop", require "pogo.core.sys"
      if STALL.t then STALL.t:stop() end
      local last = sys.monotonic()
      STALL.max = 0
      loop.busy()   -- from here on: the longest busy iteration, wall and CPU
      STALL.t = loop.timer(0.001, 0.001, function()
        local now = sys.monotonic()
        if now - last > STALL.max then STALL.max = now - last end
        last = now
        if STALL.want and not STALL.full and pogo.pg.count("snap") >= STALL.want then STALL.full = now end
      end)'
    for r in $(seq "$SNAP_RUNS"); do
      ev a "$STALL return true" >/dev/null
      start b "$T/b.t0"
      wait_for 10 answers b || { NOTES+=("snapshot run $r: b did not start"); break; }
      first=$(ev b "$STALL
        STALL.want = $SNAP_MEMBERS
        return pogo.pg.count('snap')")
      [ "$first" -ge "$SNAP_MEMBERS" ] 2>/dev/null && NOTES+=("snapshot run $r: complete before b could be asked (time is an upper bound)")
      if wait_for 60 bash -c "[ \"\$('$POGO' eval -s '$T/b.sock' 'STALL.full ~= nil')\" = true ]"; then
        tfull=$(ev b 'string.format("%.6f", STALL.full)' | tr -d '"')
        tup=$(ev b 'for _, x in ipairs(pogo.cluster.nodes()) do if x.name == "a" then return string.format("%.6f", x.since) end end' | tr -d '"')
        awk -v s="$(cat "$T/b.t0")" -v f="$tfull" 'BEGIN { printf "%.6f\n", f - s }' | sample snap_start
        awk -v u="$tup" -v f="$tfull" 'BEGIN { printf "%.6f\n", f - u }' | sample snap_up
        sleep 0.2
        ev a 'STALL.max' | sample snap_stall_a
        ev b 'STALL.max' | sample snap_stall_b
        BUSY='local b = require("pogo.core.loop").busy()
          return ("%.6f %.6f %.6f %s"):format(b.max_cpu_ms / 1000, b.max_gc_step_ms / 1000,
            b.slowest_call_ms / 1000, b.slowest_call:gsub(" ", "_"))'
        for n in a b; do
          read -r cpu gc call where < <(ev "$n" "$BUSY" | tr -d '"')
          echo "$cpu" | sample "snap_busy_$n"
          echo "$gc" | sample "snap_gc_$n"
          echo "$call" | sample "snap_call_$n"
          note "  run $r, $n: busiest iteration $(awk -v x="$cpu" 'BEGIN { printf "%.1f", x * 1000 }') ms CPU; slowest callback $(awk -v x="$call" 'BEGIN { printf "%.1f", x * 1000 }') ms: $where"
        done
      else
        NOTES+=("snapshot run $r: b did not get $SNAP_MEMBERS members within 60 s (has $(ev b "pogo.pg.count('snap')"))")
      fi
      stop b
      wait_for 10 sees_up a 1
    done
  else
    NOTES+=("snapshot: agent a did not start")
  fi
  stop_all
fi

# ---- 4. false alarms: busy CPUs and packet loss ------------------------------------------------

if want soak; then
  note "false alarms: ${SOAK}s soak, 2 busy loops, ${LOSS}% TCP loss on every link"
  if netns_start && "${NS_CMD[@]}" nft -f - <<'NFT'
table inet pogo_bench {
  chain out { type filter hook output priority 0; policy accept; }
}
NFT
  then
    base=$(port_base 2)
    write_cfg a "127.0.0.2:$base"
    write_cfg b "127.0.0.3:$base" "127.0.0.2:$base"
    write_cfg c "127.0.0.4:$base" "127.0.0.2:$base"
    start a; start b; start c
    if wait_up 15 3 a b c; then
      SUSPECTS='
        local loop = require "pogo.core.loop"
        BENCH.suspect, BENCH.was = 0, {}
        BENCH.poll = loop.timer(0.02, 0.02, function()
          for _, x in ipairs(pogo.cluster.nodes()) do
            if x.state == "suspect" and BENCH.was[x.name] ~= "suspect" then BENCH.suspect = BENCH.suspect + 1 end
            BENCH.was[x.name] = x.state
          end
        end)
        return true'
      for n in a b c; do ev "$n" "$OBSERVE" >/dev/null; ev "$n" "$SUSPECTS" >/dev/null; done
      "${NS_CMD[@]}" nft add rule inet pogo_bench out meta l4proto tcp numgen random mod 100 '<' "$LOSS" counter drop
      busy_start 2
      load_before=$(load)
      nap "$SOAK"
      load_after=$(load)
      busy_stop
      dropped=$("${NS_CMD[@]}" nft list chain inet pogo_bench out | awk '/counter/ { for (i = 1; i < NF; i++) if ($i == "packets") print $(i + 1) }')
      "${NS_CMD[@]}" nft flush chain inet pogo_bench out
      downs=0; suspects=0
      for n in a b c; do
        d=$(ev "$n" "$DOWNS" | tee -a "$T/soak_downs" | wc -l)
        s=$(ev "$n" 'BENCH.suspect')
        downs=$((downs + d)); suspects=$((suspects + ${s:-0}))
      done
      echo "$downs" | sample soak_down
      echo "$suspects" | sample soak_suspect
      NOTES+=("soak: ${dropped:-?} TCP packets dropped by the loss rule; load average $load_before at start, $load_after at the end")
      [ -s "$T/soak_downs" ] && while read -r line; do NOTES+=("soak down event: $line"); done <"$T/soak_downs"
      wait_up 15 3 a b c || NOTES+=("soak: the cluster was not whole again 15 s after the loss ended")
    else
      NOTES+=("soak: the 3-node cluster did not form in the namespace")
    fi
  else
    NOTES+=("soak: skipped, cannot create a network namespace with nftables here")
  fi
  stop_all
  netns_stop
fi

# ---- 5. a 50-agent cluster --------------------------------------------------------------------

if want mesh; then
  note "mesh: $MESH_RUNS clusters of $MESH_NODES agents"
  BYTES='local s = 0 for _, l in ipairs(require("pogo.core.link").links()) do s = s + l:stats().bytes_out end
         return string.format("%.6f %d %d", require("pogo.core.sys").monotonic(), s, #require("pogo.core.link").links())'
  for r in $(seq "$MESH_RUNS"); do
    base=$(port_base $((MESH_NODES + 2)))
    names=()
    for i in $(seq "$MESH_NODES"); do
      n=$(printf 'n%02d' "$i"); names+=("$n")
      if [ "$i" -eq 1 ]; then write_cfg "$n" "127.0.0.1:$((base + i))"
      else write_cfg "$n" "127.0.0.1:$((base + i))" "127.0.0.1:$((base + 1))"; fi
    done
    t0=$(mono)
    for n in "${names[@]}"; do start "$n"; done
    NOTES+=("mesh run $r: starting the $MESH_NODES processes took $(awk -v t="$t0" -v now="$(mono)" 'BEGIN { printf "%.2f s", now - t }') (included in the mesh time)")
    if wait_up 120 "$MESH_NODES" "${names[@]}"; then
      tdone=$(mono)
      # when each agent's view became whole: the latest "since" of its peers
      last=0
      for n in "${names[@]}"; do
        s=$(ev "$n" 'local m = 0 for _, x in ipairs(pogo.cluster.nodes()) do if not x.self and x.since > m then m = x.since end end return string.format("%.6f", m)' | tr -d '"')
        last=$(awk -v a="$last" -v b="$s" 'BEGIN { printf "%.6f\n", (b > a ? b : a) }')
      done
      awk -v t="$t0" -v l="$last" 'BEGIN { printf "%.6f\n", l - t }' | sample mesh_time
      awk -v t="$t0" -v l="$tdone" 'BEGIN { printf "%.6f\n", l - t }' | sample mesh_seen
      for n in "${names[@]}"; do ev "$n" "$OBSERVE" >/dev/null; done
      sleep 2
      for n in "${names[@]}"; do echo "$n $(ev "$n" "$BYTES" | tr -d '"')"; done >"$T/bytes1"
      hz=$(getconf CLK_TCK)
      for n in "${names[@]}"; do echo "$n $(cut -d' ' -f14,15 "/proc/${PID[$n]}/stat")"; done >"$T/cpu1"
      c0=$(mono); nap 10; c1=$(mono)
      for n in "${names[@]}"; do echo "$n $(cut -d' ' -f14,15 "/proc/${PID[$n]}/stat")"; done >"$T/cpu2"
      for n in "${names[@]}"; do echo "$n $(ev "$n" "$BYTES" | tr -d '"')"; done >"$T/bytes2"
      for n in "${names[@]}"; do awk '/VmRSS/ { print $2 / 1024 }' "/proc/${PID[$n]}/status"; done | sample mesh_rss
      awk -v hz="$hz" -v dt="$(awk -v a="$c0" -v b="$c1" 'BEGIN { print b - a }')" '
        NR == FNR { u[$1] = $2 + $3; next } { printf "%.4f\n", 100 * ($2 + $3 - u[$1]) / hz / dt }' \
        "$T/cpu1" "$T/cpu2" | sample mesh_cpu
      awk 'NR == FNR { t[$1] = $2; b[$1] = $3; next }
        { if ($4 != '"$((MESH_NODES - 1))"') bad++; printf "%.1f\n", ($3 - b[$1]) / ($2 - t[$1]) }
        END { if (bad) printf "mesh: %d agents had a link missing while sampling\n", bad > "/dev/stderr" }' \
        "$T/bytes1" "$T/bytes2" | sample mesh_bytes
      fa=0
      for n in "${names[@]}"; do fa=$((fa + $(ev "$n" "$DOWNS" | wc -l))); done
      [ "$fa" -gt 0 ] && NOTES+=("mesh run $r: $fa down event(s) while the 50-agent cluster was idle")
    else
      NOTES+=("mesh run $r: not every agent saw $MESH_NODES up within 120 s")
    fi
    stop_all
  done
fi

# ---- the table -----------------------------------------------------------------------------------
if want detect; then
  metric "detection: silent peer (SIGSTOP), 3 nodes" detect_stop 1000 0 " ms" "p99 <= 2000 ms" p99 "<=" 2000
  metric "detection: killed peer (kill -9), 3 nodes" detect_kill 1000 1 " ms" "p99 <= 100 ms" p99 "<=" 100
  metric "  rejoin after SIGCONT (until all see 3 up)" rejoin_stop 1000 0 " ms" "-" "" "" ""
fi
if want pg; then
  metric "pg join visible on all peers, 3 nodes" pg_all 1000 3 " ms" "p50 <= 1 ms" median "<=" 1
  metric "  pg join visible on one peer" pg_peer 1000 3 " ms" "-" "" "" ""
fi
if want snapshot; then
  metric "snapshot $SNAP_MEMBERS members: from joiner's start" snap_start 1000 0 " ms" "-" "" "" ""
  metric "snapshot $SNAP_MEMBERS members: from link up" snap_up 1000 0 " ms" "-" "" "" ""
  metric "  longest loop stall, sender (1 ms timer)" snap_stall_a 1000 1 " ms" "a few ms (<=5)" p99 "<=" 5
  metric "  longest loop stall, receiver (1 ms timer)" snap_stall_b 1000 1 " ms" "a few ms (<=5)" p99 "<=" 5
  metric "  longest busy iteration, sender (CPU time)" snap_busy_a 1000 1 " ms" "a few ms (<=5)" p99 "<=" 5
  metric "  longest busy iteration, receiver (CPU time)" snap_busy_b 1000 1 " ms" "a few ms (<=5)" p99 "<=" 5
  metric "    longest collector step, sender" snap_gc_a 1000 1 " ms" "-" "" "" ""
  metric "    longest collector step, receiver" snap_gc_b 1000 1 " ms" "-" "" "" ""
  metric "    slowest Lua callback, sender" snap_call_a 1000 1 " ms" "-" "" "" ""
  metric "    slowest Lua callback, receiver" snap_call_b 1000 1 " ms" "-" "" "" ""
fi
if want soak; then
  metric "false alarms: down events in ${SOAK}s, 3 nodes" soak_down 1 0 "" "0" p99 "<=" 0
  metric "  suspicions (cleared or not) in the soak" soak_suspect 1 0 "" "-" "" "" ""
fi
if want mesh; then
  metric "$MESH_NODES agents: full mesh from one seed" mesh_time 1 2 " s" "-" "" "" ""
  metric "  ... as polled (all report $MESH_NODES up)" mesh_seen 1 2 " s" "-" "" "" ""
  metric "$MESH_NODES agents: idle CPU per agent (% of a core)" mesh_cpu 1 2 " %" "-" "" "" ""
  metric "$MESH_NODES agents: RSS per agent" mesh_rss 1 1 " MiB" "-" "" "" ""
  metric "$MESH_NODES agents: heartbeat bytes/s sent per node" mesh_bytes 1 0 " B/s" "-" "" "" ""
fi

echo
echo "cluster benchmarks: $(nproc) cores, load average now $(load); medians and p99 (nearest rank) over n samples"
print_table
if [ -s "$T/false_alarms" ]; then
  while read -r line; do NOTES+=("$line"); done <"$T/false_alarms"
fi
for line in "${NOTES[@]}"; do echo "note: $line"; done
exit 0
