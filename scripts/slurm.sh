#!/usr/bin/env bash
# A one-node SLURM cluster with accounting on this machine (Debian 12, root, no systemd), for
# the launcher's tests and for trying `hydra/launcher=slurm` without a real cluster.
#   scripts/slurm.sh up     install (first time) and start munge, MariaDB, slurmdbd,
#                           slurmctld and slurmd; idempotent; ends with a one-job smoke test
#   scripts/slurm.sh down   stop the daemons (the packages and accounting database stay)
#   scripts/slurm.sh --help
# Everything the daemons and apt print goes to $SLURM_LOG; on failure one line names it.
set -uo pipefail

SLURM_LOG=${SLURM_LOG:-/var/log/losslab-slurm.log}
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
NODE=$(hostname -s)
CONF=/etc/slurm

say() { echo "slurm: $*"; }
fail() {
	echo "slurm: $1 failed; read ${2:-$SLURM_LOG}" >&2
	exit 1
}
log() { "$@" >>"$SLURM_LOG" 2>&1; }

# wait_for <seconds> <command...>: true once the command succeeds, false after the deadline
wait_for() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@" >>"$SLURM_LOG" 2>&1; do
		((SECONDS < deadline)) || return 1
		sleep 0.5
	done
}

# running <name>: a live (not zombie) process of that exact name; PID 1 here reaps late, so a
# killed daemon can linger as a zombie that `kill -0` would call alive
# (read from /proc: a minimal image may lack procps)
pids_of() {
	local proc
	for proc in /proc/[0-9]*; do
		[[ $(cat "$proc/comm" 2>/dev/null) == "$1" ]] || continue
		[[ $(cut -d' ' -f3 "$proc/stat" 2>/dev/null) == Z ]] && continue
		echo "${proc#/proc/}"
	done
}
running() { [[ -n $(pids_of "$1") ]]; }

install_packages() {
	local missing=0 binary
	for binary in munged mariadbd slurmdbd slurmctld slurmd sbatch sacct; do
		command -v "$binary" >/dev/null || [[ -x /usr/sbin/$binary ]] || missing=1
	done
	((missing)) || return 0
	[[ $(id -u) == 0 ]] || fail "installing SLURM (needs root: sudo make slurm)" /dev/null
	say "installing ${PACKAGES[*]} (Debian packages, about a minute)"
	# the packages' start scripts are refused without systemd; the daemons are started below
	export DEBIAN_FRONTEND=noninteractive
	log apt-get -o DPkg::Lock::Timeout=600 update || fail "apt-get update"
	log apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${PACKAGES[@]}" ||
		fail "apt-get install"
}

write_config() {
	local cpus mem_mb
	cpus=$(nproc)
	mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.85}' /proc/meminfo)
	mkdir -p "$CONF" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
	cat >"$CONF/slurm.conf" <<EOF
# written by losslab's scripts/slurm.sh: a one-node test cluster (addresses, not names: no DNS needed)
ClusterName=losslab
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# no cgroups here
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
# sacct must work: submitit learns a cancelled or timed-out job's state from it
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
# a job past its limit gets SIGTERM, then SIGKILL 10 s later (time to record the stop)
KillWait=10
MinJobAge=60
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Default=YES Nodes=$NODE MaxTime=INFINITE State=UP
EOF
	# slurmdbd runs as root and reaches MariaDB through its socket as root (unix_socket
	# authentication): no password is written anywhere
	cat >"$CONF/slurmdbd.conf" <<EOF
# written by losslab's scripts/slurm.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
	chmod 600 "$CONF/slurmdbd.conf"
}

start_munge() {
	mkdir -p /run/munge /var/log/munge /var/lib/munge
	chown munge:munge /run/munge /var/log/munge /var/lib/munge
	if [[ ! -s /etc/munge/munge.key ]]; then
		log mungekey --create --force || fail "creating the munge key"
		chown munge:munge /etc/munge/munge.key
		chmod 400 /etc/munge/munge.key
	fi
	running munged || log runuser -u munge -- /usr/sbin/munged || fail "starting munged" /var/log/munge/munged.log
	wait_for 20 bash -c 'munge -n | unmunge' || fail "munge" /var/log/munge/munged.log
}

