"""Settings kept across restarts, and their one owner: what the owner chose at run time (the wake
sensitivity, the save mode and its end, the consent record). Each is a name and a text value; what
a value means is its user's (device/control/)."""

from __future__ import annotations

from device.storage.db import Database

SCHEMA = "CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);\n"


class Preferences:
    def __init__(self, db: Database) -> None:
        self._db = db

    def get(self, name: str, default: str) -> str:
        row = self._db.one("SELECT value FROM settings WHERE name = ?", (name,))
        return default if row is None else str(row[0])

    def set(self, name: str, value: str) -> None:
        """Durable when it returns; joins the caller's transaction, if any."""
        with self._db.transaction() as tx:
            tx.execute("INSERT INTO settings (name, value) VALUES (?, ?) "
                       "ON CONFLICT(name) DO UPDATE SET value = excluded.value", (name, value))

    def clear(self) -> None:
        with self._db.transaction() as tx:
            tx.execute("DELETE FROM settings")
