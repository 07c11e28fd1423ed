"""Commands from the page: the same JSON as over MQTT, with a request id made when the page was
drawn (so a form sent twice is replayed, never done twice). Handed to the running daemon, which
runs them through its Controller and announces them on MQTT; without a daemon, run here through
the same Controller (device/control/handoff.py says why)."""

from __future__ import annotations

import logging
from typing import Any

from device.control import handoff
from device.control.commands import Controller
from device.core.errors import CommandError

log = logging.getLogger(__name__)


class Commands:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def run(self, kind: str, payload: dict[str, Any], local: bool) -> dict[str, Any]:
        """The reply event as a dict (`deleted`, `consent`, ... or `error`)."""
        reply = handoff.send(self.controller.store.state_dir, kind, payload, local)
        if reply is None:
            reply = handoff.run(self.controller, kind, payload, local).to_dict()
        log.info("web: %s %s -> %s", kind, payload.get("request_id"), reply.get("type"))
        return reply


def describe(reply: dict[str, Any]) -> str:
    """One line for the page about what a command did."""
    kind = reply.get("type")
    if kind == "error":
        return f"Not done: {reply.get('message')}"
    if kind == "deleted":
        n = len(reply.get("ids", []))
        what = "Deleted and counted as a false wake" if reply.get("reason") == "reject" else "Deleted"
        text = f"{what}: {n} clip{'s' if n != 1 else ''}."
        if reply.get("replayed"):
            text += " (This request was already done; nothing more was deleted.)"
        if reply.get("not_found"):
            text += f" {len(reply['not_found'])} no longer existed."
        pending = reply.get("remote", {}).get("pending", [])
        if pending:
            text += (f" {len(pending)} had been uploaded: the copy on the server is being deleted "
                     "(see What left this device).")
        return text
    if kind == "consent":
        return f"Uploads are off; {reply.get('purged', 0)} waiting upload(s) were cancelled."
    if kind == "sensitivity":
        return f"Wake sensitivity is now {reply.get('level')}."
    if kind == "save":
        until = f" until {reply['until']}" if reply.get("until") else ""
        return f"Saving now: {reply.get('mode')}{until}."
    raise CommandError("internal", f"unexpected reply {kind!r}")
