#!/usr/bin/env bash
# Debian packages for the SLURM integration test (tests/test_slurm.py): slurmctld, slurmd, the
# client commands and MUNGE. Nothing is configured or started here: the test runs its own private
# munged, slurmctld and slurmd from a temporary directory and stops them when it is done.
set -euo pipefail

needed=(slurmctld slurmd sbatch squeue sinfo munged)
missing=0
for tool in "${needed[@]}"; do
  command -v "$tool" >/dev/null || missing=1
done
if [ "$missing" = 0 ]; then
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends slurm-wlm munge
