#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, to try `fairbench run --launcher slurm` (and for CI's SLURM tests).
#
#   sudo scripts/slurm_local.sh          # install (Debian/Ubuntu) if missing, configure, start; safe to rerun
#   sudo scripts/slurm_local.sh status   # daemons and `sinfo`
#   sudo scripts/slurm_local.sh stop     # stop the daemons this script started
#
# Runs as root without systemd: munged, MariaDB, slurmdbd, slurmctld and slurmd start as plain background
# processes. Accounting (slurmdbd + MariaDB) is not optional: without it `sacct` fails and submitit never learns
# that a job was cancelled. AuthInfo=cred_expire=10 lets a requeued job restart after ~10 s instead of ~120 s.
# It refuses to overwrite a slurm.conf it did not write (a machine with a real SLURM set-up is left alone).
set -euo pipefail

CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
MARK="# written by fairbench scripts/slurm_local.sh"
CLUSTER=fairbench
WAIT_S=${SLURM_LOCAL_WAIT_S:-90}

say() { echo "slurm_local: $*"; }
die() { echo "slurm_local: error: $*" >&2; exit 1; }

# alive NAME PIDFILE: the pid in PIDFILE is a running process called NAME (a stale file after a reboot is not).
alive() {
  local pid
  [ -s "$2" ] || return 1
  pid=$(tr -dc 0-9 <"$2")
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$1" ]
}

# wait_for SECONDS WHAT COMMAND...: rerun COMMAND every second until it succeeds.
wait_for() {
  local limit=$1 what=$2
  shift 2
  for _ in $(seq "$limit"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  die "$what did not come up within ${limit} s (logs: $LOG_DIR/)"
}

install_packages() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurm-wlm)
  command -v munged >/dev/null || missing+=(munge)
  command -v slurmdbd >/dev/null || missing+=(slurmdbd)
  command -v mariadbd >/dev/null || missing+=(mariadb-server)
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get; install SLURM with munge and slurmdbd"
  [ "$(id -u)" -eq 0 ] || die "installing ${missing[*]} needs root (run with sudo)"
  say "installing ${missing[*]} (about 20 s)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge slurmdbd mariadb-server >/dev/null
}

# write_if_changed PATH MODE: stdin becomes PATH unless it already holds exactly that.
write_if_changed() {
  local tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if [ -f "$1" ] && cmp -s "$tmp" "$1"; then rm -f "$tmp"; return 0; fi
  if [ -f "$1" ] && ! grep -qxF "$MARK" "$1"; then
    rm -f "$tmp"
    die "$1 exists and was not written by this script; leaving this machine's SLURM set-up alone"
  fi
  install -m "$2" "$tmp" "$1"
  rm -f "$tmp"
}

write_config() {
  local host node
  host=$(hostname -s)
  node=$(slurmd -C | head -n 1)
  case $node in NodeName=*) ;; *) die "unexpected \`slurmd -C\` output: $node" ;; esac
  mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
  write_if_changed "$CONF_DIR/slurm.conf" 644 <<EOF
$MARK
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
KillWait=5
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  # slurmdbd refuses a config readable by others.
  write_if_changed "$CONF_DIR/slurmdbd.conf" 600 <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=fairbench_slurm_acct_db
PidFile=/run/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
EOF
}

start_munge() {
  alive munged /run/munge/munged.pid && return 0
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
  [ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create >/dev/null 2>&1 || create-munge-key -f
  runuser -u munge -- /usr/sbin/munged --force
  wait_for 20 munged munge -n
}

start_mariadb() {
  alive mariadbd /run/mysqld/mysqld.pid && return 0
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null
  setsid /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid \
    >>"$LOG_DIR/mariadb.log" 2>&1 </dev/null &
  wait_for 60 MariaDB mariadb-admin ping
}

start_slurmdbd() {
  if ! alive slurmdbd /run/slurmdbd.pid; then
    slurmdbd
  fi
  wait_for "$WAIT_S" slurmdbd sacctmgr -n list cluster
  if [ -z "$(sacctmgr -n -P list cluster format=cluster "cluster=$CLUSTER")" ]; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
  fi
}

node_ready() {
  sinfo -h -N -o %t | grep -Eq '^(idle|mix|alloc)'
}

start_slurm() {
  alive slurmctld /run/slurmctld.pid || slurmctld
  wait_for "$WAIT_S" slurmctld scontrol ping
  alive slurmd /run/slurmd.pid || slurmd
  for _ in $(seq "$WAIT_S"); do
    node_ready && return 0
    # A node left down/drained by an earlier crash comes back once asked.
    if sinfo -h -N -o %t | grep -Eq '^(down|drain|drng)'; then
      scontrol update "nodename=$(hostname -s)" state=resume >/dev/null 2>&1 || true
    fi
    sleep 1
  done
  sinfo -N -l >&2 || true
  die "the node is not idle after ${WAIT_S} s (logs: $LOG_DIR/)"
}

stop_one() {  # stop_one NAME PIDFILE
  local pid
  alive "$1" "$2" || return 0
  pid=$(tr -dc 0-9 <"$2")
  kill "$pid"
  for _ in $(seq 30); do [ -d "/proc/$pid" ] || return 0; sleep 0.5; done
  say "$1 (pid $pid) did not stop"
}

status() {
  local name file
  for pair in munged:/run/munge/munged.pid mariadbd:/run/mysqld/mysqld.pid slurmdbd:/run/slurmdbd.pid \
              slurmctld:/run/slurmctld.pid slurmd:/run/slurmd.pid; do
    name=${pair%%:*} file=${pair#*:}
    if alive "$name" "$file"; then echo "$name: running (pid $(tr -dc 0-9 <"$file"))"; else echo "$name: stopped"; fi
  done
  sinfo 2>/dev/null || true
}

case "${1:-start}" in
  start)
    started=$(date +%s)
    if command -v sinfo >/dev/null && node_ready 2>/dev/null && sacct -n -X -S now >/dev/null 2>&1; then
      say "already up"; sinfo; exit 0
    fi
    [ "$(id -u)" -eq 0 ] || die "starting the daemons needs root (run with sudo)"
    install_packages
    write_config
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurm
    say "up in $(( $(date +%s) - started )) s; try: sinfo; squeue; fairbench run --launcher slurm ..."
    sinfo
    ;;
  stop)
    stop_one slurmd /run/slurmd.pid
    stop_one slurmctld /run/slurmctld.pid
    stop_one slurmdbd /run/slurmdbd.pid
    stop_one mariadbd /run/mysqld/mysqld.pid
    stop_one munged /run/munge/munged.pid
    say "stopped"
    ;;
  status) status ;;
  *) die "unknown command ${1}; use start (default), status or stop" ;;
esac
