#!/usr/bin/env bash
# A single-node SLURM on this machine for tests/test_slurm.py: Debian's slurm-wlm (slurmctld and
# slurmd) with munge authentication, no cgroups, no accounting database. Idempotent: when a node
# is up with this configuration it returns at once; otherwise it installs what is missing (apt),
# writes /etc/slurm/slurm.conf, (re)starts munged, slurmctld and slurmd, waits for an idle node.
# Where it cannot (not root, no apt-get) it says so in one line and exits 0: the test then skips.
set -euo pipefail

say() { echo "setup-slurm: $*"; }
TIMEOUT_S="${SLURM_SETUP_TIMEOUT_S:-60}"
HOST="$(hostname -s)"
CONF=/etc/slurm/slurm.conf
MARK="# written by .ci/setup-slurm.sh"

node_state() {
    # The node's state as sinfo reports it (idle, mixed, allocated, down*, ...), or nothing.
    timeout 10 sinfo -h -N -n "$HOST" -o %T 2>/dev/null | head -n 1 || true
}

node_up() {
    case "$(node_state)" in
        idle | mixed | allocated | completing) return 0 ;;
        *) return 1 ;;
    esac
}

if [ "$(id -u)" -ne 0 ]; then
    if command -v sinfo >/dev/null && node_up; then
        say "SLURM is up (node $HOST: $(node_state))"
    else
        say "SLURM is not running and this is not root: not set up; tests/test_slurm.py will skip"
    fi
    exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    if ! command -v apt-get >/dev/null; then
        say "no SLURM and no apt-get (not Debian?): not installed; tests/test_slurm.py will skip"
        exit 0
    fi
    say "installing slurm-wlm and munge"
    # No init system here: the packages' postinst may not start services (policy-rc.d).
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        slurm-wlm munge >/dev/null || {
        apt-get update >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            slurm-wlm munge >/dev/null
    }
fi

# --- munge: the key, then the daemon (slurm's auth/munge and cred/munge need it) ---
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile /etc/munge/munge.key 2>/dev/null \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 1 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 || {
        say "munged did not start (see /var/log/munge/munged.log)"
        exit 1
    }
fi

# --- slurm.conf: this host, its CPUs and memory as slurmd detects them ---
# slurmd -C prints e.g. "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2
# ThreadsPerCore=1 RealMemory=24105"; the memory is lowered a little so the node registers.
read -r -a HW < <(slurmd -C | head -n 1)
NODE=()
for kv in "${HW[@]}"; do
    case "$kv" in
        NodeName=*) ;;
        RealMemory=*) NODE+=("RealMemory=$(( ${kv#RealMemory=} * 95 / 100 ))") ;;
        *) NODE+=("$kv") ;;
    esac
done
install -d -m 0755 /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
NEW="$(cat <<EOF
$MARK
ClusterName=scalinglab
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits cred_expire seconds before it starts again (120 by default).
AuthInfo=cred_expire=10
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# No cgroups (containers and VMs often lack a writable hierarchy): processes by /proc.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Start a job soon after it becomes eligible (e.g. a requeued one, after cred_expire).
SchedulerParameters=sched_interval=2,bf_interval=2
# Jobs may be requeued (scontrol requeue; submitit requeues a preempted or timed-out job).
JobRequeue=1
ReturnToService=2
KillWait=30
MinJobAge=300
SlurmdTimeout=60
NodeName=$HOST NodeAddr=127.0.0.1 ${NODE[*]} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
)"

restart=0
foreign=0
if [ -e "$CONF" ] && ! grep -qxF "$MARK" "$CONF"; then
    say "$CONF exists and was not written by this script: using it as it is"
    foreign=1
elif [ "$(cat "$CONF" 2>/dev/null)" != "$NEW" ]; then
    printf '%s\n' "$NEW" >"$CONF"
    restart=1
fi
# (sinfo waits for a controller that is not running: ask only when one is, or is not ours.)
if [ "$restart" = 0 ] && { pgrep -x slurmctld >/dev/null || [ "$foreign" = 1 ]; } && node_up; then
    say "SLURM is up (node $HOST: $(node_state))"
    exit 0
fi

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop() {
    # Stop a daemon of ours by its pid file (a changed slurm.conf needs a restart).
    local pidfile="$1"
    if running "$pidfile"; then
        local pid
        pid="$(cat "$pidfile")"
        kill "$pid"
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
}

if [ "$restart" = 1 ]; then
    stop /run/slurmd.pid
    stop /run/slurmctld.pid
fi
running /run/slurmctld.pid || slurmctld
running /run/slurmd.pid || slurmd

deadline=$((SECONDS + TIMEOUT_S))
until node_up; do
    state="$(node_state)"
    case "$state" in
        down* | drain* | fail*)  # e.g. left down by an earlier, unclean stop
            scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;;
    esac
    if [ "$SECONDS" -ge "$deadline" ]; then
        say "node $HOST not idle after ${TIMEOUT_S}s (state: ${state:-none});" \
            "see /var/log/slurm/slurmctld.log and /var/log/slurm/slurmd.log"
        exit 1
    fi
    sleep 1
done
say "SLURM is up (node $HOST: $(node_state))"
