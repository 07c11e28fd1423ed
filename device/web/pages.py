"""What each page shows, read from the store, the upload queue and the run-time settings: plain
data for the templates (which escape every value they print)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from device.control import consent
from device.control.save_mode import SaveState
from device.control.sensitivity import SensitivityState
from device.storage.clips import Clip, ClipStore
from device.storage.stats import false_wakes

WAV_BYTES_PER_S = 32000
"""16 kHz, 16-bit mono: a clip file holding audio is at least half its duration's worth of this;
one saved as a transcript only holds a header of a few kilobytes."""
UPLOAD_STATES = {
    None: "local only",
    "held": "waiting in the hold window",
    "queued": "waiting to upload",
    "sending": "uploading now",
    "uploaded": "uploaded",
    "failed": "upload failed",
    "remote_delete_pending": "remote copy: delete requested, not yet confirmed",
    "remote_deleted": "remote copy deleted (confirmed by the server)",
}


@dataclass(frozen=True)
class ClipRow:
    id: str
    when: str
    duration_s: float
    wake_word: str
    score: float
    transcript: str | None
    saved: str
    """"audio" (plays), "transcript" (saved as text only) or "uploaded" (local copy removed)."""
    upload: str
    upload_state: str | None


def local_time(iso: str) -> datetime:
    return datetime.fromisoformat(iso).astimezone()


def clip_rows(store: ClipStore, hold_s: float) -> list[ClipRow]:
    """Every kept clip, newest first."""
    sizes = {cid: size for cid, _, size in store.bytes_used()}
    states = store.uploads.clip_states(hold_s)
    return [_row(clip, sizes.get(clip.id, 0), states.get(clip.id)) for clip in reversed(store.all())]


def _row(clip: Clip, size: int, state: str | None) -> ClipRow:
    when = local_time(clip.recorded_at)
    if not clip.audio_file:
        saved = "uploaded"
    else:
        saved = "audio" if size >= clip.duration_s * WAV_BYTES_PER_S / 2 else "transcript"
    return ClipRow(clip.id, when.strftime("%Y-%m-%d %H:%M:%S"), clip.duration_s, clip.wake_word,
                   clip.wake_score, clip.transcript, saved, UPLOAD_STATES.get(state, state or ""), state)


@dataclass(frozen=True)
class Day:
    day: str
    wakes: int
    false_wakes: int
    deleted: int
    kept: int


def days(stats: Callable[[int], list[dict[str, Any]]], n: int = 14) -> list[Day]:
    """The last n local days, oldest first, every day present (0 when nothing happened);
    `stats(days)` is the Controller's per-day counts."""
    by_day = {row["day"]: row for row in stats(n)}
    today = datetime.now().astimezone().date()
    out = []
    for i in range(n - 1, -1, -1):
        d = (today - timedelta(days=i)).isoformat()
        row = by_day.get(d, {})
        out.append(Day(d, row.get("wakes", 0), false_wakes(row), row.get("deleted", 0),
                       row.get("kept", 0)))
    return out


def chart(rows: list[Day], width: int = 640, height: int = 160) -> dict[str, Any]:
    """Bar geometry for the day chart (an SVG in the template, no script): three bars per day."""
    series = ("wakes", "false_wakes", "deleted")
    top = max([getattr(r, s) for r in rows for s in series] + [1])
    slot = width / max(len(rows), 1)
    bar = slot / (len(series) + 1)
    bars = []
    for i, r in enumerate(rows):
        for j, s in enumerate(series):
            h = round(getattr(r, s) / top * (height - 20), 1)
            bars.append({"x": round(i * slot + (j + 0.5) * bar, 1), "y": round(height - 16 - h, 1),
                         "w": round(bar, 1), "h": h, "series": s, "value": getattr(r, s),
                         "day": r.day})
    labels = [{"x": round(i * slot + slot / 2, 1), "text": date.fromisoformat(r.day).strftime("%d")}
              for i, r in enumerate(rows)]
    return {"width": width, "height": height, "bars": bars, "labels": labels, "top": top}


def sent(store: ClipStore) -> list[dict[str, Any]]:
    """What left the device, newest first, with local times."""
    return [{**row, "when": datetime.fromtimestamp(row["at"], UTC).astimezone()
             .strftime("%Y-%m-%d %H:%M:%S")} for row in store.uploads.sent_log()]


def controls(sensitivity: SensitivityState, save: SaveState, store: ClipStore) -> dict[str, Any]:
    """Sensitivity, save mode and consent as they are now."""
    now = save.refresh()
    return {"sensitivity": sensitivity.refresh(), "sensitivity_configured": sensitivity.configured,
            "save": now.mode, "save_until": now.until_iso(), "save_configured": save.configured,
            "consent": consent.read(store).summary()}
