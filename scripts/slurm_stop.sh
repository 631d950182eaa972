#!/usr/bin/env bash
# Ends the one-node cluster of scripts/slurm_start.sh: cancels its jobs, then ends only the
# daemons that script started (the PIDs in $PROMPTRL_SLURM_DIR/pids), slurmd first. A munged
# that was already running before slurm_start.sh is not in that file and is left alone.
set -euo pipefail

DIR="${PROMPTRL_SLURM_DIR:-/tmp/promptrl-slurm}"
export SLURM_CONF="$DIR/slurm.conf"
[[ -f $DIR/pids ]] || { echo "slurm_stop: nothing started from $DIR"; exit 0; }

if scontrol ping >/dev/null 2>&1; then
    jobs=$(squeue -h -o %A 2>/dev/null || true)
    if [[ -n $jobs ]]; then
        # shellcheck disable=SC2086
        scancel $jobs || true
        for _ in $(seq 50); do [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break; sleep 0.2; done
    fi
fi

for daemon in slurmd slurmctld munged; do
    pid=$(awk -v n="$daemon" '$1 == n {print $2}' "$DIR/pids")
    [[ -n $pid ]] || continue
    # The PID must still be that daemon (not a reused number) before it is signalled.
    if [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$daemon" ]]; then
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        echo "slurm_stop: ended $daemon ($pid)"
    fi
done
rm -f "$DIR/pids"
