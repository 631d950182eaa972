# Sourced by .ci/run (root): a one-node SLURM cluster for tests/test_slurm.py, stopped when the
# run ends. A missing or broken cluster then fails those tests instead of skipping them.
apt-get update -q >/dev/null
apt-get install -y -q slurm-wlm munge >/dev/null
scripts/slurm_start.sh
export SLURM_CONF="${PROMPTRL_SLURM_DIR:-/tmp/promptrl-slurm}/slurm.conf"
export PROMPTRL_REQUIRE_SLURM=1
trap scripts/slurm_stop.sh EXIT
