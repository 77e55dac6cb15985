#!/usr/bin/env bash
# pogo against supervisord, s6, runit and PM2, side by side, 200 children of
# `sleep` each: cold start, kill -9 to replacement, stop all, memory. Then
# pogo-only figures: memory slope, idle CPU with 1,000 children, spawn rate
# of 2,000.
#
#   RUNS=5          runs per supervisor (medians are over runs)
#   KILLS=50        kill -9 per run (p50/p99 are over all runs' kills pooled)
#   SLOW_KILLS=10   kill -9 per run for supervisord and s6 (about 1 s each:
#                   supervisord's 1 s loop, s6-supervise's 1 s respawn delay)
#   PEERS="supervisord s6 runit pm2"   peers to compare (pogo is always run)
#   POGO=./pogo
#
# Every figure comes from /proc, never from a supervisor's own status: each
# supervisor runs `sleep <unique duration>` and bench/supervisors/probe.c (a
# small C program compiled into the temp dir) counts the processes whose
# argv is exactly that. Peers run as temporary instances in a temp dir
# (their own config, socket, scan dir, PM2_HOME) and are torn down on exit.
# Peers come from `make bench-deps`; a missing one shows as n/a.
set -u
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
KILLS=${KILLS:-50}
SLOW_KILLS=${SLOW_KILLS:-10}
PEERS=${PEERS-"supervisord s6 runit pm2"}
N=200
POGO=$(realpath "${POGO:-./pogo}")
PM2=$PWD/bench/supervisors/node/node_modules/.bin/pm2
T=$(mktemp -d /tmp/pogo-bench-sup.XXXXXX)
P=$T/probe
ACTIVE= DPID= D=
ALL_PEERS="pogo $PEERS"

say() { echo "$*" >&2; }

# A marker per supervisor: `sleep 9<pid><k>` is unique to this bench run.
declare -A MARK=([pogo]=9$$1 [supervisord]=9$$2 [s6]=9$$3 [runit]=9$$4 [pm2]=9$$5
                 [pogo1000]=9$$6 [pogo2000]=9$$7 [floor]=9$$8)

