#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine (controller and compute node on localhost) for
# tests/test_slurm.py. Debian's slurm-wlm and munge; no accounting database, no cgroups.
# Prints "slurm: ready" when the node is idle; exits non-zero with a reason otherwise.
set -euo pipefail

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge) \
            >/tmp/cosmic-slurm-apt.log 2>&1 || { echo "slurm: apt-get install slurm-wlm munge failed (/tmp/cosmic-slurm-apt.log)"; exit 1; }
    else
        echo "slurm: slurm-wlm and munge are not installed and cannot be (needs root and apt-get)"; exit 1
    fi
fi

cpus=$(nproc)
# leave 1 GB to the controller and the submitting Snakemake
memory_mb=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
cat >/etc/slurm/slurm.conf <<CONF
ClusterName=cosmic-ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
SchedulerParameters=sched_interval=1
MessageTimeout=30
NodeName=localhost CPUs=${cpus} RealMemory=${memory_mb} State=UNKNOWN
PartitionName=ci Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF

if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 0400 /etc/munge/munge.key
pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd -N localhost

for _ in $(seq 60); do
    if sinfo -h -N -o "%T" 2>/dev/null | grep -qx idle; then
        echo "slurm: ready (localhost, ${cpus} CPUs, ${memory_mb} MB, partition ci)"; exit 0
    fi
    sleep 1
done
echo "slurm: the node did not become idle within 60 s:"; sinfo -N -l || true
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log || true
exit 1
