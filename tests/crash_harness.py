"""Crash harness, shared by tests/test_crash.py (20 cycles) and scripts/soak-crash (500).

Each cycle: `edge-recorder simulate` runs over a long input with uploads on (consent granted) and a
fast retention sweeper, while `clips delete` runs beside it; the simulate process is SIGKILLed at a
random moment. Then the store is opened again (as a restart would) and the invariants are checked:
- every clip file has its index row and key, and every row its file and key (nothing half-written);
- no acknowledged delete has come back (not in the index, not on disk, no key);
- every remaining clip authenticates;
- no clip reached the upload server after its delete was acknowledged;
- every clip announced by a `clip` event still exists, unless an acknowledged delete or a retention
  sweep removed it (nothing is lost silently).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from device.control import consent  # noqa: E402
from device.storage.clips import ClipStore  # noqa: E402
from tests.upload_server import UploadServer  # noqa: E402

ENTRY_POINT = Path(sys.executable).parent / "edge-recorder"
STARTUP_TIMEOUT_S = 120


def _has_clip(path: Path) -> bool:
    return path.exists() and '"type": "clip"' in path.read_text()


@dataclass
class Report:
    cycles: int = 0
    clips_seen: int = 0
    deletes_acked: int = 0
    uploads_received: int = 0
    violations: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"cycles": self.cycles, "clips_seen": self.clips_seen,
                "deletes_acked": self.deletes_acked, "uploads_received": self.uploads_received,
                "violations": len(self.violations), "examples": self.violations[:5]}


def run_cycles(n: int, workdir: Path, wav: Path, tls: dict[str, Path], seed: int = 0) -> Report:
    rng = random.Random(seed)
    state = workdir / "state"
    server = UploadServer(tls)
    cfg = workdir / "crash.toml"
    cfg.write_text(f'[upload]\nurl = "{server.url}"\nca_file = "{tls["ca"]}"\n'
                   'backoff_initial_s = 0.05\nbackoff_max_s = 0.2\nhold_s = 0.0\n'
                   '[retention]\nmax_bytes = 1048576\nsweep_interval_s = 0.3\nmax_age = "1h"\n')
    env = {**os.environ, "EDGE_RECORDER_STATE_DIR": str(state)}
    store = ClipStore(state)
    consent.grant(store, ("audio", "transcript"))
    store.close()
    acked: dict[str, float] = {}
    report = Report()
    try:
        for cycle in range(n):
            one_cycle(cycle, rng, cfg, env, wav, state, acked, report)
            announced, swept = _clips_in(state.parent / f"events{cycle}.jsonl")
            check(state, server, acked, report, cycle, announced - swept)
            report.cycles += 1
    finally:
        server.close()
    report.deletes_acked = len(acked)
    report.uploads_received = len(server.accepted)
    return report


def one_cycle(cycle: int, rng: random.Random, cfg: Path, env: dict[str, str], wav: Path,
              state: Path, acked: dict[str, float], report: Report) -> None:
    events = state.parent / f"events{cycle}.jsonl"
    sim = subprocess.Popen([str(ENTRY_POINT), "simulate", str(wav), "--config", str(cfg),
                            "--events", str(events)],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop = threading.Event()
    deleter = threading.Thread(target=delete_while_running, args=(env, stop, acked, cycle, rng))
    deleter.start()
    # Kill at a random point once clips are being written (models loaded, first clip stored), so
    # every cycle lands among writes, deletes, sweeps and uploads however slow the machine is.
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while sim.poll() is None and time.monotonic() < deadline and not _has_clip(events):
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 3.0))
    sim.send_signal(signal.SIGKILL)
    sim.wait()
    stop.set()
    deleter.join()
    if events.exists():
        report.clips_seen += sum('"type": "clip"' in line for line in events.read_text().splitlines())


def delete_while_running(env: dict[str, str], stop: threading.Event, acked: dict[str, float],
                         cycle: int, rng: random.Random) -> None:
    i = 0
    while not stop.wait(rng.uniform(0.3, 1.0)):
        form = rng.choice([["--last", "1h"], ["--all"]])
        proc = subprocess.run([str(ENTRY_POINT), "clips", "delete", *form, "--request-id",
                               f"c{cycle}-{i}"], env=env, capture_output=True, text=True, timeout=60)
        i += 1
        if proc.returncode == 0:
            done = time.monotonic()
            for cid in json.loads(proc.stdout)["ids"]:
                acked.setdefault(cid, done)


def _clips_in(events: Path) -> tuple[set[str], set[str]]:
    """(clips announced, clips deleted by retention) in one cycle's event stream."""
    announced: set[str] = set()
    swept: set[str] = set()
    for line in events.read_text().splitlines() if events.exists() else []:
        try:
            e = json.loads(line)
        except ValueError:
            continue  # the last line may be cut by the kill
        if e["type"] == "clip":
            announced.add(e["id"])
        elif e["type"] == "deleted" and e.get("reason") == "retention":
            swept |= set(e["ids"])
    return announced, swept


def check(state: Path, server: UploadServer, acked: dict[str, float], report: Report,
          cycle: int, announced: set[str]) -> None:
    store = ClipStore(state)  # a restart: the sweep finishes what the crash interrupted
    try:
        files = {p.stem for p in store.clips_dir.iterdir()}
        rows = {c.id for c in store.all()}
        keys = store.keys.ids()
        bad = []
        if not files == rows == keys:
            bad.append(f"files/rows/keys differ: {len(files)}/{len(rows)}/{len(keys)}")
        if back := (files | rows | keys) & set(acked):
            bad.append(f"acknowledged deletes came back: {sorted(back)[:3]}")
        if lost := announced - set(acked) - rows:
            bad.append(f"announced clips lost: {sorted(lost)[:3]}")
        for cid in rows:
            try:
                store.read_audio(store.get(cid))
            except Exception as exc:
                bad.append(f"clip {cid} unreadable: {exc}")
        for post in server.posts():
            key = post.headers.get("Idempotency-Key", "")
            if key in acked and post.at > acked[key] + 0.05:
                bad.append(f"clip {key} uploaded after its delete was acknowledged")
        report.violations += [f"cycle {cycle}: {b}" for b in bad]
    finally:
        store.close()
