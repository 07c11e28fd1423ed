"""Per-day counts, and their one owner: what the owner sees with `edge-recorder stats` (wakes,
clips kept, false wakes rejected, discarded by reason, voice commands). Counts only: no ids, no
times finer than the local day."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from device.storage.db import Database

SCHEMA = """CREATE TABLE stats (
    day TEXT NOT NULL,               -- local date
    name TEXT NOT NULL,              -- wakes, kept, rejected, discarded_<reason>
    count INTEGER NOT NULL,
    PRIMARY KEY (day, name)
);
"""
DISCARDED = "discarded_"


def false_wakes(day: dict[str, Any]) -> int:
    """A day's false wakes, from a row of `Stats.days`: every wake discarded (for any reason) and
    every recording rejected as not meant for the speaker."""
    return sum(day.get("discarded", {}).values()) + day.get("rejected", 0)


class Stats:
    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, counts: dict[str, int]) -> None:
        """Add to today's counters, joining the caller's transaction, if any."""
        if not counts:
            return
        today = datetime.now().astimezone().date().isoformat()
        with self._db.transaction() as tx:
            tx.executemany("INSERT INTO stats (day, name, count) VALUES (?, ?, ?) ON CONFLICT(day, "
                           "name) DO UPDATE SET count = count + excluded.count",
                           [(today, name, n) for name, n in counts.items()])

    def days(self, days: int = 7) -> list[dict[str, Any]]:
        """Per local day, newest first: {"day", "wakes", "kept", "rejected", "discarded": {...}}."""
        since = (datetime.now().astimezone().date() - timedelta(days=days - 1)).isoformat()
        out: dict[str, dict[str, Any]] = {}
        for day, name, n in self._db.read(
                "SELECT day, name, count FROM stats WHERE day >= ? ORDER BY day DESC", (since,)):
            row = out.setdefault(day, {"day": day, "wakes": 0, "kept": 0, "rejected": 0,
                                       "discarded": {}})
            if name.startswith(DISCARDED):
                row["discarded"][name.removeprefix(DISCARDED)] = n
            else:
                row[name] = n
        return list(out.values())

    def clear(self) -> None:
        with self._db.transaction() as tx:
            tx.execute("DELETE FROM stats")
