#!/usr/bin/env bash
# Scale (issue 7): AGENTS agents on 127.0.0.1 ports, one seed, CHILDREN
# children in all. One cluster is formed (n = 1 for its times); the
# per-agent rows are the distribution over its agents.
#
#   mesh      time from the first start to the full mesh (every agent's
#             latest peer "up"), agents started WAVE at a time, each wave
#             all up before the next starts
#   idle      per-agent CPU (% of a core), RSS and cluster bytes sent per
#             second over IDLE seconds, before the children and with them
#   start     one spec file of CHILDREN children (`pogo start --file` to the
#             seed) until every id runs in exactly one real process: the
#             children are a copy of sleep under the bench's directory,
#             counted in /proc by bench/scale/count.pl (POGO_CHILD_ID in
#             their environment)
#   failover  kill -9 of the agent holding the number of children closest to
#             CHILDREN / AGENTS, until every one of its ids runs again under
#             a live agent (and no id twice)
#
# Environment: AGENTS=100 CHILDREN=10000 WAVE=25 IDLE=10 START_SECS=600
# (how long the children may take to start; the failover needs them all).
# CHILDREN=0: the mesh and the idle cluster only. The start is abandoned
# (every agent killed) once the children's processes pass 1.5 x CHILDREN or
# the agents hold half the memory that was free.
#
# Every agent, watchdog and child is killed on exit (bench/dsup/lib.sh).
set -u
cd "$(dirname "$0")/.." || exit 1
POGO=$(realpath "${POGO:-./pogo}")
AGENTS=${AGENTS:-100}
CHILDREN=${CHILDREN:-10000}
WAVE=${WAVE:-25}
IDLE=${IDLE:-10}
START_SECS=${START_SECS:-600}

[ -x "$POGO" ] || { echo "bench/scale.sh: no pogo binary at $POGO (run make)" >&2; exit 1; }
command -v perl >/dev/null || { echo "bench/scale.sh: needs perl (Time::HiRes)" >&2; exit 1; }

T=$(mktemp -d /tmp/pogo-bench-scale.XXXXXX)
mkdir -p "$T/run" "$T/logs" "$T/samples" "$T/bin"
NOTES=()
CHILD=$T/bin/scale-sleep
cp "$(command -v sleep)" "$CHILD" || exit 1
. bench/dsup/lib.sh
trap dsup_teardown EXIT
trap 'exit 130' INT TERM
copy_pogo
"$POGO" keygen "$T/cluster.key" >/dev/null || exit 1

# Every agent holds a link per peer and two pipes per child.
ulimit -n "$(ulimit -Hn)" 2>/dev/null
want_pids=$((CHILDREN + 4 * AGENTS + 1000))
[ "$(cat /proc/sys/kernel/pid_max)" -lt "$want_pids" ] &&
  NOTES+=("kernel.pid_max $(cat /proc/sys/kernel/pid_max) is below the $want_pids processes this bench may need")
[ "$(ulimit -u)" != unlimited ] && [ "$(ulimit -u)" -lt "$want_pids" ] &&
  NOTES+=("ulimit -u $(ulimit -u) is below the $want_pids processes this bench may need")

note "$("$POGO" version 2>/dev/null), $(nproc) cores, load average at start $(load)"
others=$(pgrep -x pogo | wc -l)
[ "$others" -gt 0 ] && NOTES+=("$others other pogo process(es) were running when the bench started (other sessions)")

# count [-p | -i PPID | AGENT_PID...] - bench/scale/count.pl over our children.
count() {
  local mode=()
  case ${1:-} in -p) mode=(-p); shift ;; -i) mode=(-i); shift ;; esac
  perl bench/scale/count.pl "${mode[@]}" "$CHILD" "$@"
}
exact() { [ "$(count | cut -d' ' -f1,2)" = "$CHILDREN $CHILDREN" ]; }   # each id in one process
# agents_kb - the resident memory of every agent, in KiB, summed.
agents_kb() {
  local n s=0 kb
  for n in "${!PID[@]}"; do
    kb=$(awk '/VmRSS/ { print $2 }' "/proc/${PID[$n]}/status" 2>/dev/null)
    s=$((s + ${kb:-0}))
  done
  echo "$s"
}
live_agents() { local n; for n in "${!PID[@]}"; do echo "${PID[$n]}"; done; }

