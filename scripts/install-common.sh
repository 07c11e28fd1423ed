# Shared by scripts/install.sh and scripts/uninstall.sh (sourced, not run): where things go, and
# what --dry-run means. The caller sets DRY_RUN (0 or 1) before calling run().
# shellcheck shell=bash

# shellcheck disable=SC2034  # used by the scripts that source this file
{
  PREFIX=/opt/edge-recorder
  ETC=/etc/edge-recorder
  STATE=/var/lib/edge-recorder
  USER_NAME=edge-recorder
  UNIT=/etc/systemd/system/edge-recorder.service
  WEB_UNIT=/etc/systemd/system/edge-recorder-web.service
}

step() { printf '==> %s\n' "$*"; }
run() {
  printf '    + %s\n' "$*"
  if [ "$DRY_RUN" -eq 0 ]; then "$@"; fi
}
done_already() { printf '    ok: %s\n' "$*"; }

# What an installed edge-recorder was built from: its version alone misses an update from a newer
# checkout of the same version (git pull), which then kept running the old code.
source_id() {
  (cd "$1" && find pyproject.toml device -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 |
    LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}

require_root() {
  if [ "$DRY_RUN" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
    echo "$(basename "$0"): run as root (sudo $0), or try --dry-run" >&2
    exit 1
  fi
}
