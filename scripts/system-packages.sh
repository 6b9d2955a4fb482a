#!/usr/bin/env bash
# Debian packages the full test suite uses: a real Slurm with munge (tests marked `slurm`)
# and headless Chromium (tests marked `browser`). Idempotent; needs root.
set -euo pipefail
need=()
for pkg in slurmctld slurmd slurm-client munge chromium; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
echo "system packages ready: slurm $(sinfo --version 2>/dev/null | cut -d' ' -f2), $(chromium --version 2>/dev/null)"
