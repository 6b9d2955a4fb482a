#!/usr/bin/env bash
# Stop the one-node Slurm that scripts/slurm/start.sh started.
#
# Usage: scripts/slurm/stop.sh        Env: PD_SLURM_DIR (default /tmp/pdslurm)
#
# Cancels every job first (job steps outlive slurmd otherwise), waits for them to leave
# the queue, then stops slurmd, slurmctld and munged -- only the processes whose PIDs
# start.sh recorded in $PD_SLURM_DIR/pids, and only if they still run the expected
# program. A munged that start.sh found already running is left alone.
# Idempotent: nothing running is not an error. The state folder is kept (logs, jobcomp).
set -uo pipefail

DIR=${PD_SLURM_DIR:-/tmp/pdslurm}
PIDS="$DIR/pids"
if [ -f "$DIR/slurm.conf" ]; then export SLURM_CONF="$DIR/slurm.conf"; fi

log() { echo "slurm stop: $*"; }

pid_of() {  # pid_of NAME -> prints the recorded PID if that process still runs NAME
    local f="$PIDS/$1.pid" pid
    [ -f "$f" ] || return 1
    pid=$(cat "$f")
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    [ "$(cat /proc/$pid/comm 2>/dev/null)" = "$1" ] || return 1
    echo "$pid"
}

stop_pid() {  # stop_pid NAME: SIGTERM, wait up to 10 s, then SIGKILL
    local name=$1 pid
    if ! pid=$(pid_of "$name"); then
        rm -f "$PIDS/$name.pid"
        return
    fi
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do
        [ -d "/proc/$pid" ] || break
        sleep 0.1
    done
    if [ -d "/proc/$pid" ]; then
        log "$name ($pid) ignored SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null
    fi
    rm -f "$PIDS/$name.pid"
    log "$name ($pid) stopped"
}

if pid_of slurmctld >/dev/null; then
    jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
        log "cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null
        for _ in $(seq 150); do
            [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.2
        done
        left=$(squeue -h -o '%i %T' 2>/dev/null)
        [ -n "$left" ] && log "jobs still listed after 30 s: $left"
    fi
fi

stop_pid slurmd
stop_pid slurmctld
stop_pid munged
log "done"
