#!/usr/bin/env bash
# Install Debian's Slurm (slurmctld, slurmd, client tools) and munge.
#
# Idempotent: does nothing when every package is already installed; runs
# `apt-get update` only when a package cannot be found in the current lists.
# Needs root (or sudo). Usage: scripts/slurm/install.sh
set -euo pipefail

PKGS=(slurmctld slurmd slurm-client munge)

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "slurm install: already installed: ${PKGS[*]}"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists only if apt does not know a candidate for a package.
need_update=0
for p in "${missing[@]}"; do
    cand=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then need_update=1; fi
done
if [ $need_update = 1 ]; then
    echo "slurm install: apt-get update"
    $SUDO apt-get update -q
fi
echo "slurm install: installing ${missing[*]}"
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "slurm install: done"
