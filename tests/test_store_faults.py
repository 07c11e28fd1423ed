"""A bad day for the store (issue 24: items 1, 2, 8, 9): a lock is not corruption, a key rotation
in another process is not corruption, what is set aside is still kept to every promise (listed,
deleted, expired, wiped off the raw disk), a rebuilt empty index raises no false alarm, and an upload
that may have reached the server before it failed still gets its remote delete. And what a code
review found (each reproduced first): a crash during an index rebuild, or between an uploaded clip's
row and its local copy, loses nothing at the next start; revoking consent reaches an upload that
timed out."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from device.control import consent
from device.control.commands import Controller, DeleteCommand
from device.control.mute import MuteState
from device.core.config import RetentionSettings, Settings
from device.core.events import EventSink
from device.doctor import check_store
from device.storage import db, keystore
from device.storage.clip_rows import ClipRows
from device.storage.clips import ClipStore
from device.storage.retention import sweep
from device.storage.upload_queue import UPLOAD
from tests.helpers import (
    ENTRY_POINT,
    WAKE_SENTENCE,
    add_clip,
    concat_wavs,
    indexed,
    run_cli,
    snapshot,
    tmpfs,
    wait_until,
)
from tests.test_faults import ext4, kek_slots  # noqa: F401  (ext4: the fixture)
from tests.test_upload import Running, record, settings
from tests.upload_server import UploadServer

WAIT_S = 30
BUSY = "is in use by another process; nothing was changed"
HOLDER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1])
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
db.rollback()
"""
ROTATOR = """
import sys, time
from pathlib import Path
from device.storage.keystore import KeyStore
keys = KeyStore(Path(sys.argv[1]))
print("ready", flush=True)
end, n = time.monotonic() + float(sys.argv[2]), 0
while time.monotonic() < end:
    keys.destroy(["0" * 32])  # a delete of nothing still rotates the key-encryption key
    n += 1
print(n, flush=True)
"""