# ---- the mesh ----------------------------------------------------------------------

base=$(port_base $((AGENTS + 2)))
names=()
for i in $(seq "$AGENTS"); do
  n=$(printf 'n%03d' "$i"); names+=("$n")
  if [ "$i" -eq 1 ]; then write_cfg "$n" "127.0.0.1:$((base + i))"
  else write_cfg "$n" "127.0.0.1:$((base + i))" "127.0.0.1:$((base + 1))"; fi
done

note "mesh: $AGENTS agents, $WAVE at a time"
t0=$(mono)
formed=1
for ((w = 0; w < AGENTS; w += WAVE)); do
  wave=("${names[@]:w:WAVE}")
  for n in "${wave[@]}"; do start "$n"; done
  upto=$((w + ${#wave[@]}))
  wait_up 120 "$upto" "${names[@]:0:upto}" || { formed=0; break; }
done
if [ "$formed" -eq 1 ]; then
  # when each agent's view became whole: the latest "since" of its peers
  last=0
  for n in "${names[@]}"; do
    s=$(ev "$n" 'local m = 0 for _, x in ipairs(pogo.cluster.nodes()) do if not x.self and x.since > m then m = x.since end end return string.format("%.6f", m)' | tr -d '"')
    last=$(awk -v a="$last" -v b="$s" 'BEGIN { printf "%.6f\n", (b > a ? b : a) }')
  done
  since "$t0" "$last" | sample mesh
else
  NOTES+=("mesh: not every agent saw the others up within 120 s of its wave; the rest was skipped")
  NOTES+=("mesh: what the agents logged: $(cat "$T"/n*.log | cut -c26- | sed 's/[0-9][0-9.]*/N/g' | sort | uniq -c | sort -rn | head -5 | tr -s ' ' | tr '\n' ';')")
fi

# ---- idle: CPU, RSS, bytes ------------------------------------------------------------

BYTES='local s = 0 for _, l in ipairs(require("pogo.core.link").links()) do s = s + l:stats().bytes_out end
       return string.format("%.6f %d", require("pogo.core.sys").monotonic(), s)'
COUNT_DOWNS='_G.BENCH_DOWN = 0
  if not _G.BENCH_CANCEL then
    _G.BENCH_CANCEL = pogo.cluster.on("down", function() _G.BENCH_DOWN = _G.BENCH_DOWN + 1 end)
  end
  return true'
DOWNS=0

# idle NAME - IDLE seconds of every agent: CPU (NAME_cpu), bytes sent a
# second (NAME_bytes), RSS (NAME_rss); counts the down events meanwhile.
idle() {
  local tag=$1 n hz c0 c1
  hz=$(getconf CLK_TCK)
  for n in "${names[@]}"; do ev "$n" "$COUNT_DOWNS" >/dev/null; done
  for n in "${names[@]}"; do echo "$n $(ev "$n" "$BYTES" | tr -d '"')"; done >"$T/bytes1"
  for n in "${names[@]}"; do echo "$n $(cut -d' ' -f14,15 "/proc/${PID[$n]}/stat")"; done >"$T/cpu1"
  c0=$(mono); nap "$IDLE"; c1=$(mono)
  for n in "${names[@]}"; do echo "$n $(cut -d' ' -f14,15 "/proc/${PID[$n]}/stat")"; done >"$T/cpu2"
  for n in "${names[@]}"; do echo "$n $(ev "$n" "$BYTES" | tr -d '"')"; done >"$T/bytes2"
  for n in "${names[@]}"; do awk '/VmRSS/ { print $2 / 1024 }' "/proc/${PID[$n]}/status"; done | sample "${tag}_rss"
  awk -v hz="$hz" -v dt="$(since "$c0" "$c1")" '
    NR == FNR { u[$1] = $2 + $3; next } { printf "%.4f\n", 100 * ($2 + $3 - u[$1]) / hz / dt }' \
    "$T/cpu1" "$T/cpu2" | sample "${tag}_cpu"
  awk 'NR == FNR { t[$1] = $2; b[$1] = $3; next } { printf "%.1f\n", ($3 - b[$1]) / ($2 - t[$1]) }' \
    "$T/bytes1" "$T/bytes2" | sample "${tag}_bytes"
  DOWNS=0
  for n in "${names[@]}"; do d=$(ev "$n" '_G.BENCH_DOWN'); DOWNS=$((DOWNS + ${d//[^0-9]/0})); done
  [ "$DOWNS" -gt 0 ] && NOTES+=("idle/$tag: $DOWNS down event(s) in ${IDLE}s")
}

if [ "$formed" -eq 1 ]; then
  note "idle: ${IDLE}s, no children"
  sleep 2
  idle bare
fi

# ---- CHILDREN children from one spec file --------------------------------------------------

started=0; most=0
if [ "$formed" -eq 1 ] && [ "$CHILDREN" -gt 0 ]; then
  note "start: $CHILDREN children"
  spec "$T/c.lua" c- "$CHILDREN"
  mapfile -t alive < <(live_agents)
  read -r t0 t1 st < <(timed "$T/out" "$POGO" start -s "$T/n001.sock" --file "$T/c.lua" -t 60)
  [ "$st" = 0 ] || NOTES+=("start: pogo start failed: $(head -c 300 "$T/out.err")")
  since "$t0" "$t1" | sample start_cli
  deadline=$(( $(date +%s) + START_SECS ))
  most=0; peak_dups=0; told=$(date +%s)
  # every node stores every node's copy of every request (pogo.desired):
  # give up before the agents take half of the memory that was free
  mem_cap=$(( $(awk '/MemAvailable/ { print $2 }' /proc/meminfo) / 2 ))
  while :; do
    read -r procs ids dups < <(count "${alive[@]}")
    [ "$procs" -gt "$most" ] && most=$procs
    [ "$dups" -gt "$peak_dups" ] && peak_dups=$dups
    # On a starved machine the agents lose each other and every side runs
    # every child: stop before the copies exhaust the machine's pids.
    if [ "$procs" -gt $((CHILDREN * 3 / 2 + 20)) ]; then
      NOTES+=("start: gave up after $(since "$t0" "$(mono)" | cut -d. -f1) s: $procs processes for $ids ids (runaway duplicates); every agent was killed")
      down_all
      break
    fi
    if [ "$(agents_kb)" -gt "$mem_cap" ]; then
      NOTES+=("start: gave up after $(since "$t0" "$(mono)" | cut -d. -f1) s: the agents held $(( $(agents_kb) / 1024 )) MiB, half the memory that was free; $ids ids were running; every agent was killed")
      down_all
      break
    fi
    if [ "$ids" -eq "$CHILDREN" ] && [ "$procs" -eq "$CHILDREN" ]; then
      since "$t0" "$(mono)" | sample start; started=1; break
    fi
    if [ $(( $(date +%s) - told )) -ge 30 ]; then
      told=$(date +%s); note "  $ids ids running in $procs processes, load average $(load)"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      NOTES+=("start: after ${START_SECS}s, $ids of $CHILDREN ids run, in $procs processes ($dups ids twice)")
      break
    fi
    sleep 0.2
  done
  echo "$most" | sample start_most
  echo "$peak_dups" | sample start_dups
  count -p | awk '{ print $2 }' | sample per_agent
fi

if [ "$formed" -eq 1 ] && [ "$most" -gt 0 ] && [ "${#PID[@]}" -gt 0 ]; then
  note "idle: ${IDLE}s, with the children"
  sleep 5
  idle busy
  read -r procs ids dups < <(count "${alive[@]}")
  [ "$procs" -eq "$CHILDREN" ] && [ "$ids" -eq "$CHILDREN" ] ||
    NOTES+=("after the idle period: $ids ids in $procs processes ($dups twice)")
fi

# ---- failover ------------------------------------------------------------------------------

if [ "$started" -eq 1 ]; then
  share=$((CHILDREN / AGENTS))
  read -r vpid held < <(count -p | awk -v s="$share" -v seed="${PID[n001]}" '
    $1 != seed { d = $2 - s; if (d < 0) d = -d; if (best == "" || d < best) { best = d; p = $1; c = $2 } }
    END { print p, c }')
  for n in "${names[@]}"; do [ "${PID[$n]}" = "$vpid" ] && victim=$n; done
  note "failover: kill -9 of $victim, which holds $held children"
  count -i "$vpid" | sort >"$T/victim_ids"
  echo "$held" | sample fail_held
  t0=$(signal_at KILL "$vpid")
  { wait "$vpid"; } 2>/dev/null
  unset "PID[$victim]"
  mapfile -t alive < <(live_agents)
  deadline=$(( $(date +%s) + 60 ))
  while :; do
    read -r procs ids dups < <(count "${alive[@]}")
    if [ "$ids" -eq "$CHILDREN" ]; then
      since "$t0" "$(mono)" | sample fail; break
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      NOTES+=("failover: after 60 s, $ids of $CHILDREN ids run under a live agent"); break
    fi
    sleep 0.1
  done
  # the victim's children are gone (its watchdog killed them), none twice
  wait_for 10 exact ||
    NOTES+=("failover: 10 s later, the processes were $(count))")
fi

# ---- the table ---------------------------------------------------------------------------------

stat_max() { sort -g "$T/samples/$1" 2>/dev/null | tail -1 | awk -v s="$2" -v d="$3" -v u="$4" '{ printf "%.*f%s\n", d, $1 * s, u }'; }

metric "$AGENTS agents: full mesh from one seed (waves of $WAVE)" mesh 1 2 " s" "-" "" "" ""
for tag in bare busy; do
  [ "$tag" = bare ] && what="no children" || what="$CHILDREN children"
  metric "idle CPU per agent, $what (% of a core)" "${tag}_cpu" 1 2 " %" "-" "" "" ""
  row "  max" "$(stat_max "${tag}_cpu" 1 2 " %")" "-" "-" "-" ""
  metric "  RSS per agent" "${tag}_rss" 1 1 " MiB" "-" "" "" ""
  row "  max" "$(stat_max "${tag}_rss" 1 1 " MiB")" "-" "-" "-" ""
  metric "  cluster bytes/s sent per agent" "${tag}_bytes" 1 0 " B/s" "-" "" "" ""
done
metric "$CHILDREN children: submitted -> each running once" start 1 2 " s" "-" "" "" ""
metric "  pogo start --file answers" start_cli 1 2 " s" "-" "" "" ""
metric "  most child processes at once" start_most 1 0 "" "$CHILDREN" "" "" ""
metric "  most ids running twice at once" start_dups 1 0 "" "-" "" "" ""
metric "  children per agent" per_agent 1 0 "" "$((CHILDREN / AGENTS))" "" "" ""
metric "failover, kill -9: its children running elsewhere" fail 1000 0 " ms" "-" "" "" ""
metric "  children the killed agent held" fail_held 1 0 "" "$((CHILDREN / AGENTS))" "" "" ""

echo
echo "scale benchmark: $AGENTS agents, $CHILDREN children, $(nproc) cores, load average now $(load); one cluster (n = 1 for times; per-agent rows: median and p99 over the agents)"
print_table
for line in "${NOTES[@]}"; do echo "note: $line"; done
exit 0
