#!/usr/bin/env bash
# Remove the edge-recorder service installed by scripts/install.sh.
#
#   sudo scripts/uninstall.sh [--dry-run] [--wipe]
#
# Stops and removes the unit, the venv in /opt/edge-recorder, /etc/edge-recorder and the system
# user. Recordings in /var/lib/edge-recorder are kept unless --wipe is given, in which case every
# key is destroyed first (`edge-recorder wipe`) and then the directory is removed.
set -euo pipefail
# shellcheck source=scripts/install-common.sh
source "$(dirname "$0")/install-common.sh"

DRY_RUN=0
WIPE=0

for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    --wipe) WIPE=1 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "uninstall.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
  esac
done


require_root

step "Service"
# One unit per call: `systemctl disable` fails as a whole when any unit it is given does not
# exist, and the web page's unit is only there after `install.sh --web`.
run systemctl disable --now edge-recorder || true
if [ -e "$WEB_UNIT" ]; then
  run systemctl disable --now edge-recorder-web || true
fi
if [ -x "$PREFIX/venv/bin/edge-recorder" ] && [ -e "$ETC/config.toml" ]; then
  # Remove the speaker from Home Assistant (empty retained discovery payload); no broker: skip.
  run runuser -u "$USER_NAME" -- env "EDGE_RECORDER_STATE_DIR=$STATE" "$PREFIX/venv/bin/edge-recorder" \
    mqtt forget --config "$ETC/config.toml" || true
fi
run rm -f "$UNIT" "$WEB_UNIT"
run systemctl daemon-reload

if [ "$WIPE" -eq 1 ]; then
  step "Recordings: destroying every key, then the files ($STATE)"
  run runuser -u "$USER_NAME" -- env "EDGE_RECORDER_STATE_DIR=$STATE" "$PREFIX/venv/bin/edge-recorder" wipe --yes
  run rm -rf "$STATE"
fi

step "Program and configuration"
run rm -rf "$PREFIX" "$ETC"
run userdel "$USER_NAME" || true

if [ "$WIPE" -eq 0 ]; then
  step "Your recordings were NOT removed: they are in $STATE (encrypted, owner-only)."
  echo "    To destroy them for good, run this before uninstalling:"
  echo "      sudo runuser -u $USER_NAME -- env EDGE_RECORDER_STATE_DIR=$STATE $PREFIX/venv/bin/edge-recorder wipe --yes"
  echo "    or uninstall with --wipe; or delete $STATE yourself."
fi