@contextmanager
def locked_by_another_process(database: Path) -> Iterator[None]:
    """A real second process holds `BEGIN EXCLUSIVE` on the database until the block ends."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(database)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout and holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.communicate("\n", timeout=WAIT_S)


@contextmanager
def rotating_keys(state_dir: Path, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """A real second process rotating the key-encryption key as fast as it can (every delete does)."""
    rotator = subprocess.Popen([sys.executable, "-c", ROTATOR, str(state_dir), str(seconds)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=Path(__file__).parent.parent)
    assert rotator.stdout and rotator.stdout.readline().strip() == "ready"
    yield rotator
    out, err = rotator.communicate(timeout=WAIT_S)
    assert rotator.returncode == 0, err
    assert int(out) > 3  # it did rotate, many times, meanwhile


def slow_kek_reads(monkeypatch: pytest.MonkeyPatch, delay_s: float = 0.3) -> None:
    """The injected fault: 0.3 s between reading the generation and reading its slot."""
    read = keystore.KekFile.slots

    def slow(self: keystore.KekFile) -> list[tuple[int, bytes] | None]:
        time.sleep(delay_s)
        return read(self)

    monkeypatch.setattr(keystore.KekFile, "slots", slow)


def set_aside_names(state_dir: Path) -> list[str]:
    names = [p.name for p in state_dir.iterdir() if ".unreadable-" in p.name or ".corrupt-" in p.name]
    quarantine = state_dir / "quarantine"
    return names + ([p.name for p in quarantine.iterdir()] if quarantine.exists() else [])


def listed(proc: subprocess.CompletedProcess[str]) -> set[str]:
    assert proc.returncode == 0, proc.stderr
    return {json.loads(x)["id"] for x in proc.stdout.splitlines()}


def damage_key_index(state_dir: Path) -> None:
    """A real integrity fault that leaves the keys themselves readable: the key table's index page
    is overwritten (PRAGMA quick_check fails; a plain scan of the table still reads every key)."""
    conn = sqlite3.connect(state_dir / "keys.sqlite")
    page = conn.execute("SELECT rootpage FROM sqlite_master WHERE name LIKE "
                        "'sqlite_autoindex_wrapped_keys%'").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with (state_dir / "keys.sqlite").open("r+b") as f:
        f.seek((page - 1) * size)
        f.write(b"\xff" * 8)


# -- 1. a lock is not corruption -----------------------------------------------------------------

@pytest.mark.parametrize(("database", "what"), [("keys.sqlite", "the key store"),
                                                ("index.sqlite", "the index")])
def test_a_database_locked_by_another_process_is_busy_not_corrupt(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, database: str, what: str
) -> None:
    store = ClipStore(state_dir)
    ids = {add_clip(store) for _ in range(3)}
    store.close()
    before = snapshot(state_dir)
    monkeypatch.setattr(db, "BUSY_TIMEOUT_S", 0.3)  # the 30 s timeout, shortened: the same path
    with locked_by_another_process(state_dir / database):
        proc = run_cli("clips", "list")
    assert proc.returncode == 75 and proc.stdout == "" and "Traceback" not in proc.stderr
    [line] = proc.stderr.splitlines()
    assert f"{what} {BUSY}" in line
    assert snapshot(state_dir) == before and set_aside_names(state_dir) == []  # nothing moved
    assert listed(run_cli("clips", "list")) == ids  # and nothing lost


@pytest.mark.slow
def test_opening_the_key_store_during_a_rotation_in_another_process_loses_nothing(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ClipStore(state_dir)
    ids = {add_clip(store) for _ in range(3)}
    store.close()
    slow_kek_reads(monkeypatch)
    with rotating_keys(state_dir, seconds=1.0):
        runs = [run_cli("clips", "list")]
    assert all(listed(r) == ids and r.stderr == "" for r in runs)
    assert set_aside_names(state_dir) == []
    store = ClipStore(state_dir)
    assert all(store.read_audio(store.get(cid)) for cid in ids)


def test_a_damaged_key_store_is_not_set_aside_while_another_process_uses_the_directory(
    state_dir: Path
) -> None:
    daemon = ClipStore(state_dir)  # holds the state directory, as a running daemon does
    ids = {add_clip(daemon) for _ in range(2)}
    damage_key_index(state_dir)
    proc = run_cli("clips", "list")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    [line] = proc.stderr.splitlines()
    assert "nothing was changed while another edge-recorder process uses it" in line
    assert set_aside_names(state_dir) == []
    daemon.close()
    proc = run_cli("clips", "list")  # alone now: set aside once, and its clips are quarantined
    assert proc.returncode == 0 and proc.stderr.count("the key store could not be read") == 1
    quarantined = [json.loads(x) for x in run_cli("clips", "list", "--quarantined").stdout.splitlines()]
    assert {q["name"] for q in quarantined if q["quarantined"] == "clip"} == ids


class RealtimeDaemon:
    """`edge-recorder simulate --realtime` over two wake sentences 4 s apart (about 13 s): a
    daemon that records while the test acts beside it."""

    def __init__(self, wav: Path, state_dir: Path, events: Path) -> None:
        self.events_file = events
        self.proc = subprocess.Popen(
            [str(ENTRY_POINT), "simulate", str(wav), "--realtime", "--events", str(events),
             "--state-dir", str(state_dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=dict(os.environ))

    def clips(self) -> list[str]:
        lines = self.events_file.read_text().splitlines() if self.events_file.exists() else []
        return [e["id"] for e in map(json.loads, lines) if e["type"] == "clip"]

    def finish(self) -> str:
        """Wait for the end of the input; its stderr."""
        _, err = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0, err
        return err


@pytest.fixture
def realtime_daemon(with_models: Path, speech: Callable[..., Path], tmp_path: Path,
                    state_dir: Path) -> Iterator[RealtimeDaemon]:
    one = speech(WAKE_SENTENCE)
    wav = concat_wavs(tmp_path / "two.wav", one, one, gap_s=4.0)
    daemon = RealtimeDaemon(wav, state_dir, tmp_path / "events.jsonl")
    yield daemon
    if daemon.proc.poll() is None:
        daemon.proc.kill()
        daemon.proc.wait()


@pytest.mark.slow
def test_a_running_daemon_keeps_recording_through_a_locked_key_store_and_a_rotation(
    realtime_daemon: RealtimeDaemon, state_dir: Path
) -> None:
    wait_until(lambda: realtime_daemon.clips(), 90, "the daemon recorded nothing")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(db, "BUSY_TIMEOUT_S", 0.3)
        with locked_by_another_process(state_dir / "keys.sqlite"):  # 1. the lock
            busy = run_cli("clips", "list")
    assert busy.returncode == 75 and BUSY in busy.stderr
    with pytest.MonkeyPatch.context() as patch:
        slow_kek_reads(patch)
        with rotating_keys(state_dir, seconds=1.0):  # 2. a rotation while the CLI opens the keys
            assert listed(run_cli("clips", "list")) >= set(realtime_daemon.clips()[:1])
    before = len(realtime_daemon.clips())
    err = realtime_daemon.finish()
    assert len(realtime_daemon.clips()) == 2 > before  # it kept recording after both faults
    assert "readonly database" not in err and "ERROR" not in err
    assert listed(run_cli("clips", "list")) == set(realtime_daemon.clips())  # nothing lost
    assert set_aside_names(state_dir) == []


# -- 2. what is set aside keeps every promise -------------------------------------------------------

@pytest.fixture
def set_aside(state_dir: Path) -> tuple[set[str], str]:
    """Three clips whose key store failed its integrity check (keys still readable) and was set
    aside by the next command: (the clip ids, the set-aside key store's name)."""
    store = ClipStore(state_dir)
    ids = {add_clip(store) for _ in range(3)}
    store.close()
    damage_key_index(state_dir)
    assert run_cli("clips", "list").returncode == 0
    [aside] = [p.name for p in state_dir.glob("keys.sqlite.unreadable-*")]
    return ids, aside


def quarantined(kind: str | None = None, state: Path | None = None) -> list[dict[str, Any]]:
    where = ["--state-dir", str(state)] if state else []  # else EDGE_RECORDER_STATE_DIR's
    rows = [json.loads(x) for x in run_cli("clips", "list", "--quarantined", *where).stdout.splitlines()]
    return [r for r in rows if kind is None or r["quarantined"] == kind]


def test_what_is_quarantined_is_listed_and_doctor_counts_it(
    set_aside: tuple[set[str], str], state_dir: Path
) -> None:
    ids, aside = set_aside
    clips = quarantined("clip")
    assert {c["name"] for c in clips} == ids and all(c["opened_by"] == aside for c in clips)
    [store] = quarantined("key_store")
    assert store["name"] == aside and store["keys"] == 3
    check = check_store(Settings(), state_dir)
    assert check.ok and "4 item(s) quarantined" in check.detail


@pytest.mark.parametrize("how", [["clips", "delete", "--all"], ["clips", "delete", "--quarantined"],
                                 ["wipe", "--yes"]])
def test_deleting_everything_reaches_the_quarantine(
    set_aside: tuple[set[str], str], state_dir: Path, how: list[str]
) -> None:
    ids, _ = set_aside
    proc = run_cli(*how)
    assert proc.returncode == 0, proc.stderr
    assert quarantined() == [] and set_aside_names(state_dir) == []
    assert not list(state_dir.glob("keys.*.unreadable-*"))


def test_quarantined_clips_expire_with_retention_and_take_their_key_store_along(
    set_aside: tuple[set[str], str], state_dir: Path
) -> None:
    ids, aside = set_aside
    store = ClipStore(state_dir)
    young = add_clip(store)
    retention = RetentionSettings(max_age="7d")
    assert sweep(store, retention, EventSink()) == [] and len(quarantined()) == 4  # all young
    old = sorted(ids)[0]
    week_ago = time.time() - timedelta(days=8).total_seconds()
    os.utime(state_dir / "quarantine" / f"{old}.clip", (week_ago, week_ago))
    sweep(store, retention, EventSink())
    assert quarantined() == []  # the oldest clip took its key store, and so every clip it opens
    assert not (state_dir / aside).exists() and indexed(store) == {young}


@pytest.mark.parametrize("how", [["wipe", "--yes"], ["clips", "delete", "--all"],
                                 ["clips", "delete", "--quarantined"]])
def test_a_quarantined_key_store_is_crypto_erased_on_the_raw_disk(
    ext4: tuple[Path, Path], how: list[str]  # noqa: F811
) -> None:
    image, mnt = ext4
    state = mnt / "state"
    store = ClipStore(state)
    doomed = add_clip(store)
    key = store.keys.get(doomed)
    wrapped = bytes(store.keys.db.one("SELECT wrapped FROM wrapped_keys WHERE clip_id = ?",
                                      (doomed,))[0])
    store.close()
    damage_key_index(state)
    assert run_cli("clips", "list", "--state-dir", str(state)).returncode == 0  # set aside
    [clip] = quarantined("clip", state)
    assert clip["name"] == doomed and clip["opened_by"]  # still decryptable
    assert run_cli(*how, "--state-dir", str(state)).returncode == 0
    subprocess.run(["umount", str(mnt)], check=True)
    raw = image.read_bytes()

    assert key is not None and key not in raw
    for kek in kek_slots(raw):  # no KEK left anywhere unwraps the quarantined clip's key
        with pytest.raises(InvalidTag):
            AESGCM(kek).decrypt(wrapped[:12], wrapped[12:], f"key/{doomed}".encode())


# -- 8. a zero-length index is rebuilt without a false alarm --------------------------------------

def test_a_zero_length_index_is_rebuilt_without_a_spurious_error(state_dir: Path) -> None:
    store = ClipStore(state_dir)
    ids = {add_clip(store) for _ in range(2)}
    store.close()
    (state_dir / "index.sqlite").write_bytes(b"")
    proc = run_cli("clips", "list")
    assert listed(proc) == ids
    assert "could not be carried over" not in proc.stderr
    [line] = proc.stderr.splitlines()  # one line: that the index was rebuilt
    assert "rebuilt it from the clip files" in line


# -- 9. a failed upload that may be on the server ---------------------------------------------------

@pytest.mark.slow
def test_a_failed_upload_that_may_be_on_the_server_gets_a_remote_delete(
    state_dir: Path, https_server: UploadServer, tls_material: dict[str, Path]
) -> None:
    store = ClipStore(state_dir)
    consent.grant(store, ("audio",))
    https_server.script.extend(["sleep:2", "400"])  # the body is stored, the answer too late; then a refusal
    clip = record(store)
    running = Running(store, settings(https_server, tls_material, timeout_s=0.5))
    try:
        wait_until(lambda: running.of("failed"), WAIT_S, "the upload never failed")
        wait_until(lambda: https_server.accepted.get(clip), WAIT_S, "the server never stored it")
        reply = Controller(store, MuteState()).execute(
            DeleteCommand(request_id="after-failure", ids=[clip])).to_dict()
        assert reply["remote"] == {"status": "pending", "pending": [clip], "confirmed": []}
        wait_until(lambda: https_server.deleted == [clip], WAIT_S, "no remote DELETE was sent")
        wait_until(lambda: store.uploads.pending_remote() == [], WAIT_S, "not confirmed")
    finally:
        running.close()


def test_uploads_tried_before_the_upgrade_count_as_maybe_sent(state_dir: Path) -> None:
    store = ClipStore(state_dir)
    cid = record(store)
    store.uploads.enqueue(cid, "audio")
    store.close()
    old = sqlite3.connect(state_dir / "index.sqlite")  # as version 3 left it: tried once, failed
    old.executescript("ALTER TABLE uploads DROP COLUMN maybe_sent;\n"
                      "UPDATE uploads SET state = 'failed', attempts = 1;\nPRAGMA user_version = 3;")
    old.close()
    store = ClipStore(state_dir)
    assert store.delete(ids=[cid])["remote_pending"] == [cid]


# -- found by a code review: a crash at the wrong moment, a revoke after a timeout -----------------

class Crash(BaseException):
    """The process dies here: nothing after this point runs (no clean-up, no rollback of a commit)."""


def crash_at_call(monkeypatch: pytest.MonkeyPatch, owner: type, name: str, n: int) -> None:
    """The n-th call of `owner.name` raises Crash before it does anything."""
    real = getattr(owner, name)
    calls = []

    def crashing(*args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        if len(calls) == n:
            raise Crash(f"{name}, call {n}")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, crashing)


def test_a_crash_during_an_index_rebuild_loses_no_clip_at_the_next_start(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ClipStore(state_dir)
    ids = {add_clip(store) for _ in range(3)}
    store.close()
    (state_dir / "index.sqlite").unlink()  # lost beside its clips: the next start rebuilds it
    with monkeypatch.context() as patch:
        crash_at_call(patch, ClipRows, "insert", 2)  # the rebuild dies at its second row
        with pytest.raises(Crash):
            ClipStore(state_dir)
    store = ClipStore(state_dir)  # the start after the crash
    assert indexed(store) == ids and {p.stem for p in store.clips_dir.iterdir()} == ids
    assert all(store.read_audio(store.get(cid)) for cid in ids)  # every key is still there
    assert {c.transcript for c in store.all()} == {"turn on the light"}
    assert not list(state_dir.glob("index.sqlite.*"))  # nothing half-built is left behind


def test_a_crash_between_an_uploaded_clips_row_and_its_local_copy_keeps_its_remote_delete(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """keep_local off: after the upload the row drops its audio, then the file goes. A crash in
    between leaves the file; the next start removes it and keeps the row, so a delete still reaches
    the copy on the server."""
    store = ClipStore(state_dir)
    cid = record(store)
    store.uploads.enqueue(cid, "audio")
    assert store.uploads.claim(set()) == (UPLOAD, cid) and store.uploads.uploaded(cid)
    with monkeypatch.context() as patch:
        crash_at_call(patch, type(store._eraser), "remove_files", 1)
        with pytest.raises(Crash):
            store.forget_local_copy(cid)
    store.close()
    assert (state_dir / "clips" / f"{cid}.clip").exists()  # the crash left the local copy
    store = ClipStore(state_dir)  # the start after the crash
    assert not list(store.clips_dir.iterdir()) and indexed(store) == {cid}
    assert store.delete(ids=[cid])["remote_pending"] == [cid]


def test_a_delete_cut_short_is_finished_at_the_next_open_though_the_web_page_holds_the_store(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delete commits its rows, then destroys keys and files. A kill in between (systemd's
    SIGKILL, a power cut) left the deleted clip's key and ciphertext readable for as long as
    `edge-recorder web` ran: only an open that had the store alone swept, and the page holds it
    open for good, so the restarted daemon never was; no later delete reached a clip without a
    row. The ids being erased are now kept in the same commit and finished at any open."""
    store = ClipStore(state_dir)
    doomed, kept = add_clip(store), add_clip(store)
    store.close()
    page = ClipStore(state_dir)  # edge-recorder web, up all along
    try:
        daemon = ClipStore(state_dir)
        with monkeypatch.context() as patch:
            crash_at_call(patch, type(daemon._eraser), "erase", 1)
            with pytest.raises(Crash):
                daemon.delete(ids=[doomed], remote=False, reason="retention")
        daemon.close()
        assert (state_dir / "clips" / f"{doomed}.clip").exists()  # what the kill left
        restarted = ClipStore(state_dir)
        assert not restarted.alone
        assert restarted.keys.get(doomed) is None
        assert {p.stem for p in restarted.clips_dir.iterdir()} == {kept} == indexed(restarted)
        assert restarted.state.index.read("SELECT clip_id FROM erasing") == []
        restarted.close()
    finally:
        page.close()


def damage_an_index_page(path: Path) -> None:
    """Overwrite the root page of one of the index's b-tree indexes: its check fails, and the
    tables themselves can still be read."""
    conn = sqlite3.connect(path)
    page = conn.execute("SELECT rootpage FROM sqlite_master WHERE type = 'index' AND name LIKE "
                        "'%clips%'").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with path.open("r+b") as f:
        f.seek((page - 1) * size)
        f.write(b"\xff" * 8)


@pytest.mark.parametrize("name", ["state", "a#b?c%d"])
def test_a_rebuilt_index_does_not_bring_back_a_clip_whose_erase_was_cut_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """A delete committed, its erase cut short (a power cut takes the daemon and the page at
    once), then the index fails its check: the rebuild from the clip files brought the deleted
    clip back. The unfinished erases are carried over from the old index, like remote deletes
    (read through a proper file URI: a `#` in the path opened, and created, another file)."""
    state_dir = tmp_path / name
    store = ClipStore(state_dir)
    doomed, kept = add_clip(store), add_clip(store)
    with monkeypatch.context() as patch:
        crash_at_call(patch, type(store._eraser), "erase", 1)
        with pytest.raises(Crash):
            store.delete(ids=[doomed], remote=False)
    store.close()
    damage_an_index_page(state_dir / "index.sqlite")
    again = ClipStore(state_dir)  # alone: the index is rebuilt from the files
    try:
        assert list(state_dir.glob("index.sqlite.corrupt-*"))  # it was rebuilt
        assert indexed(again) == {kept} and again.keys.get(doomed) is None
        assert {p.stem for p in again.clips_dir.iterdir()} == {kept}
    finally:
        again.close()


def test_an_index_from_before_the_erase_record_opens_on_a_read_only_disk(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "8m") as mounted:
        state = mounted / "state"
        store = ClipStore(state)
        clip = add_clip(store)
        store.close()
        old = sqlite3.connect(state / "index.sqlite")  # as schema 5 left it
        old.executescript("DROP TABLE erasing; PRAGMA user_version = 5;")
        old.close()
        subprocess.run(["mount", "-o", "remount,ro", str(mounted)], check=True)
        listed = run_cli("clips", "list", "--state-dir", str(state))
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout.splitlines()[0])["id"] == clip


def test_an_upload_killed_on_the_wire_is_sent_again_though_the_web_page_holds_the_store(
    state_dir: Path, https_server: UploadServer, tls_material: dict[str, Path]
) -> None:
    """A daemon killed mid-upload leaves the clip `sending`; only an open that had the store alone
    put it back, and with `edge-recorder web` up the restarted daemon never was: the clip was
    never sent, and the status said "uploading now" for good."""
    store = ClipStore(state_dir)
    page = ClipStore(state_dir)  # edge-recorder web, up all along
    consent.grant(store, ("audio",))
    cid = record(store)
    assert store.uploads.claim(set()) == (UPLOAD, cid)  # on the wire when the kill came
    store.close()
    restarted = ClipStore(state_dir)
    try:
        assert not restarted.alone
        r = Running(restarted, settings(https_server, tls_material))
        wait_until(lambda: r.of("uploaded"), 20, "the upload left 'sending' was never sent again")
        r.close()
        assert https_server.accepted.get(cid) == 1
    finally:
        restarted.close()
        page.close()


def test_revoking_consent_reaches_an_upload_that_timed_out_and_waits_for_its_retry(
    state_dir: Path,
) -> None:
    """An attempt that timed out may have reached the server; revoking consent before its retry
    purges the upload and queues a remote delete for it (only an upload never tried is just purged)."""
    store = ClipStore(state_dir)
    consent.grant(store, ("audio",))
    tried = record(store)  # queued as it is recorded
    assert store.uploads.claim(set()) == (UPLOAD, tried)  # on the wire, then it timed out
    store.uploads.retry_later(UPLOAD, tried, lambda n: 60.0)
    untried = record(store)
    _, purged = consent.revoke(store)
    assert set(purged) == {tried, untried} and store.uploads.waiting() == 0
    assert store.uploads.pending_remote() == [tried]