start_mariadb() {
	mkdir -p /run/mysqld /var/log/mysql
	chown mysql:mysql /run/mysqld /var/log/mysql
	if ! running mariadbd; then
		setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 \
			--log-error=/var/log/mysql/error.log </dev/null >>"$SLURM_LOG" 2>&1 &
	fi
	wait_for 60 mysqladmin ping || fail "MariaDB" /var/log/mysql/error.log
	log mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db" || fail "creating the accounting database"
}

start_slurm() {
	running slurmdbd || log /usr/sbin/slurmdbd || fail "starting slurmdbd" /var/log/slurm/slurmdbd.log
	wait_for 60 sacctmgr -n show cluster || fail "slurmdbd" /var/log/slurm/slurmdbd.log
	running slurmctld || log /usr/sbin/slurmctld || fail "starting slurmctld" /var/log/slurm/slurmctld.log
	wait_for 60 scontrol ping || fail "slurmctld" /var/log/slurm/slurmctld.log
	# slurmctld registers the cluster with slurmdbd itself; wait for it so sacct answers
	wait_for 60 bash -c "sacctmgr -n -P show cluster format=cluster | grep -qx losslab" ||
		fail "registering the cluster" /var/log/slurm/slurmctld.log
	running slurmd || log /usr/sbin/slurmd || fail "starting slurmd" /var/log/slurm/slurmd.log
	# a node that was killed during a job comes back `down` or `drain`: resume it
	local deadline=$((SECONDS + 60)) state
	while :; do
		state=$(sinfo -h -n "$NODE" -o %T 2>>"$SLURM_LOG")
		[[ $state == idle || $state == mixed || $state == allocated ]] && break
		if [[ $state == down* || $state == drain* ]]; then
			log scontrol update nodename="$NODE" state=resume
		fi
		((SECONDS < deadline)) || fail "node $NODE ($state)" /var/log/slurm/slurmd.log
		sleep 0.5
	done
}

smoke_test() {
	log timeout 60 srun --partition=debug --time=1 --mem=64 true || fail "a test job (srun true)"
	wait_for 30 sacct -n -X -o jobid || fail "sacct"
}

up() {
	local started=$SECONDS
	mkdir -p "$(dirname "$SLURM_LOG")"
	echo "== $(date -Is) scripts/slurm.sh up" >>"$SLURM_LOG"
	if scontrol ping >/dev/null 2>&1 && sacct -n -X -o jobid >/dev/null 2>&1 &&
		[[ $(sinfo -h -n "$NODE" -o %T 2>/dev/null) =~ ^(idle|mixed|allocated)$ ]]; then
		say "cluster already up (partition debug, node $NODE)"
		return 0
	fi
	install_packages
	write_config
	start_munge
	start_mariadb
	start_slurm
	smoke_test
	say "cluster up in $((SECONDS - started)) s: partition debug, node $NODE, $(nproc) CPUs; log $SLURM_LOG"
}

stop() {
	local name
	for name in slurmd slurmctld slurmdbd; do
		kill $(pids_of "$name") 2>/dev/null
	done
	if running mariadbd; then log mysqladmin shutdown || kill $(pids_of mariadbd) 2>/dev/null; fi
	kill $(pids_of munged) 2>/dev/null
	local deadline=$((SECONDS + 30))
	for name in slurmd slurmctld slurmdbd mariadbd munged; do
		while running "$name" && ((SECONDS < deadline)); do sleep 0.2; done
	done
	say "cluster stopped"
}

case "${1:-}" in
up) up ;;
down) stop ;;
-h | --help | help)
	echo "usage: scripts/slurm.sh up|down|--help"
	sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
	;;
*)
	echo "usage: scripts/slurm.sh up|down|--help" >&2
	exit 2
	;;
esac
