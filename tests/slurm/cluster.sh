#!/usr/bin/env bash
# A real one-node Slurm cluster (Debian's slurm-wlm: munged + slurmctld + slurmd) for the tests.
#   tests/slurm/cluster.sh start   # idempotent: installs the packages if missing, starts what is not running
#   tests/slurm/cluster.sh stop    # stops exactly what `start` started
#   tests/slurm/cluster.sh env     # prints `export SLURM_CONF=...` for clients
# Everything lives under $HEPML_SLURM_DIR (default /tmp/hepml-slurm); nothing goes into /etc.
set -euo pipefail
DIR=${HEPML_SLURM_DIR:-/tmp/hepml-slurm}
HOST=$(hostname -s)
CONF=$DIR/slurm.conf

log() { echo "[slurm-cluster] $*" >&2; }

# slurm-wlm-torque: Torque-style qsub/qstat over Slurm (the PBS path's tests submit through it);
# openmpi-bin: a real mpiexec for the PBS rank-mapping test.
PACKAGES="slurmctld slurmd slurm-client munge slurm-wlm-torque openmpi-bin"

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && command -v sbatch >/dev/null \
    && command -v qsub >/dev/null && command -v mpiexec >/dev/null && return 0
  [[ $(id -u) == 0 ]] || { log "slurm-wlm is not installed and we are not root: apt-get install $PACKAGES"; exit 3; }
  log "installing $PACKAGES (Debian)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || true
  apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null
}

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("",0)); print(s.getsockname()[1])'; }

write_config() {
  mkdir -p "$DIR"/{munge,state,spool/slurmd-$HOST,log,run}
  chmod 711 "$DIR/munge"
  [[ -f $DIR/munge/munge.key ]] || { dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none; chmod 400 "$DIR/munge/munge.key"; }
  [[ -f $CONF ]] && return 0
  local mem cpus
  mem=$(awk '/MemTotal/ {print int($2/1024*0.8)}' /proc/meminfo)
  cpus=$(nproc)
  cat >"$CONF" <<CONF
ClusterName=hepml
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
EnforcePartLimits=ALL
ReturnToService=2
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/slurmd-%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
}

start() {
  install_packages
  write_config
  if ! pid_alive "$DIR/run/munged.pid"; then
    munged --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/run/munged.pid" \
      --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munge.seed" --force 2>>"$DIR/log/start.err"
  fi
  export SLURM_CONF=$CONF
  pid_alive "$DIR/run/slurmctld.pid" || slurmctld -f "$CONF" 2>>"$DIR/log/start.err"
  pid_alive "$DIR/run/slurmd.pid" || slurmd -f "$CONF" 2>>"$DIR/log/start.err"
  for _ in $(seq 60); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      log "up: SLURM_CONF=$CONF"; return 0
    fi
    sleep 0.5
  done
  log "Slurm did not become ready; logs in $DIR/log:"; tail -n 5 "$DIR"/log/*.log "$DIR/log/start.err" >&2 || true
  exit 1
}

stop() {
  export SLURM_CONF=$CONF
  [[ -f $CONF ]] && scancel --user=root >/dev/null 2>&1 || true
  for d in slurmd slurmctld munged; do
    if pid_alive "$DIR/run/$d.pid"; then
      kill "$(cat "$DIR/run/$d.pid")" 2>/dev/null || true
      for _ in $(seq 20); do pid_alive "$DIR/run/$d.pid" || break; sleep 0.25; done
      pid_alive "$DIR/run/$d.pid" && kill -9 "$(cat "$DIR/run/$d.pid")" 2>/dev/null || true
    fi
    rm -f "$DIR/run/$d.pid"
  done
  log "stopped"
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
