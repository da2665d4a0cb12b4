#!/usr/bin/env bash
# slurm-cluster.sh - a REAL single-node Slurm cluster on this machine, for running and testing
# `biobench grid CONFIG --executor slurm` without a site cluster: munge, MariaDB + slurmdbd
# (accounting: submitit needs `sacct` to see CANCELLED / TIMEOUT / FAILED), slurmctld and slurmd,
# all from Debian's packages, all state in one folder, no systemd, run as root.
#
#   scripts/slurm-cluster.sh install  # apt-get the Debian packages below when missing (root)
#   scripts/slurm-cluster.sh start    # idempotent: starts what is not running, waits for an idle node
#   scripts/slurm-cluster.sh status   # exit 0 when every daemon is up and the node is usable
#   scripts/slurm-cluster.sh env      # prints "export SLURM_CONF=..."  (eval "$(... env)")
#   scripts/slurm-cluster.sh stop     # cancels the cluster's jobs, stops the daemons by their PID files
#   scripts/slurm-cluster.sh purge    # stop, then delete the cluster folder (state, database, logs)
#
# Knobs (environment, all optional):
#   BIOBENCH_SLURM_DIR=/tmp/biobench-slurm  everything (config, keys, state, database, logs) lives here
#   BIOBENCH_SLURM_ACCOUNTING=1             1: MariaDB + slurmdbd; 0: none (then submitit cannot see
#                                           a cancelled or timed-out job end: its result() hangs)
#   BIOBENCH_SLURM_FAKE_GPUS=1              N>0: the node advertises N "gpu" GRES backed by placeholder
#                                           device nodes, so jobs asking for GPUs are scheduled and get
#                                           CUDA_VISIBLE_DEVICES on a machine without GPUs (CI); 0: none
#   BIOBENCH_SLURM_TIMEOUT=120              seconds to wait for the node to become idle
#   BIOBENCH_SLURM_PORT_BASE=6817           slurmctld=BASE, slurmd=BASE+1, slurmdbd=BASE+2
#   BIOBENCH_SLURM_DB_PORT=3307             MariaDB's TCP port (bound to 127.0.0.1 only)
#
# Debian 12 packages (`install` gets them): slurmctld slurmd slurm-client munge slurmdbd mariadb-server
set -euo pipefail

DIR=${BIOBENCH_SLURM_DIR:-/tmp/biobench-slurm}
ACCT=${BIOBENCH_SLURM_ACCOUNTING:-1}
TIMEOUT=${BIOBENCH_SLURM_TIMEOUT:-120}
PB=${BIOBENCH_SLURM_PORT_BASE:-6817}
DBPORT=${BIOBENCH_SLURM_DB_PORT:-3307}
FAKE_GPUS=${BIOBENCH_SLURM_FAKE_GPUS:-1}
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
DBPASS=biobench-slurm  # the accounting database listens on 127.0.0.1 only
ETC=$DIR/etc RUN=$DIR/run LOG=$DIR/log STATE=$DIR/state
MSOCK=$RUN/munge/munge.socket
export SLURM_CONF=$ETC/slurm.conf
HOST=$(hostname -s)

log() { printf '[slurm-cluster %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---- PIDs: a daemon is ours and running when its PID file names a live process whose
# /proc/PID/comm is the expected program (a recycled PID is not mistaken for it) -------------
pid_of() {  # pid_of PIDFILE COMM -> prints the PID when running
  local f=$1 comm=$2 p
  [[ -s $f ]] || return 1
  p=$(<"$f"); [[ $p =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$p/comm && $(</proc/$p/comm) == "$comm" ]] || return 1
  echo "$p"
}
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    (( SECONDS < end )) || { log "timeout (${secs}s) waiting for $what"; return 1; }
    sleep 0.2
  done
}
stop_pid() {  # stop_pid PIDFILE COMM GRACE_SECONDS
  local f=$1 comm=$2 grace=$3 p
  if p=$(pid_of "$f" "$comm"); then
    log "stopping $comm (pid $p)"
    kill -TERM "$p" 2>/dev/null || true
    local end=$((SECONDS + grace))
    while kill -0 "$p" 2>/dev/null && (( SECONDS < end )); do sleep 0.2; done
    if kill -0 "$p" 2>/dev/null; then
      log "$comm (pid $p) ignored TERM, sending KILL"; kill -KILL "$p" 2>/dev/null || true
    fi
  fi
  rm -f "$f"
}

