#!/usr/bin/env bash
# Memory soak: does an agent's memory stay flat while its children restart
# constantly? Two agents on loopback form a cluster; n1 loads a children
# directory that n1 and n2 share out between them:
#
#   crash1..6   exit 1 after 0.2 s, restarted after a 50-100 ms backoff
#   segv1..2    kill themselves with SIGSEGV after 0.3 s
#   flood1..2   write 1 MB of output (16,000 lines) as fast as they can, exit
#   reload      its spec file rewritten every RELOAD seconds (a new command,
#               so the child is replaced); every 4th rewrite is a broken
#               file (kept as an error, the old version runs on)
#   moving      its file removed and written back every 2*RELOAD seconds
#
# and every sample n2 joins or leaves 200 process-group members (replicated
# to n1). Every SAMPLE seconds the script reads each agent's RSS
# (/proc/PID/status VmRSS) and Lua heap (pogo eval 'collectgarbage("count")',
# no forced collection). The first WARMUP seconds are not counted.
#
# Verdict, per agent and metric: "flat" when the median of the last quarter
# of the samples exceeds the median of the first quarter by at most 5 % or
# a floor (1 MiB of RSS, 256 KiB of Lua heap), whichever is larger;
# otherwise "GROWS". The slope (least squares, per 10 minutes) is printed
# beside it. The script exits 1 if anything grows or an agent dies.
#
# Environment:
#   DURATION=1800   seconds of soak after the warm-up
#   WARMUP=60       seconds before the first counted sample (DURATION/6 if
#                   that is smaller)
#   SAMPLE=5        seconds between samples
#   RELOAD=20       seconds between spec rewrites
set -u
cd "$(dirname "$0")/.." || exit 1
POGO=$(realpath "${POGO:-./pogo}")
DURATION=${DURATION:-1800}
WARMUP=${WARMUP:-$(( DURATION / 6 < 60 ? DURATION / 6 : 60 ))}
SAMPLE=${SAMPLE:-5}
RELOAD=${RELOAD:-20}
T=$(mktemp -d /tmp/pogo-soak.XXXXXX)
. bench/cluster/lib.sh
trap teardown EXIT
trap 'exit 130' INT TERM

"$POGO" keygen "$T/cluster.key" >/dev/null || exit 1
base=$(port_base 4)
mkdir -p "$T/children"
for n in 1 2; do
  children=; [ "$n" = 1 ] && children="children = \"$T/children\","
  cat >"$T/n$n.lua" <<CFG
return {
  name = "n$n",
  listen = "127.0.0.1:$((base + n))",
  seeds = { "127.0.0.1:$((base + 1))" },
  secret_file = "$T/cluster.key",
  control = "$T/n$n.sock",
  log_dir = "$T/logs/n$n",
  log = { level = "warn" },
  $children
}
CFG
done

# Every start of a restarting child appends a line to $T/starts.
child_file() { # child_file NAME LUA - written atomically, as editors do
  printf '%s\n' "$2" >"$T/children/.$1.tmp" && mv "$T/children/.$1.tmp" "$T/children/$1.lua"
}
child_file crash "local t = {}
for i = 1, 6 do t[i] = { id = 'crash' .. i, cmd = { 'sh', '-c', 'echo >>$T/starts; sleep 0.2; exit 1' },
  max_restarts = 50, max_seconds = '1s', backoff = { initial = '50ms', max = '100ms' } } end
for i = 1, 2 do t[#t + 1] = { id = 'segv' .. i, cmd = { 'sh', '-c', 'echo >>$T/starts; sleep 0.3; kill -SEGV \$\$' },
  max_restarts = 50, max_seconds = '1s', backoff = { initial = '50ms', max = '100ms' } } end
return t"
child_file flood "local t = {}
for i = 1, 2 do t[i] = { id = 'flood' .. i,
  cmd = { 'sh', '-c', 'echo >>$T/starts; yes flood-flood-flood-flood-flood-flood-flood-flood-flood-flood | head -n 16000; exit 1' },
  max_restarts = 50, max_seconds = '1s', backoff = { initial = '200ms', max = '200ms' },
  log = { max_size = '1MiB', max_files = 2 } } end
return t"
reload_file() { child_file reload "return { id = 'reload', cmd = 'sleep $((100000 + $1))' }"; }
moving_file() { child_file moving "return { id = 'moving', cmd = 'sleep 100000' }"; }
reload_file 0
moving_file

start n1; start n2
wait_up 20 2 n1 n2 || exit 1

