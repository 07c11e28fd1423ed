"""SIGKILL at random points while clips are written, deleted, swept and uploaded (issue 5).

The suite runs a few cycles of the harness; `scripts/soak-crash` runs the same harness for 500."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.crash_harness import run_cycles
from tests.helpers import WAKE_SENTENCE, concat_wavs

CYCLES = 6


@pytest.mark.slow
def test_no_invariant_breaks_across_random_kills(
    with_models: Path, speech: Callable[..., Path], tmp_path: Path, tls_material: dict[str, Path]
) -> None:
    one = speech(WAKE_SENTENCE)
    wav = concat_wavs(tmp_path / "long.wav", *([one] * 12), gap_s=1.0)
    report = run_cycles(CYCLES, tmp_path, wav, tls_material, seed=2026)
    assert report.violations == [], report.summary()
    assert report.cycles == CYCLES
    print(report.summary())
    assert report.clips_seen > 0 and report.deletes_acked > 0  # the harness did exercise it all
    assert report.uploads_received > 0