cleanup() {
  trap - EXIT INT TERM
  [ -x "$P" ] || { rm -rf "$T"; return; }
  [ -n "$ACTIVE" ] && teardown "$ACTIVE" >/dev/null 2>&1
  local f m
  for f in "$T"/snap.*; do [ -e "$f" ] && "$P" reap "$f" >/dev/null; done
  "$P" sweep "$T" >/dev/null
  for m in "${MARK[@]}"; do
    "$P" snap 0 "$m" >"$T/left" 2>/dev/null && "$P" reap "$T/left" >/dev/null
  done
  rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cc -O2 -std=c11 -Wall -Wextra -o "$P" bench/supervisors/probe.c || { echo "supervisors: cannot build the probe"; exit 1; }

# ---------------------------------------------------------------- peers
# prepare_X writes the config into $D (not timed); launch_X starts the
# supervisor in the background and sets DPID when it can; stop_X is the
# command timed for "stop all"; teardown_X stops what is left.

prepare_pogo() { # n marker
  mkdir -p "$D/children" "$D/logs"
  cat >"$D/node.lua" <<EOF
return { name = "bench", control = "$D/bench.sock", children = "$D/children",
         log_dir = "$D/logs", log = { level = "warn" } }
EOF
  echo "local t = {} for i = 1, $1 do t[i] = { id = \"s\" .. i, cmd = { \"sleep\", \"$2\" } } end return t" \
    >"$D/children/bench.lua"
}
launch_pogo() { "$POGO" agent -c "$D/node.lua" >>"$D/agent.err" 2>&1 & DPID=$!; }
stop_pogo() { echo kill -TERM "$DPID"; }
teardown_pogo() { kill -TERM "$DPID" 2>/dev/null; gone "$DPID" 15; }

prepare_supervisord() {
  mkdir -p "$D/logs"
  {
    printf '[unix_http_server]\nfile=%s/sup.sock\n\n' "$D"
    printf '[supervisord]\nlogfile=%s/supervisord.log\npidfile=%s/supervisord.pid\nchildlogdir=%s/logs\nloglevel=warn\nuser=root\n\n' "$D" "$D" "$D"
    printf '[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n'
    printf '[supervisorctl]\nserverurl=unix://%s/sup.sock\n\n' "$D"
    for i in $(seq "$1"); do printf '[program:s%d]\ncommand=sleep %s\nautorestart=true\n\n' "$i" "$2"; done
  } >"$D/supervisord.conf"
}
launch_supervisord() { supervisord -n -c "$D/supervisord.conf" >>"$D/err" 2>&1 & DPID=$!; }
stop_supervisord() { echo kill -TERM "$DPID"; }
teardown_supervisord() { kill -TERM "$DPID" 2>/dev/null; gone "$DPID" 30; }

service_dirs() { # dir n marker: one run script per child
  for i in $(seq "$2"); do
    mkdir -p "$1/s$i"
    printf '#!/bin/sh\nexec sleep %s\n' "$3" >"$1/s$i/run"
    chmod +x "$1/s$i/run"
  done
}
prepare_s6() { service_dirs "$D/scan" "$@"; }
launch_s6() { s6-svscan "$D/scan" >>"$D/err" 2>&1 & DPID=$!; }
stop_s6() { echo kill -TERM "$DPID"; }       # s6-svscan: SIGTERM = s6-svscanctl -t
teardown_s6() { kill -TERM "$DPID" 2>/dev/null; gone "$DPID" 15; }

prepare_runit() { service_dirs "$D/sv" "$@"; }
launch_runit() { runsvdir "$D/sv" >>"$D/err" 2>&1 & DPID=$!; }
stop_runit() { echo sv down "$D"/sv/*; }     # runsvdir has no "stop all and exit"
teardown_runit() {
  # SIGHUP: runsvdir sends each runsv a TERM (exit once the service is down)
  # and exits; stopping runsv first would only make runsvdir respawn it
  sv down "$D"/sv/* >/dev/null 2>&1
  kill -HUP "$DPID" 2>/dev/null; gone "$DPID" 15
}

prepare_pm2() {
  mkdir -p "$D/pm2"
  cat >"$D/ecosystem.config.js" <<EOF
module.exports = { apps: Array.from({ length: $1 }, (_, i) => ({
  name: "s" + (i + 1), script: "$(command -v sleep)", args: "$2",
  interpreter: "none", exec_mode: "fork", autorestart: true })) };
EOF
}
pm2c() { PM2_HOME="$D/pm2" "$PM2" "$@"; }
launch_pm2() { pm2c start "$D/ecosystem.config.js" >>"$D/err" 2>&1 & DPID=; }
stop_pm2() { echo env PM2_HOME="$D/pm2" "$PM2" kill; }
teardown_pm2() {
  timeout 60 env PM2_HOME="$D/pm2" "$PM2" kill >/dev/null 2>&1
  [ -n "$DPID" ] && { kill -TERM "$DPID" 2>/dev/null; gone "$DPID" 10; }
}
pm2_daemon() { [ -s "$D/pm2/pm2.pid" ] && DPID=$(cat "$D/pm2/pm2.pid"); }

available() { # prints the reason a peer cannot run, if any
  case $1 in
    pogo) [ -x "$POGO" ] || echo "no $POGO (make pogo)" ;;
    supervisord) command -v supervisord >/dev/null || echo "supervisord missing (make bench-deps)" ;;
    s6) command -v s6-svscan >/dev/null || echo "s6 missing (make bench-deps)" ;;
    runit) { command -v runsvdir && command -v sv; } >/dev/null || echo "runit missing (make bench-deps)" ;;
    pm2) { [ -x "$PM2" ] && command -v node >/dev/null; } || echo "PM2 missing (make bench-deps)" ;;
  esac
}

# ---------------------------------------------------------------- helpers
gone() { # pid seconds: wait until the pid is gone (or a zombie), reap it if ours
  local i st
  for ((i = 0; i < $2 * 20; i++)); do
    st=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || break
    [ "$st" = Z ] && break
    sleep 0.05
  done
  wait "$1" 2>/dev/null
  [ ! -e "/proc/$1" ] || [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" = Z ]
}
teardown() { teardown_"$1"; }
count() { "$P" count "${MARK[$1]}"; }
wait_count() { # peer n seconds
  local i
  for ((i = 0; i < $3 * 20; i++)); do [ "$(count "$1")" -eq "$2" ] && return 0; sleep 0.05; done
  return 1
}
sup_pids() { "$P" tree "$DPID" "$1"; }   # the supervisor's processes, children left out
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR) print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }
pct() { sort -g | awk -v p="$1" '{ a[NR] = $1 } END { if (NR) { i = int(NR * p + 0.999999); if (i < 1) i = 1; print a[i] } }'; }
rec() { echo "$3" >>"$T/r.$1.$2"; }          # peer metric value
note() { echo "$1: $2" >>"$T/notes"; say "  ! $1: $2"; }

# One run of one supervisor with $N children: start, memory, kills, stop.
run_peer() { # peer run
  local p=$1 m=${MARK[$1]} t0 v k
  D=$T/$p.$2; mkdir -p "$D"; DPID=
  prepare_"$p" "$N" "$m"
  ACTIVE=$p
  t0=$EPOCHREALTIME
  launch_"$p"
  if ! v=$("$P" up "$N" "$m" 60 "$t0"); then
    note "$p" "run $2: only $(count "$p") of $N running after 60 s"
    [ "$p" = pm2 ] && pm2_daemon
    teardown "$p" >/dev/null 2>&1; ACTIVE=; return 1
  fi
  rec "$p" start "$v"
  [ "$p" = pm2 ] && { sleep 0.5; pm2_daemon; }
  if [ -z "$DPID" ] || [ ! -e "/proc/$DPID" ]; then
    note "$p" "run $2: no supervisor process to measure"
    teardown "$p" >/dev/null 2>&1; ACTIVE=; return 1
  fi
  sleep 1   # let it settle (supervisord's startsecs, PM2's bookkeeping)
  "$P" snap "$DPID" "$m" >"$T/snap.$p.$2"
  local pids; pids=$(sup_pids "$m")
  read -r rss pss <<<"$("$P" mem $pids)"
  rec "$p" rss "$rss"; rec "$p" pss "$pss"
  rec "$p" procs "$(echo "$pids" | wc -w)"
  k=$KILLS; case $p in supervisord|s6) k=$SLOW_KILLS ;; esac
  "$P" kill "$m" "$k" 20 5 >"$T/k.$p.$2"
  grep -v timeout "$T/k.$p.$2" >>"$T/kills.$p"
  v=$(grep -c timeout "$T/k.$p.$2"); [ "$v" -gt 0 ] && note "$p" "run $2: $v of $k kills not replaced within 5 s"
  wait_count "$p" "$N" 10 || note "$p" "run $2: $(count "$p") of $N running 10 s after the kills"
  "$P" snap "$DPID" "$m" >>"$T/snap.$p.$2"
  # shellcheck disable=SC2046
  if v=$("$P" down "$m" 60 -- $(stop_"$p")); then rec "$p" stop "$v"
  else note "$p" "run $2: children still running 60 s after the stop command"; fi
  sleep 0.3
  v=$(count "$p"); [ "$v" -gt 0 ] && note "$p" "run $2: $v children running again after stop"
  teardown "$p" >/dev/null 2>&1 || note "$p" "run $2: supervisor still there after teardown"
  ACTIVE=
  for ((k = 0; k < 100; k++)); do [ "$("$P" incwd "$D")" -eq 0 ] && break; sleep 0.05; done
  v=$(( $("$P" reap "$T/snap.$p.$2") + $("$P" sweep "$D") ))
  [ "$v" -gt 0 ] && note "$p" "run $2: $v processes left behind after teardown (killed)"
  rm -rf "$D"
  return 0
}

# ---------------------------------------------------------------- side by side
declare -A NA
for p in $ALL_PEERS; do r=$(available "$p"); [ -n "$r" ] && NA[$p]=$r; done
say "supervisors: $N children, $RUNS runs, $KILLS kills/run ($SLOW_KILLS for supervisord, s6); peers: $PEERS"
load() { echo "load average $(cut -d' ' -f1-3 /proc/loadavg)$(awk '/^some/ { sub("avg60=", "", $3); printf ", CPU pressure %s%% (avg60)", $3 }' /proc/pressure/cpu 2>/dev/null)"; }
say "  $(nproc) cores, $(load) at start: other load skews every column"
for run in $(seq "$RUNS"); do
  for p in $ALL_PEERS; do
    [ -n "${NA[$p]:-}" ] && continue
    say "  run $run/$RUNS: $p"
    run_peer "$p" "$run"
    sleep 0.5
  done
done

# ---------------------------------------------------------------- pogo only
# These run in this shell (never in $(...): the agent would hold the pipe).
pogo_many() { # label n: start n children, leave "start_s rss_kb pss_kb agent_cpu_ticks" in $R; the agent keeps running
  local m=${MARK[$1]} t0 v c
  D=$T/$1; rm -rf "$D"; mkdir -p "$D"; prepare_pogo "$2" "$m"; ACTIVE=pogo
  t0=$EPOCHREALTIME; launch_pogo
  v=$("$P" up "$2" "$m" 120 "$t0") || { note pogo "$2 children: only $(count "$1") running after 120 s"; pogo_stop "$1"; return 1; }
  c=$("$P" cpu "$DPID")
  sleep 1
  "$P" snap "$DPID" "$m" >"$T/snap.$1"
  R="$v $("$P" mem $(sup_pids "$m")) $c"
}
pogo_stop() { # label: stop the agent, leave the stop time in $R
  R=$("$P" down "${MARK[$1]}" 60 -- kill -TERM "$DPID") || R=
  teardown_pogo >/dev/null 2>&1; ACTIVE=
  "$P" reap "$T/snap.$1" >/dev/null; "$P" sweep "$D" >/dev/null; rm -rf "$D"
}
pogo_kills() { # label: 30 kills with many children, pooled into kills.LABEL
  "$P" kill "${MARK[$1]}" 30 20 5 | grep -v timeout >>"$T/kills.$1"
}

HZ=$(getconf CLK_TCK)
if [ -z "${NA[pogo]:-}" ]; then
  say "  pogo: 1,000 children (memory slope, idle CPU)"
  if pogo_many pogo1000 1000; then
    read -r s1000 rss1000 pss1000 _ <<<"$R"
    pids=$(sup_pids "${MARK[pogo1000]}")
    sleep 1   # 2 s after the last start: nothing left to do
    c0=$("$P" cpu $pids); w0=$("$P" wake $pids); t0=$EPOCHREALTIME; sleep 10
    c1=$("$P" cpu $pids); w1=$("$P" wake $pids); t1=$EPOCHREALTIME
    idle=$(awk -v c=$((c1 - c0)) -v hz="$HZ" -v w=$((w1 - w0)) -v dt="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
      'BEGIN { printf "%d ms CPU in %.1f s (%.2f%% of a core; tick %d ms), %d wake-up(s)", c * 1000 / hz, dt, c / hz / dt * 100, 1000 / hz, w }')
    n1000=$(count pogo1000)
    pogo_kills pogo1000
    pogo_stop pogo1000; st1000=$R
  fi
  for i in $(seq "$RUNS"); do
    say "  pogo: 2,000 children, run $i/$RUNS"
    pogo_many pogo2000 2000 || break
    r=$R
    [ "$i" = 1 ] && pogo_kills pogo2000
    pogo_stop pogo2000
    echo "$r $R" >>"$T/r.pogo.2000"
  done
  say "  floor: a C loop spawning $N sleeps"
  for i in $(seq "$RUNS"); do "$P" spawn "$N" "${MARK[floor]}" >>"$T/r.floor.start" || break; done
fi

# ---------------------------------------------------------------- report
value() { # peer metric -> median over runs (or pooled percentile for kills)
  local f
  case $2 in
    kill50) f=$T/kills.$1; [ -s "$f" ] && pct 0.50 <"$f" ;;
    kill99) f=$T/kills.$1; [ -s "$f" ] && pct 0.99 <"$f" ;;
    *) f=$T/r.$1.$2; [ -s "$f" ] && median <"$f" ;;
  esac
}
fmt() { # metric value
  case $1 in
    start|stop) awk -v v="$2" 'BEGIN { printf (v < 1 ? "%.0f ms" : "%.2f s"), (v < 1 ? v * 1000 : v) }' ;;
    kill50|kill99) awk -v v="$2" 'BEGIN { printf (v < 10000 ? "%.2f ms" : "%.0f ms"), v / 1000 }' ;;
    rss|pss) awk -v v="$2" 'BEGIN { printf "%.1f MB", v / 1024 }' ;;
    procs) printf '%d' "$2" ;;
  esac
}
METRICS="start kill50 kill99 stop rss pss procs"
declare -A LABEL=([start]="cold start, $N running" [kill50]="kill -9 -> replacement p50"
  [kill99]="kill -9 -> replacement p99" [stop]="stop all $N" [rss]="supervisor RSS, $N children"
  [pss]="supervisor PSS, $N children" [procs]="supervisor processes")
declare -A NAME=([pogo]=pogo [supervisord]=supervisord [s6]=s6 [runit]=runit [pm2]=PM2)

printf '\n%-30s' "metric (median of $RUNS runs)"
for p in $ALL_PEERS; do printf ' | %-22s' "${NAME[$p]}"; done
printf '\n%s' "------------------------------"
for p in $ALL_PEERS; do printf -- '-+-%s' "----------------------"; done
echo
for mt in $METRICS; do
  printf '%-30s' "${LABEL[$mt]}"
  base=$(value pogo "$mt")
  for p in $ALL_PEERS; do
    if [ -n "${NA[$p]:-}" ]; then cell="n/a"
    else
      v=$(value "$p" "$mt")
      if [ -z "$v" ]; then cell="n/a (failed, see notes)"
      else
        cell=$(fmt "$mt" "$v")
        if [ "$p" != pogo ] && [ -n "$base" ] && [ "$mt" != procs ]; then
          cell="$cell ($(awk -v a="$v" -v b="$base" 'BEGIN { if (b > 0) printf "x%.1f", a / b; else printf "x-" }'))"
        fi
      fi
    fi
    printf ' | %-22s' "$cell"
  done
  echo
done
echo "(xN: the peer's figure over pogo's; above 1 means pogo is faster or smaller)"
for p in $ALL_PEERS; do [ -n "${NA[$p]:-}" ] && echo "n/a ${NAME[$p]}: ${NA[$p]}"; done
for p in $ALL_PEERS; do
  [ -s "$T/kills.$p" ] && printf '%s: %d kills measured (max %s). ' "${NAME[$p]}" "$(wc -l <"$T/kills.$p")" "$(fmt kill99 "$(sort -g "$T/kills.$p" | tail -1)")"
done
echo
cat <<'EOF'
Stop commands: pogo, supervisord, s6: SIGTERM to the daemon (stops every child, then exits);
runit: `sv down` on every service (runsvdir has no stop-and-exit); PM2: `pm2 kill`.
Memory: the supervisor's process tree without the children (pogo: agent + watchdog; s6/runit:
svscan/runsvdir + one supervise process per child; PM2: its daemon). PSS shares common pages fairly.
EOF

echo
echo "pogo only:"
goal() { awk -v v="$1" -v g="$2" 'BEGIN { print (v <= g ? "ok" : "MISSED") }'; }
v=$(value pogo start); [ -n "$v" ] && echo "  cold start $N: $(fmt start "$v") (goal <= 500 ms: $(goal "$v" 0.5)); floor, a C loop spawning $N: $(fmt start "$(value floor start)")"
v=$(value pogo kill50); w=$(value pogo kill99)
[ -n "$v" ] && echo "  kill -> replacement: p50 $(fmt kill50 "$v") (goal <= 5 ms: $(goal "$v" 5000)), p99 $(fmt kill99 "$w") (goal <= 20 ms: $(goal "$w" 20000))"
v=$(value pogo stop); [ -n "$v" ] && echo "  stop all $N: $(fmt stop "$v") (goal <= 100 ms: $(goal "$v" 0.1))"
rss200=$(value pogo rss)
if [ -n "$rss200" ]; then
  echo "  memory (agent + watchdog RSS): $N children $(fmt rss "$rss200") (goal <= $(awk -v n=$N 'BEGIN { printf "%.1f MB", (5 * 1024 + 16 * n) / 1024 }'): $(goal "$rss200" $((5 * 1024 + 16 * N))))"
fi
if [ -n "${rss1000:-}" ]; then
  echo "    1,000 children: $(fmt rss "$rss1000") (goal <= $(awk 'BEGIN { printf "%.1f MB", (5 * 1024 + 16 * 1000) / 1024 }'): $(goal "$rss1000" $((5 * 1024 + 16 * 1000))))"
  [ -n "$rss200" ] && echo "    slope 200 -> 1,000: $(awk -v a="$rss200" -v b="$rss1000" 'BEGIN { printf "%.1f KB", (b - a) / 800 }') per child (goal <= 16 KB)"
  echo "  idle, agent + watchdog with $n1000 children running: $idle"
  echo "  1,000 children: all running in $(fmt start "$s1000") ($(awk -v s="$s1000" 'BEGIN { printf "%.0f", 1000 / s }')/s), stop all in ${st1000:+$(fmt stop "$st1000")}"
fi
if [ -s "$T/r.pogo.2000" ]; then
  s=$(awk '{ print $1 }' "$T/r.pogo.2000" | median)
  r2000=$(awk '{ print $2 }' "$T/r.pogo.2000" | median)
  c2000=$(awk '{ print $4 }' "$T/r.pogo.2000" | median)
  st=$(awk '$5 != "" { print $5 }' "$T/r.pogo.2000" | median)
  echo "  spawn 2,000: all running in $(fmt start "$s") = $(awk -v s="$s" 'BEGIN { printf "%.0f", 2000 / s }') children/s (median of $(wc -l <"$T/r.pogo.2000") runs; agent CPU $(awk -v c="$c2000" -v hz="$HZ" 'BEGIN { printf "%.2f s", c / hz }')); RSS $(fmt rss "$r2000"); stop all 2,000: ${st:+$(fmt stop "$st")}"
fi
for l in pogo1000:1,000 pogo2000:2,000; do
  f=$T/kills.${l%%:*}
  [ -s "$f" ] && echo "  kill -9 -> replacement with ${l#*:} children: p50 $(fmt kill50 "$(pct 0.5 <"$f")"), p99 $(fmt kill99 "$(pct 0.99 <"$f")") ($(wc -l <"$f") kills)"
done
echo "machine: $(nproc) cores, $(load) at the end"
if [ -s "$T/notes" ]; then echo; echo "notes:"; sed 's/^/  /' "$T/notes"; fi
exit 0
