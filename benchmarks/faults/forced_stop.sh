#!/usr/bin/env bash
# `ray stop --force` under a running `make serve`: the raylet dies with the replica, so Ray cannot
# stop the replica's vLLM engine core (README "A replica that dies"); the replica's child reaper
# (serve_app/replica/child_reaper.py) must. Prints the VLLM:: processes whenever they change (looked
# at every 0.5 s) until none is left and the stop has returned, or for 60 s. From the repository
# root, nothing else of Ray's running on the machine:
#
#     bash benchmarks/faults/forced_stop.sh > benchmarks/results/faults/forced-stop/with-reaper.txt
set -uo pipefail
vllm_procs() { pgrep -f '^VLLM::' | tr '\n' ' '; }
log=$(mktemp)
make serve > "$log" 2>&1 &
until curl -sf localhost:8000/ready > /dev/null; do
  sleep 2
  kill -0 $! 2> /dev/null || { tail -20 "$log"; exit 1; }
done
echo "ready; commit $(git rev-parse --short HEAD); VLLM:: processes: $(vllm_procs)"
pgrep -af 'serve_app.replica.child_reaper' | sed 's/^/reaper: /'
start=$(date +%s.%N)
elapsed() { printf '%5.1f' "$(echo "$(date +%s.%N) - $start" | bc)"; }
.venv/bin/ray stop --force > /dev/null 2>&1 &
stopper=$!
for _ in $(seq 1 120); do  # each 0.5 s while the VLLM:: processes change, for at most 60 s
  left=$(vllm_procs)
  [[ $left == "${last-}" ]] || echo "t=$(elapsed) s  VLLM:: processes left: ${left:-none}"
  last=$left
  kill -0 $stopper 2> /dev/null || [[ -n ${stopped-} ]] || { stopped=1; echo "t=$(elapsed) s  ray stop --force returned"; }
  [[ -z $left && -n ${stopped-} ]] && break
  sleep 0.5
done
pkill -f haproxy; wait 2> /dev/null
[[ -z $(vllm_procs) ]] || { echo "ORPHANED: $(vllm_procs)"; pkill -9 -f '^VLLM::'; exit 1; }
