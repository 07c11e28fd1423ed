#!/usr/bin/env bash
# Install edge-recorder as a system service on Raspberry Pi OS (Bookworm / Trixie, 64-bit) or Debian.
#
#   sudo scripts/install.sh [--dry-run] [--no-start] [--web]
#
# Installs Debian packages, creates the system user `edge-recorder` (groups audio, gpio), a venv in
# /opt/edge-recorder, fetches and verifies the models, writes /etc/edge-recorder/config.toml from
# config/default.toml (never overwriting yours), and installs and enables the systemd unit.
# Idempotent: a second run changes nothing. --dry-run prints every step and changes nothing.
# --no-start enables the unit without starting it (in a chroot or when preparing an SD card image).
# --web also installs the local web page (`edge-recorder web`, unit edge-recorder-web; off without
# it): on this device only until you set web.host, a password and a certificate (docs/web.md).
set -euo pipefail
# shellcheck source=scripts/install-common.sh
source "$(dirname "$0")/install-common.sh"
cd "$(dirname "$0")/.."
SRC=$(pwd)

APT_PACKAGES=(python3-venv python3-dev libportaudio2 alsa-utils)
DRY_RUN=0
START=--now
WEB=0

for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    --no-start) START= ;;
    --web) WEB=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
  esac
done


require_root

ARCH=$(dpkg --print-architecture 2>/dev/null || uname -m)
case "$ARCH" in
  armhf|armel|armv7l|armv6l)
    echo "install.sh: this is a 32-bit system ($ARCH). edge-recorder needs 64-bit Raspberry Pi OS" >&2
    echo "    (arm64): its TFLite runtime, ai-edge-litert, has no 32-bit ARM builds. Reinstall with" >&2
    echo "    the 64-bit image (Raspberry Pi Imager: 'Raspberry Pi OS (64-bit)'); a Pi Zero 2 W runs it." >&2
    exit 1 ;;
esac

step "Debian packages: ${APT_PACKAGES[*]}"
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})) || [ "$DRY_RUN" -eq 1 ]; then
  run apt-get update -qq
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]:-${APT_PACKAGES[@]}}"
else
  done_already "all installed"
fi

step "System user $USER_NAME in groups audio and gpio"
if id "$USER_NAME" >/dev/null 2>&1; then
  done_already "user exists"
else
  run useradd --system --user-group --home-dir "$STATE" --no-create-home --shell /usr/sbin/nologin "$USER_NAME"
fi
for group in audio gpio; do
  if getent group "$group" >/dev/null; then
    if id -nG "$USER_NAME" 2>/dev/null | tr ' ' '\n' | grep -qx "$group"; then
      done_already "in group $group"
    else
      run usermod -aG "$group" "$USER_NAME"
    fi
  else
    printf '    note: no group %s on this system (not a Raspberry Pi?); skipped\n' "$group"
  fi
done

step "Python environment in $PREFIX/venv"
if [ -x "$PREFIX/venv/bin/python" ]; then
  done_already "venv exists"
else
  run python3 -m venv "$PREFIX/venv"
fi
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$SRC/pyproject.toml")
PYVER=$("$PREFIX/venv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")' 2>/dev/null || python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
# lgpio (gpiozero's pin driver on a Pi) has PyPI wheels for CPython 3.11 only. On Raspberry Pi OS
# Trixie (3.13) it comes from Raspberry Pi's own python3-lgpio package, linked into the venv; on
# a Debian without it (no GPIO to drive anyway) the speaker runs with simulated pins only.
# The `verifier` extra (scikit-learn) lets `edge-recorder enroll` and rejects train the owner
# verifier; it is on disk only: the daemon never imports it (device/wake/verifier.py).
EXTRAS="verifier"
if [ "$PYVER" = "3.11" ]; then
  EXTRAS="pi,verifier"
fi
if [ "$WEB" -eq 1 ]; then
  EXTRAS="$EXTRAS,web"  # Starlette, uvicorn, Jinja2, argon2-cffi: only with the page
fi
EXTRA="[$EXTRAS]"
web_ready() { [ "$WEB" -eq 0 ] || "$PREFIX/venv/bin/python" -c 'import starlette, uvicorn, jinja2, argon2' 2>/dev/null; }
SOURCE_ID=$(source_id "$SRC")
SOURCE_STAMP="$PREFIX/venv/edge-recorder.source"  # the source_id it was installed from
if [ "$("$PREFIX/venv/bin/edge-recorder" --version 2>/dev/null)" = "edge-recorder $VERSION" ] &&
   [ "$(cat "$SOURCE_STAMP" 2>/dev/null)" = "$SOURCE_ID" ] && web_ready; then
  done_already "edge-recorder $VERSION installed from this source"