rss() { awk '/^VmRSS/ { print $2 }' "/proc/${PID[$1]}/status" 2>/dev/null; }
heap() { ev "$1" 'return math.floor(collectgarbage("count"))' 2>/dev/null; }
pg_churn() { # pg_churn ROUND - n2 joins 200 members on even rounds, leaves them on odd
  local op='pogo.pg.join("soak", "g", "k" .. i, { i = i })'
  [ $(($1 % 2)) -eq 1 ] && op='pogo.pg.leave("soak", "g", "k" .. i)'
  ev n2 "for i = 1, 200 do $op end" >/dev/null 2>&1
}

t0=$(date +%s)
round=0 reloads=0 broken=0 churns=0 next_reload=$((t0 + RELOAD)) starts_at_warm=
echo "soak: 2 agents, ${DURATION}s after a ${WARMUP}s warm-up, a sample every ${SAMPLE}s ($T)"
while :; do
  now=$(date +%s); el=$((now - t0))
  [ "$el" -ge $((WARMUP + DURATION)) ] && break
  for n in n1 n2; do
    kill -0 "${PID[$n]}" 2>/dev/null || { echo "soak: agent $n died; its log:"; tail -20 "$T/$n.log"; exit 1; }
  done
  if [ "$el" -ge "$WARMUP" ]; then
    [ -n "$starts_at_warm" ] || starts_at_warm=$(wc -l <"$T/starts")
    for n in n1 n2; do
      r=$(rss "$n") h=$(heap "$n")
      [ -n "$r" ] && [ -n "$h" ] && echo "$el $r $h" >>"$T/$n.samples"
    done
  fi
  if [ "$now" -ge "$next_reload" ]; then
    reloads=$((reloads + 1)) next_reload=$((now + RELOAD))
    if [ $((reloads % 4)) -eq 0 ]; then
      child_file reload "return { id = 'reload', cmd = "; broken=$((broken + 1))   # a syntax error
    else
      reload_file "$reloads"
    fi
    if [ $((reloads % 2)) -eq 0 ]; then
      if [ -e "$T/children/moving.lua" ]; then rm -f "$T/children/moving.lua"; else moving_file; fi
    fi
  fi
  pg_churn "$round" && churns=$((churns + 1))
  round=$((round + 1))
  nap "$SAMPLE"
done
starts=$(( $(wc -l <"$T/starts") - ${starts_at_warm:-0} ))

# summary FILE COLUMN - "start median max end slope_per_10min growth verdict_floor"
summary() {
  awk -v c="$2" '{ t[NR] = $1; v[NR] = $c }
    function med(a, lo, hi,   n, i, j, x, s) {
      n = 0; for (i = lo; i <= hi; i++) s[++n] = a[i]
      for (i = 2; i <= n; i++) { x = s[i]; for (j = i - 1; j >= 1 && s[j] > x; j--) s[j + 1] = s[j]; s[j + 1] = x }
      return (n % 2) ? s[(n + 1) / 2] : (s[n / 2] + s[n / 2 + 1]) / 2
    }
    END {
      if (NR < 4) { print "- - - - - - -"; exit }
      mx = v[1]; st = sx = sy = sxy = sxx = 0
      for (i = 1; i <= NR; i++) { if (v[i] > mx) mx = v[i]; sx += t[i]; sy += v[i]; sxy += t[i] * v[i]; sxx += t[i] * t[i] }
      slope = (NR * sxy - sx * sy) / (NR * sxx - sx * sx) * 600
      q = int(NR / 4); first = med(v, 1, q); last = med(v, NR - q + 1, NR)
      printf "%d %d %d %d %+.0f %+.0f %d\n", v[1], med(v, 1, NR), mx, v[NR], slope, last - first, first
    }' "$1"
}

status=0
printf '\n%-5s %-15s %9s %9s %9s %9s %13s %13s  %s\n' agent metric start median max end "slope/10min" "growth" verdict
for n in n1 n2; do
  for m in "RSS (KiB):2:1024" "Lua heap (KiB):3:256"; do
    IFS=: read -r name col floor <<<"$m"
    read -r s med mx e slope growth first <<<"$(summary "$T/$n.samples" "$col")"
    if [ "$s" = - ]; then v="no data"; status=1
    else
      limit=$(( first / 20 > floor ? first / 20 : floor ))
      if [ "${growth#+}" -le "$limit" ]; then v="flat (limit +$limit)"; else v="GROWS (limit +$limit)"; status=1; fi
    fi
    printf '%-5s %-15s %9s %9s %9s %9s %13s %13s  %s\n' "$n" "$name" "$s" "$med" "$mx" "$e" "$slope" "$growth" "$v"
  done
done
echo
echo "child starts counted: $starts in ${DURATION}s ($(awk -v s="$starts" -v d="$DURATION" 'BEGIN { printf "%.1f", s / d }')/s); spec rewrites: $reloads ($broken broken); pg churn rounds: $churns (200 joins or leaves each); samples per agent: $(wc -l <"$T/n1.samples")"
echo "growth = median of the last quarter of samples - median of the first quarter"
exit $status