# ---- packages ------------------------------------------------------------------------------
missing_packages() {
  local p; for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}
cmd_install() {
  local missing; missing=$(missing_packages | tr '\n' ' ')
  if [[ -z ${missing// } ]]; then log "Slurm packages already installed"; return 0; fi
  command -v apt-get >/dev/null || die "apt-get not found: install $missing with your package manager"
  (( EUID == 0 )) || die "installing $missing needs root (sudo $0 install)"
  log "installing $missing"
  # Debian's maintainer scripts would start the daemons: this script starts its own instead
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

# ---- configuration ---------------------------------------------------------------------------
write_if_changed() {  # write_if_changed FILE MODE  (content on stdin)
  local f=$1 mode=$2 tmp; tmp=$(mktemp "$f.XXXX")
  cat >"$tmp"; chmod "$mode" "$tmp"
  if [[ -f $f ]] && cmp -s "$tmp" "$f"; then rm -f "$tmp"; else mv -f "$tmp" "$f"; fi
}
configure() {
  mkdir -p "$ETC" "$RUN" "$LOG" "$STATE/ctld" "$STATE/slurmd" "$RUN/munge" "$DIR/munge"
  chmod 755 "$DIR" "$RUN" "$RUN/munge"; chmod 700 "$DIR/munge"   # what munged insists on
  [[ -s $DIR/munge/munge.key ]] || mungekey --create --keyfile="$DIR/munge/munge.key" >/dev/null
  chmod 600 "$DIR/munge/munge.key"
  # the node line exactly as slurmd detects the hardware (a hand-written one made the node INVALID)
  local hw; hw=$(slurmd -C | sed -nE '1{s/^NodeName=[^ ]+ //; s/ UpTime=.*//; p}')
  local gres_types="" node_gres="" gres_conf=""
  if (( FAKE_GPUS > 0 )); then
    # gres/gpu needs one character device per GPU (Count= alone leaves the node INVAL, plain
    # files are refused): /dev/null-like device nodes (major 1, minor 3) stand in for them
    mkdir -p "$DIR/fakegpu"
    for ((i = 0; i < FAKE_GPUS; i++)); do
      [[ -c $DIR/fakegpu/gpu$i ]] || { rm -f "$DIR/fakegpu/gpu$i"; mknod "$DIR/fakegpu/gpu$i" c 1 3; }
    done
    gres_types="GresTypes=gpu" node_gres="Gres=gpu:$FAKE_GPUS"
    gres_conf="NodeName=$HOST Name=gpu File=$DIR/fakegpu/gpu[0-$((FAKE_GPUS - 1))]"
  fi
  write_if_changed "$ETC/gres.conf" 644 <<<"$gres_conf"
  local acct_lines="AccountingStorageType=accounting_storage/none"
  if [[ $ACCT == 1 ]]; then
    # AccountingStoragePass names the munge socket towards slurmdbd (else the default socket is
    # used and slurmdbd answers "Protocol authentication error")
    acct_lines="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$((PB + 2))
AccountingStoragePass=$MSOCK"
    # sacct's AllocTRES then shows the GPUs a job was given
    (( FAKE_GPUS > 0 )) && acct_lines+=$'\nAccountingStorageTRES=gres/gpu'
  fi
  write_if_changed "$ETC/slurm.conf" 644 <<EOF
# generated by scripts/slurm-cluster.sh: a single-node test cluster
ClusterName=biobench
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$PB
SlurmdPort=$((PB + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MSOCK
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
# no cgroups, no systemd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
$acct_lines
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
# start batch jobs at once, and schedule every 10 s (not 60: a requeued job, held 2 min by
# Slurm, then starts within seconds); SIGKILL 5 s after SIGTERM (submitit ignores SIGTERM, so a
# cancelled job would otherwise hold its CPUs for 30 s)
SchedulerParameters=batch_sched_delay=0,sched_interval=10
KillWait=5
# refuse an impossible request (more CPUs than the node has) at submission, not pending forever
EnforcePartLimits=ALL
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
$gres_types
NodeName=$HOST NodeAddr=127.0.0.1 $hw $node_gres State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  if [[ $ACCT == 1 ]]; then
    mkdir -p "$DIR/mysql/data" "$RUN/mysql"
    write_if_changed "$ETC/slurmdbd.conf" 600 <<EOF
# generated by scripts/slurm-cluster.sh
AuthType=auth/munge
AuthInfo=socket=$MSOCK
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$((PB + 2))
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DBPORT
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
EOF
  fi
}

# ---- daemons (each started with 9>&- so it does not hold this script's lock) -----------------
munge_ok() { munge -S "$MSOCK" -n </dev/null | unmunge -S "$MSOCK" >/dev/null; }
start_munge() {
  pid_of "$RUN/munge/munged.pid" munged >/dev/null && return 0
  log "starting munged"
  munged --socket="$MSOCK" --key-file="$DIR/munge/munge.key" --pid-file="$RUN/munge/munged.pid" \
         --seed-file="$DIR/munge/munged.seed" --log-file="$LOG/munged.log" 9>&- \
    || die "munged failed, see $LOG/munged.log"
  wait_for 20 munged munge_ok
}
mysql_opts() { echo --no-defaults --user=root --datadir="$DIR/mysql/data" --innodb-log-file-size=16M \
                    --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900; }
db_ok() { mariadb-admin --no-defaults --socket="$RUN/mysql/mysqld.sock" ping; }
db_ok_or_dead() { db_ok || ! kill -0 "$1"; }   # stop waiting early when mariadbd exited
start_mariadb() {
  pid_of "$RUN/mysql/mysqld.pid" mariadbd >/dev/null && return 0
  if [[ ! -d $DIR/mysql/data/mysql ]]; then
    log "initialising the MariaDB data folder"
    mariadb-install-db $(mysql_opts) --auth-root-authentication-method=socket --skip-test-db \
      >"$LOG/mariadb-install.log" 2>&1 || die "mariadb-install-db failed, see $LOG/mariadb-install.log"
  fi
  log "starting mariadbd"
  setsid nohup mariadbd $(mysql_opts) --socket="$RUN/mysql/mysqld.sock" --pid-file="$RUN/mysql/mysqld.pid" \
         --port="$DBPORT" --bind-address=127.0.0.1 --skip-name-resolve --log-error="$LOG/mariadb.log" \
         </dev/null >/dev/null 2>&1 9>&- &
  local mpid=$!
  wait_for 60 mariadbd db_ok_or_dead "$mpid"
  db_ok >/dev/null 2>&1 || die "mariadbd did not come up, see $LOG/mariadb.log"
  mariadb --no-defaults --socket="$RUN/mysql/mysqld.sock" -e \
    "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DBPASS';
     GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
}
# every client call is bounded: a wedged daemon must not hang the script
dbd_ok() { timeout 10 sacctmgr -n -P show cluster format=cluster; }
start_slurmdbd() {
  pid_of "$RUN/slurmdbd.pid" slurmdbd >/dev/null && return 0
  log "starting slurmdbd"
  slurmdbd 9>&- || die "slurmdbd failed, see $LOG/slurmdbd.log"  # reads slurmdbd.conf beside SLURM_CONF
  wait_for 60 slurmdbd dbd_ok || die "slurmdbd did not come up, see $LOG/slurmdbd.log"
}
ctld_ok() { timeout 10 scontrol ping | grep -q 'is UP'; }
start_slurmctld() {
  pid_of "$RUN/slurmctld.pid" slurmctld >/dev/null && return 0
  log "starting slurmctld"
  slurmctld 9>&- || die "slurmctld failed, see $LOG/slurmctld.log"
  wait_for 60 slurmctld ctld_ok || die "slurmctld did not come up, see $LOG/slurmctld.log"
}
start_slurmd() {
  pid_of "$RUN/slurmd.pid" slurmd >/dev/null && return 0
  log "starting slurmd"
  slurmd 9>&- || die "slurmd failed, see $LOG/slurmd.log"
  wait_for 30 "slurmd pid file" pid_of "$RUN/slurmd.pid" slurmd || die "slurmd did not start, see $LOG/slurmd.log"
}
node_state() { timeout 10 sinfo -h -n "$HOST" -o '%T' 2>/dev/null | head -1; }
wait_node_ready() {
  local end=$((SECONDS + TIMEOUT)) st resumed=0
  while :; do
    st=$(node_state || true)
    case $st in
      idle|mixed|allocated|completing) log "node $HOST is $st"; return 0 ;;
      inval*) die "node is INVAL: $(timeout 10 sinfo -h -R -n "$HOST" -o '%E' 2>/dev/null) (see $LOG/slurmctld.log)" ;;
      down*|drain*|fail*)
        if (( !resumed )); then
          log "node is '$st', trying RESUME"; timeout 10 scontrol update NodeName="$HOST" State=RESUME || true; resumed=1
        fi ;;
    esac
    (( SECONDS < end )) || die "node not ready after ${TIMEOUT}s (state '$st'), see $LOG/"
    sleep 0.5
  done
}
cluster_registered() { [[ -n $(timeout 10 sacctmgr -n -P show cluster biobench format=cluster 2>/dev/null) ]]; }

cmd_start() {
  local t0=$SECONDS b
  for b in slurmctld slurmd munged sinfo; do
    command -v "$b" >/dev/null || die "$b not installed: run '$0 install' (root) first"
  done
  if [[ $ACCT == 1 ]]; then
    for b in slurmdbd mariadbd; do command -v "$b" >/dev/null || die "$b not installed: run '$0 install' first"; done
  fi
  configure
  start_munge
  if [[ $ACCT == 1 ]]; then start_mariadb; start_slurmdbd; fi
  start_slurmctld
  start_slurmd
  wait_node_ready
  if [[ $ACCT == 1 ]]; then
    wait_for 30 "cluster registration in slurmdbd" cluster_registered || die "cluster not registered in slurmdbd, see $LOG/"
  fi
  log "cluster ready in $((SECONDS - t0))s; export SLURM_CONF=$SLURM_CONF"
}
cmd_status() {
  local ok=0 spec
  [[ -f $SLURM_CONF ]] || { echo "no cluster configured in $DIR (run '$0 start')"; return 1; }
  for spec in munge/munged.pid:munged slurmctld.pid:slurmctld slurmd.pid:slurmd \
              $( [[ $ACCT == 1 ]] && echo slurmdbd.pid:slurmdbd mysql/mysqld.pid:mariadbd ); do
    local f=${spec%%:*} c=${spec##*:} p
    if p=$(pid_of "$RUN/$f" "$c"); then echo "$c: running (pid $p)"; else echo "$c: not running"; ok=1; fi
  done
  local st; st=$(node_state || true)
  echo "node: ${st:-unknown}"
  case $st in idle|mixed|allocated|completing) ;; *) ok=1 ;; esac
  return $ok
}
cmd_stop() {
  if pid_of "$RUN/slurmctld.pid" slurmctld >/dev/null; then
    local ids; ids=$(timeout 10 squeue -h -o '%A' 2>/dev/null | sort -u | tr '\n' ' ' || true)
    if [[ -n ${ids// } ]]; then
      log "cancelling jobs: $ids"; timeout 10 scancel $ids || true
      wait_for 30 "jobs to finish" bash -c '[[ -z $(timeout 10 squeue -h -o %A) ]]' || true
    fi
  fi
  stop_pid "$RUN/slurmd.pid" slurmd 20
  stop_pid "$RUN/slurmctld.pid" slurmctld 20
  stop_pid "$RUN/slurmdbd.pid" slurmdbd 20
  stop_pid "$RUN/mysql/mysqld.pid" mariadbd 60
  stop_pid "$RUN/munge/munged.pid" munged 10
  log "stopped"
}

# concurrent calls are serialised on a lock in the cluster folder
lock() { mkdir -p "$DIR"; exec 9>"$DIR/.lock"; flock -w 300 9 || die "could not lock $DIR/.lock"; }

case ${1:-} in
  install) cmd_install ;;
  start)   lock; cmd_start ;;
  stop)    lock; cmd_stop ;;
  status)  cmd_status ;;
  env)     echo "export SLURM_CONF=$SLURM_CONF" ;;
  purge)   lock; cmd_stop; [[ $DIR == /tmp/* ]] || die "refusing to delete $DIR (not under /tmp)"
           rm -rf -- "$DIR"; log "removed $DIR" ;;
  *) echo "usage: $0 install|start|stop|status|env|purge" >&2; exit 2 ;;
esac
