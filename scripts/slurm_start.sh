#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the SLURM tests (tests/test_slurm.py) and for
# trying `hydra/launcher=slurm` without a cluster. Needs root and Debian's packages:
#   apt-get install -y slurm-wlm munge
# Writes slurm.conf into a state directory (PROMPTRL_SLURM_DIR, default /tmp/promptrl-slurm),
# starts munged (unless one already answers), slurmctld and slurmd, and records the PIDs of the
# daemons it started in $DIR/pids, which is all scripts/slurm_stop.sh ends. Idempotent: a
# cluster of this directory that answers is left as it is. Use it with
#   export SLURM_CONF=$DIR/slurm.conf      (printed at the end)
# No accounting (slurmdbd): `sacct` does not work, so submitit learns that a job ended only from
# the result file the job writes; see docs/sweeps.md.
set -euo pipefail

DIR="${PROMPTRL_SLURM_DIR:-/tmp/promptrl-slurm}"
CONF="$DIR/slurm.conf"
export SLURM_CONF="$CONF"

die() { echo "slurm_start: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "needs root (slurmd starts jobs as their user)"
for bin in munged munge unmunge slurmctld slurmd scontrol sbatch; do
    command -v "$bin" >/dev/null || die "$bin not found; install: apt-get install -y slurm-wlm munge"
done

alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }
pid_of() { [[ -f $DIR/pids ]] && awk -v n="$1" '$1 == n {print $2}' "$DIR/pids" || true; }

if alive "$(pid_of slurmctld)" && alive "$(pid_of slurmd)" && scontrol ping >/dev/null 2>&1; then
    echo "slurm_start: already running ($DIR)"
    echo "export SLURM_CONF=$CONF"
    exit 0
fi
# Daemons of an earlier start that half-died: end them (ours, by PID) and start clean.
if [[ -f $DIR/pids ]]; then
    "$(dirname "$0")/slurm_stop.sh"
fi
mkdir -p "$DIR/state" "$DIR/spool"
: >"$DIR/pids"

# munge: the key comes with the package (postinst); one munged serves every SLURM on the machine.
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    [[ -s /etc/munge/munge.key ]] || mungekey --create --force
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    rm -f /run/munge/munged.pid
    setpriv --reuid=munge --regid=munge --init-groups munged  # forks; writes its PID file
    for _ in $(seq 50); do [[ -s /run/munge/munged.pid ]] && break; sleep 0.1; done
    echo "munged $(cat /run/munge/munged.pid)" >>"$DIR/pids"
fi

# The node as slurmd sees it (CPUs, sockets, memory), addressed by loopback so no DNS is needed.
node=$(slurmd -C | head -1)
name=$(sed -E 's/^NodeName=([^ ]+).*/\1/' <<<"$node")
cpus=$(sed -E 's/.* CPUs=([0-9]+).*/\1/' <<<"$node")
mem=$(sed -E 's/.* RealMemory=([0-9]+).*/\1/' <<<"$node")
cat >"$CONF" <<EOF
# Written by scripts/slurm_start.sh: a one-node cluster for tests.
ClusterName=promptrl
SlurmctldHost=$name(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
# A requeued job waits cred_expire seconds before it may start again (default 120).
AuthInfo=cred_expire=30
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SlurmctldPort=${PROMPTRL_SLURM_PORT:-6817}
SlurmdPort=$(( ${PROMPTRL_SLURM_PORT:-6817} + 1 ))
# No cgroups in a container without systemd: track job processes by their parent PIDs.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
# Jobs share the node by cores and memory; a request larger than the node fails at submission
# instead of pending forever.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$(( mem / cpus / 2 ))
EnforcePartLimits=ALL
# A job at its time limit gets SIGTERM, then SIGKILL after KillWait seconds; the signal that
# submitit asks for (--signal=USR2@<signal_delay_s>) comes before that.
KillWait=10
OverTimeLimit=0
# Ended jobs leave squeue quickly; a requeued job may start again at once.
MinJobAge=10
ReturnToService=2
$node NodeAddr=127.0.0.1
PartitionName=debug Nodes=$name Default=YES MaxTime=INFINITE State=UP
EOF

slurmctld -f "$CONF" -i
for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.1; done
scontrol ping >/dev/null 2>&1 || die "slurmctld did not answer; see $DIR/slurmctld.log"
echo "slurmctld $(cat "$DIR/slurmctld.pid")" >>"$DIR/pids"
slurmd -f "$CONF"
for _ in $(seq 50); do [[ -s $DIR/slurmd.pid ]] && break; sleep 0.1; done
echo "slurmd $(cat "$DIR/slurmd.pid")" >>"$DIR/pids"
# The node is usable once slurmd has registered with slurmctld.
for _ in $(seq 100); do
    state=$(sinfo -h -n "$name" -o %T 2>/dev/null || true)
    [[ $state == idle* || $state == mixed* || $state == allocated* ]] && break
    sleep 0.2
done
[[ $state == idle* || $state == mixed* || $state == allocated* ]] || die "node $name is '$state'; see $DIR/slurmd.log"
echo "slurm_start: node $name ($cpus CPUs, $mem MB) up; daemons in $DIR/pids"
echo "export SLURM_CONF=$CONF"
