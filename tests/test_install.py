"""The Pi install and uninstall scripts: lint-clean, and --dry-run shows every step, changes nothing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = [ROOT / "scripts" / n for n in (
    "install.sh", "uninstall.sh", "install-common.sh", "setup", "test", "demo", "bench", "bench-mqtt",
    "soak-crash", "make-test-audio", "test-install-chroot", "openwakeword-install", "eval-wake",
    "test-home-assistant", "bench-start", "wake-scores", "eval-confirm")]
SCRIPTS.append(ROOT / ".ci" / "run")
TOUCHED = [Path("/opt/edge-recorder"), Path("/etc/edge-recorder"), Path("/var/lib/edge-recorder"),
           Path("/etc/systemd/system/edge-recorder.service")]


def test_every_shell_script_passes_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (scripts/setup installs it)")
    proc = subprocess.run(["shellcheck", "-x", *map(str, SCRIPTS)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout


def test_install_dry_run_prints_every_step_and_changes_nothing() -> None:
    before = {p: p.exists() for p in TOUCHED}
    proc = subprocess.run([str(ROOT / "scripts" / "install.sh"), "--dry-run"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for expected in ("apt-get install", "useradd --system", "venv", "openwakeword-install",
                     "[pi,verifier]", "install -d -m 0700 -o edge-recorder", "models fetch --wake",
                     "/etc/edge-recorder/config.toml", "edge-recorder.service",
                     "systemctl enable --now edge-recorder"):
        assert expected in proc.stdout, expected
    assert {p: p.exists() for p in TOUCHED} == before
    assert "edge-recorder-web" not in proc.stdout and ",web]" not in proc.stdout  # off by default


def test_install_with_web_adds_the_page_and_its_unit() -> None:
    proc = subprocess.run([str(ROOT / "scripts" / "install.sh"), "--dry-run", "--web"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for expected in ("[pi,verifier,web]", "edge-recorder-web.service",
                     "systemctl enable --now edge-recorder-web", "edge-recorder web passwd"):
        assert expected in proc.stdout, expected


def test_uninstall_dry_run_says_where_the_recordings_are_and_offers_wipe() -> None:
    proc = subprocess.run([str(ROOT / "scripts" / "uninstall.sh"), "--dry-run"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # the daemon on its own: a disable naming the web page's unit as well fails as a whole where
    # that unit was never installed (install.sh without --web), and the daemon kept running
    assert "+ systemctl disable --now edge-recorder\n" in proc.stdout
    assert "edge-recorder-web" not in proc.stdout.split("rm -f")[0]  # no web unit here to disable
    assert "rm -f /etc/systemd/system/edge-recorder.service /etc/systemd/system/edge-recorder-web" \
        in proc.stdout
    assert "NOT removed: they are in /var/lib/edge-recorder" in proc.stdout and "wipe --yes" in proc.stdout
    wiping = subprocess.run([str(ROOT / "scripts" / "uninstall.sh"), "--dry-run", "--wipe"],
                            capture_output=True, text=True, timeout=60)
    assert "edge-recorder wipe --yes" in wiping.stdout and "rm -rf /var/lib/edge-recorder" in wiping.stdout


def test_bad_options_are_refused() -> None:
    proc = subprocess.run([str(ROOT / "scripts" / "install.sh"), "--frobnicate"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "unknown option --frobnicate" in proc.stderr


def test_an_update_of_the_same_version_is_installed_again(tmp_path: Path) -> None:
    """install.sh skips the package only when it was installed from this very source: a newer
    checkout of the same version (git pull) used to be taken for installed, and the old code ran."""
    def source_id(tree: Path) -> str:
        proc = subprocess.run(["bash", "-c", f'source "{ROOT}/scripts/install-common.sh"; source_id "$1"',
                               "_", str(tree)], capture_output=True, text=True, timeout=60, check=True)
        return proc.stdout.strip()

    tree = tmp_path / "src"
    (tree / "device" / "wake").mkdir(parents=True)
    (tree / "pyproject.toml").write_text('version = "0.2.0"\n')
    (tree / "device" / "wake" / "trigger.py").write_text("THRESHOLD = 0.7\n")
    first = source_id(tree)
    (tree / "device" / "wake" / "__pycache__").mkdir()
    (tree / "device" / "wake" / "__pycache__" / "trigger.cpython-311.pyc").write_bytes(b"\0")
    assert source_id(tree) == first and len(first) == 64  # bytecode is not source
    (tree / "device" / "wake" / "trigger.py").write_text("THRESHOLD = 0.3\n")
    assert source_id(tree) != first
    dry = subprocess.run([str(ROOT / "scripts" / "install.sh"), "--dry-run"], capture_output=True,
                         text=True, timeout=120)
    assert "record the source in /opt/edge-recorder/venv/edge-recorder.source" in dry.stdout
