"""Thresholds, agree and cascade evaluated offline from cached per-frame scores (scripts/wake-scores).

    scripts/eval-confirm SCORES [--model alexa] [--split tune|test|all]

A quick model of the wake gate for choosing settings, not the reported figures (those come from
scripts/eval-wake, the daemon's own pipeline): a detector fires on a frame over its threshold; a
wake needs openWakeWord alone (none) or both within CONFIRM_WINDOW_S (agree), then nothing for
2 s. On negatives openWakeWord's score exists only where a cascade at the cache's level ran it, so
"none" is a lower bound there (frames it never scored count as 0).

The split, by speaker: SCORES/main (the project's 3.48 h: Precise, Picovoice's other words, spoken
digits, noise) and the real "alexa" takes numbered below TUNE_BELOW are for tuning; everything else
(SCORES/heldout, SCORES/more: other corpora, other people; the other "alexa" takes) is the test
part, never looked at while choosing. Picovoice does not label its speakers: its takes are numbered
in the order they were contributed, so a split by number keeps most speakers on one side.
Prints one JSON line per setting.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

WINDOW = round(1.5 / 0.08)
REFRACTORY = round(2.0 / 0.08)
TUNE_BELOW = 165
"""Real "alexa" takes 0..164 tune, 165..328 test."""
TUNE_SETS = ("main",)


def poisson_upper(events: int, hours: float) -> float:
    """95 % upper bound of a rate from `events` seen in `hours` (chi-square, one-sided)."""
    from scipy.stats import chi2

    return float(chi2.ppf(0.95, 2 * (events + 1)) / 2 / hours)


def wakes(oww: np.ndarray, mww: np.ndarray, t_oww: float, t_mww: float | None) -> list[int]:
    """Frames where the modelled gate wakes (t_mww None: openWakeWord alone)."""
    first = np.nan_to_num(oww, nan=0.0) > t_oww
    second = mww > t_mww if t_mww is not None else None
    out, quiet_until, pending_o, pending_m = [], -1, -1, -1
    for i in range(len(first)):
        if i <= quiet_until:
            continue
        if second is None:
            if first[i]:
                out.append(i)
                quiet_until = i + REFRACTORY
            continue
        if first[i] and pending_o < i - WINDOW:
            pending_o = i
        if second[i] and pending_m < i - WINDOW:
            pending_m = i
        if pending_o >= i - WINDOW and pending_m >= i - WINDOW and (first[i] or second[i]):
            out.append(i)
            quiet_until, pending_o, pending_m = i + REFRACTORY, -1, -1
    return out


def take_number(path: str) -> int | None:
    found = re.search(r"alexa__(\d+)\.flac$", path)
    return int(found.group(1)) if found else None


def in_split(path: str, scores_set: str, split: str) -> bool:
    if split == "all":
        return True
    number = take_number(path)
    tune = number < TUNE_BELOW if number is not None else scores_set in TUNE_SETS
    return tune == (split == "tune")


def evaluate(root: Path, model: str, split: str, settings: list[tuple[float, float | None]]
             ) -> list[dict[str, Any]]:
    rows: dict[tuple[float, float | None], dict[str, Any]] = {
        s: {"oww": s[0], "mww": s[1], "false": 0, "hours": 0.0, "by_source": {}, "found": 0,
            "takes": 0} for s in settings}
    for npz in sorted(root.glob("*/negatives/*.npz")):
        data = np.load(npz)
        col = list(data["models"]).index(model)
        files = data["files"]
        keep = np.array([in_split(str(files[f]), npz.parent.parent.name, split)
                         for f in data["frame_file"]])
        if not keep.any():
            continue
        oww, mww = data["oww"][keep, col], data["mww"][keep, col]
        for s, row in rows.items():
            n = len(wakes(oww, mww, *s))
            row["false"] += n
            row["hours"] += len(oww) * 0.08 / 3600
            if n:
                row["by_source"][f"{npz.parent.parent.name}/{npz.stem}"] = n
    for npz in sorted(root.glob("*/positives/*.npz")):
        if npz.stem != model:
            continue
        data = np.load(npz)
        col = list(data["models"]).index(model)
        for f, path in enumerate(data["files"]):
            if not in_split(str(path), npz.parent.parent.name, split):
                continue
            rows_of = data["frame_file"] == f
            oww, mww = data["oww"][rows_of, col], data["mww"][rows_of, col]
            for s, row in rows.items():
                row.setdefault("sets", {}).setdefault(npz.parent.parent.name, [0, 0])
                hit = bool(wakes(oww[13:], mww[13:], *s))  # not in the quiet first second
                row["sets"][npz.parent.parent.name][0] += hit
                row["sets"][npz.parent.parent.name][1] += 1
    out = []
    for row in rows.values():
        h = row["hours"]
        row["per_h"] = round(row["false"] / h, 3) if h else None
        row["per_h_95"] = round(poisson_upper(row["false"], h), 3) if h else None
        row["hours"] = round(h, 2)
        out.append(row)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scores")
    parser.add_argument("--model", default="alexa")
    parser.add_argument("--split", choices=("tune", "test", "all"), default="tune")
    parser.add_argument("--oww", type=lambda s: [float(x) for x in s.split(",")], default=[0.5, 0.7, 0.8])
    parser.add_argument("--mww", type=lambda s: [None if x == "none" else float(x) for x in s.split(",")],
                        default=[None, 0.1, 0.3, 0.5, 0.7, 0.9])
    args = parser.parse_args()
    settings = [(o, m) for o in args.oww for m in args.mww]
    for row in evaluate(Path(args.scores), args.model, args.split, settings):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
