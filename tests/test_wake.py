"""The wake-word runtime as an install leaves it: openwakeword on ai-edge-litert, without
scikit-learn and SciPy at start, and a clear instruction when openwakeword itself is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from device import OPENWAKEWORD_REQUIREMENT
from device.wake import detector as wake
from tests.helpers import REAL_LOAD_OPENWAKEWORD, assert_one_line_error, run_cli, spawn_cli

MISSING_OWW = "raise ImportError('No module named openwakeword (simulated)')\n"


def test_a_start_loads_neither_scikit_learn_nor_scipy_nor_onnxruntime(with_models: Path) -> None:
    code = ("import sys; from device.cli import main; main(['simulate', '--events', '/dev/null']); "
            "print(sorted(m for m in ('sklearn', 'scipy') if m in sys.modules), "
            "type(sys.modules.get('onnxruntime')).__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[]", "_NoOnnxRuntime"]
    assert "1 wake(s), 1 clip(s)" in proc.stderr  # and it still works


def test_without_openwakeword_the_first_command_says_exactly_what_to_run(
    with_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openwakeword.model", None)  # import fails, as when absent
    monkeypatch.setattr(wake, "load_openwakeword_model", REAL_LOAD_OPENWAKEWORD)
    line = assert_one_line_error(run_cli("simulate"), "openwakeword is not installed")
    assert f"{sys.executable} -m pip install --no-deps '{OPENWAKEWORD_REQUIREMENT}'" in line


def test_doctor_loads_the_runtime_not_only_the_files(
    with_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shadow = tmp_path / "shadow" / "openwakeword"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(MISSING_OWW)  # the files are fine; the library is not
    monkeypatch.setenv("PYTHONPATH", str(shadow.parent))
    cfg = tmp_path / "c.toml"
    cfg.write_text('[indicator]\npin_factory = "mock"\n')
    proc = spawn_cli("doctor", "--config", str(cfg))
    lines = proc.stdout.splitlines()
    [models] = [ln for ln in lines if ln.startswith("[FAIL] models:")]
    assert "the wake-word runtime does not load" in models and "not installed" in models
    fix = lines[lines.index(models) + 1]
    assert "pip install --no-deps" in fix and OPENWAKEWORD_REQUIREMENT in fix
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