else
  run "$PREFIX/venv/bin/pip" install -q --disable-pip-version-check "${SRC}${EXTRA}"
  # openwakeword's metadata requires tflite-runtime (broken beside NumPy 2): pinned, without deps.
  run "$SRC/scripts/openwakeword-install" "$PREFIX/venv/bin/python"
  printf '    + record the source in %s\n' "$SOURCE_STAMP"
  if [ "$DRY_RUN" -eq 0 ]; then printf '%s\n' "$SOURCE_ID" >"$SOURCE_STAMP"; fi
fi

step "GPIO driver (lgpio) for Python $PYVER"
if "$PREFIX/venv/bin/python" -c 'import lgpio' 2>/dev/null; then
  done_already "lgpio importable"
elif [ "$DRY_RUN" -eq 1 ] || apt-cache show python3-lgpio >/dev/null 2>&1; then
  dpkg-query -W -f='${Status}' python3-lgpio 2>/dev/null | grep -q "install ok installed" ||
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-lgpio
  SITE=$("$PREFIX/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null || echo "$PREFIX/venv/lib/python$PYVER/site-packages")
  for f in /usr/lib/python3/dist-packages/lgpio.py /usr/lib/python3/dist-packages/_lgpio*.so; do
    [ -e "$f" ] || [ "$DRY_RUN" -eq 1 ] || continue
    run ln -sf "$f" "$SITE/"
  done
else
  printf '    note: no lgpio for Python %s here (Raspberry Pi OS ships python3-lgpio); the speaker\n' "$PYVER"
  printf '    runs, but only with indicator.pin_factory = "mock" (no real LED)\n'
fi

step "State directory $STATE (0700, owned by $USER_NAME)"
if [ -d "$STATE" ] && [ "$(stat -c '%a %U' "$STATE")" = "700 $USER_NAME" ]; then
  done_already "exists"
else
  run install -d -m 0700 -o "$USER_NAME" -g "$USER_NAME" "$STATE"
fi

step "Models (SHA-256 verified)"
as_service() { run runuser -u "$USER_NAME" -- env "EDGE_RECORDER_STATE_DIR=$STATE" "$@"; }
models_ok() {
  runuser -u "$USER_NAME" -- env "EDGE_RECORDER_STATE_DIR=$STATE" "$PREFIX/venv/bin/edge-recorder" \
    models list 2>/dev/null | grep -c '"ok": true' || true
}
if [ "$DRY_RUN" -eq 0 ] && [ "$(models_ok)" -ge 7 ]; then
  done_already "wake-word models installed and verified"
else
  as_service "$PREFIX/venv/bin/edge-recorder" models fetch --wake
fi
if [ "$DRY_RUN" -eq 0 ] && [ "$(models_ok)" -ge 8 ]; then
  done_already "Vosk model installed and verified"
elif ! as_service "$PREFIX/venv/bin/edge-recorder" models fetch --vosk; then
  echo "    warning: the English Vosk model could not be fetched; clips will have no transcript" \
       "until you run: edge-recorder models fetch --vosk (or --vosk-zip FILE)"
fi

step "Configuration $ETC/config.toml"
if [ -e "$ETC/config.toml" ]; then
  done_already "kept your existing $ETC/config.toml"
else
  run install -d -m 0750 -o root -g "$USER_NAME" "$ETC"
  run install -m 0640 -o root -g "$USER_NAME" "$SRC/config/default.toml" "$ETC/config.toml"
fi

# install_unit NAME PATH: install systemd/NAME.service at PATH (if changed) and enable it.
install_unit() {
  if [ -e "$2" ] && cmp -s "$SRC/systemd/$1.service" "$2"; then
    done_already "unit up to date"
  else
    run install -m 0644 "$SRC/systemd/$1.service" "$2"
    if [ -d /run/systemd/system ] || [ "$DRY_RUN" -eq 1 ]; then
      run systemctl daemon-reload
    fi
  fi
  if [ "$DRY_RUN" -eq 0 ] && systemctl is-enabled --quiet "$1" 2>/dev/null; then
    done_already "enabled"
  else
    # shellcheck disable=SC2086  # $START is empty or --now
    run systemctl enable $START "$1"
  fi
}

if [ ! -d /run/systemd/system ] && [ "$DRY_RUN" -eq 0 ]; then
  START=  # systemd is not running here (a chroot, an image being prepared): enable only
fi
step "systemd unit $UNIT"
install_unit edge-recorder "$UNIT"

if [ "$WEB" -eq 1 ]; then
  step "Web page: systemd unit $WEB_UNIT (off until --web; loopback only until you set web.host)"
  install_unit edge-recorder-web "$WEB_UNIT"
  echo "    the page: http://127.0.0.1:8380/ on this device (ssh -L 8380:127.0.0.1:8380 from another);"
  echo "    for the home network set a password: sudo -u $USER_NAME env EDGE_RECORDER_STATE_DIR=$STATE $PREFIX/venv/bin/edge-recorder web passwd"
fi

step "Done. Check it with: $PREFIX/venv/bin/edge-recorder doctor --config $ETC/config.toml"
echo "    logs: journalctl -u edge-recorder -f    recordings: $STATE (owner-only, encrypted)"
