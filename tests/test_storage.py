"""Storage that forgets for real: crypto-erase, tamper detection, a corrupt index, retention, and a
full or read-only disk (a real tmpfs where this machine allows mounting one)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from device.core.config import RetentionSettings
from device.core.events import EventSink
from device.storage import crypto
from device.storage.clips import ClipStore
from device.storage.retention import sweep
from tests.helpers import WAKE_SENTENCE, add_clip, concat_wavs, indexed, on_disk, run_cli, spawn_cli, tmpfs

Event = dict[str, Any]  # events as their JSON objects


def db_bytes(state_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in state_dir.glob("*.sqlite*"))


def all_bytes(state_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in state_dir.rglob("*") if p.is_file())


def test_delete_destroys_the_key_so_no_earlier_copy_of_the_file_can_be_read(
    state_dir: Path, tmp_path: Path
) -> None:
    store = ClipStore(state_dir)
    cid = add_clip(store)
    key = store.keys.get(cid)
    assert key is not None and key not in all_bytes(state_dir)  # never written in plaintext
    copy = tmp_path / "stolen.clip"
    shutil.copy(store.clips_dir / f"{cid}.clip", copy)  # what a thief copied before the delete
    store.delete(ids=[cid])
    assert key not in db_bytes(state_dir)  # secure_delete zeroed the freed page
    assert b"turn on the light" not in db_bytes(state_dir) + copy.read_bytes()
    assert not (store.clips_dir / f"{cid}.clip").exists()
    assert store.keys.get(cid) is None
    for other in [crypto.new_key()]:  # without the key, the copy is noise
        with pytest.raises(crypto.TamperedError):
            crypto.unseal(other, cid, copy.read_bytes())


@pytest.mark.parametrize("damage", ["bit_flip", "truncate", "swap"])
def test_a_tampered_clip_is_detected_quarantined_and_never_read(state_dir: Path, damage: str) -> None:
    store = ClipStore(state_dir)
    cid, other = add_clip(store), add_clip(store)
    path = store.clips_dir / f"{cid}.clip"
    data = bytearray(path.read_bytes())
    if damage == "bit_flip":
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[:-100]))
    else:
        shutil.copy(store.clips_dir / f"{other}.clip", path)  # another clip's file under this name
    proc = run_cli("clips", "export", cid, str(state_dir.parent / "out.wav"))
    assert proc.returncode == 1 and "was quarantined" in proc.stderr and "Traceback" not in proc.stderr
    assert (state_dir / "quarantine" / f"{cid}.clip").exists()
    store = ClipStore(state_dir)
    assert indexed(store) == {other} and store.keys.get(cid) is None
    assert not (state_dir.parent / "out.wav").exists()


def test_a_corrupt_index_is_moved_aside_and_rebuilt_from_the_clip_files(state_dir: Path) -> None:
    store = ClipStore(state_dir)
    ids = {add_clip(store) for _ in range(3)}
    store.close()
    (state_dir / "index.sqlite").write_bytes(b"this is not a database" * 100)
    proc = run_cli("clips", "list")
    assert proc.returncode == 0, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "corrupt" in ln]
    assert len(errors) == 1 and "rebuilt it from the clip files" in errors[0]
    listed = [json.loads(x) for x in proc.stdout.splitlines()]
    assert {c["id"] for c in listed} == ids
    assert all(c["transcript"] == "turn on the light" for c in listed)  # authenticated metadata
    assert len(list(state_dir.glob("index.sqlite.corrupt-*"))) == 1


def test_a_second_process_never_sweeps_what_the_running_one_is_writing(state_dir: Path) -> None:
    daemon = ClipStore(state_dir)  # alone: may repair
    half = daemon.clips_dir / f"{'a' * 32}.clip"
    half.write_bytes(b"being written by the daemon, row not committed yet")
    cli = ClipStore(state_dir)  # e.g. `clips delete` while the daemon runs
    assert daemon.alone and not cli.alone
    assert half.exists()
    cli.close()
    daemon.close()
    assert ClipStore(state_dir).alone and not half.exists()  # after a crash: cleaned


def test_pieces_left_by_a_crash_are_cleaned_at_start(state_dir: Path) -> None:
    store = ClipStore(state_dir)
    kept = add_clip(store)
    (store.clips_dir / ".half-written.clip.tmp").write_bytes(b"partial")
    (store.clips_dir / f"{'e' * 32}.clip").write_bytes(b"file whose row never committed")
    store.keys.put("d" * 32, crypto.new_key())  # key whose row never committed
    store.close()
    store = ClipStore(state_dir)
    assert on_disk(store) == indexed(store) == store.keys.ids() == {kept}
    assert [p.name for p in store.clips_dir.iterdir()] == [f"{kept}.clip"]


def test_retention_by_age_and_by_bytes_oldest_first(state_dir: Path) -> None:
    store = ClipStore(state_dir)
    old = add_clip(store, timedelta(days=8))
    older_small = [add_clip(store, timedelta(days=d)) for d in (3, 2, 1)]
    newest = add_clip(store, timedelta(hours=1))
    size = max(s for _, _, s in store.bytes_used())
    events: list[Event] = []
    sink = EventSink()
    sink.subscribe(lambda e: events.append(e.to_dict()))
    deleted = sweep(store, RetentionSettings(max_age="7d", max_bytes=max(1 << 20, 2 * size)), sink)
    assert deleted == [old]
    tight = RetentionSettings(max_age="7d", max_bytes=1 << 20)
    store_bytes = sum(s for _, _, s in store.bytes_used())
    assert store_bytes <= tight.max_bytes  # small clips: nothing more to do
    assert indexed(store) == set(older_small) | {newest}
    sink.flush()  # events are delivered on the sink's own thread
    [ev] = events
    assert ev["type"] == "deleted" and ev["reason"] == "retention" and ev["ids"] == [old]


def test_retention_bytes_limit_drops_the_oldest(state_dir: Path) -> None:
    store = ClipStore(state_dir)
    ids = [add_clip(store, timedelta(hours=h)) for h in (5, 4, 3, 2, 1)]
    from device.storage.retention import expired
    sizes = {cid: s for cid, _, s in store.bytes_used()}
    limit = sum(sizes.values()) - 2 * max(sizes.values()) + 1
    got = expired(store, RetentionSettings.model_construct(max_age="7d", max_bytes=limit),
                  datetime.now(UTC))
    assert got == ids[:2]


def test_wipe(state_dir: Path) -> None:
    store = ClipStore(state_dir)
    ids = {add_clip(store) for _ in range(3)}
    keys = [store.keys.get(i) for i in ids]
    store.close()
    no_tty = spawn_cli("wipe", stdin=subprocess.DEVNULL)
    assert no_tty.returncode == 2 and "--yes" in no_tty.stderr
    proc = run_cli("wipe", "--yes")
    assert proc.returncode == 0 and "wiped 3 clip(s)" in proc.stdout
    assert list((state_dir / "clips").iterdir()) == []
    assert not any(k in db_bytes(state_dir) for k in keys if k)


# -- a full and a read-only disk -------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", "400k",
               "; test_full_disk_fails_at_the_os_level covers the write path") as mnt:
        yield mnt


def write_sentences(tmp_path: Path, speech: Callable[..., Path], n: int) -> Path:
    one = speech(WAKE_SENTENCE)
    return concat_wavs(tmp_path / f"x{n}.wav", *([one] * n), gap_s=2.5)


def errors_of(proc: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    return [e for e in map(json.loads, proc.stdout.splitlines()) if e["type"] == "error"]


@pytest.mark.slow
def test_a_full_disk_refuses_recording_keeps_listening_and_recovers(
    with_models: Path, speech: Callable[..., Path], tmp_path: Path, small_disk: Path
) -> None:
    state = small_disk / "state"
    cfg = tmp_path / "c.toml"
    cfg.write_text("[retention]\nmin_free_bytes = 150000\n")
    wav = write_sentences(tmp_path, speech, 6)
    proc = run_cli("simulate", str(wav), "--config", str(cfg), "--state-dir", str(state))
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(x) for x in proc.stdout.splitlines()]
    clips = [e for e in events if e["type"] == "clip"]
    refused = [e for e in events if e["type"] == "error" and e["code"] == "store_unavailable"]
    failed = [e for e in events if e["type"] == "error" and e["code"] == "store_failed"]
    wakes = [e for e in events if e["type"] == "wake"]
    discarded = [e for e in events if e["type"] == "discarded"]
    # The space check at a wake races with the writer thread finishing the previous clip: a clip
    # that no longer fits is either refused up front or fails cleanly (ENOSPC) when written. What
    # must hold: every wake ends in exactly one outcome, the disk does fill, listening goes on.
    assert clips and (refused or failed)
    assert len(wakes) == len(clips) + len(refused) + len(failed) + len(discarded)
    assert len(wakes) >= 5  # listening went on while the disk was full
    assert not refused or wakes[-1]["t"] >= refused[0]["t"]
    assert all("KiB free" in str(e["message"]) for e in refused)
    # ENOSPC reads differently depending on where it strikes (the clip file, a journal, the keys)
    assert all(str(e["message"]).startswith("could not store clip in") for e in failed)
    store = ClipStore(state)  # no half-written clip: every file is a whole, readable clip
    assert on_disk(store) == indexed(store) == {c["id"] for c in clips}
    assert not [p for p in store.clips_dir.iterdir() if p.suffix != ".clip"]
    for cid in indexed(store):
        store.read_audio(store.get(cid))

    store.delete(everything=True)  # space returns
    store.close()
    again = run_cli("simulate", str(speech(WAKE_SENTENCE)), "--config", str(cfg), "--state-dir", str(state))
    assert [e["type"] for e in map(json.loads, again.stdout.splitlines())].count("clip") == 1


def test_a_read_only_state_directory_refuses_recording(
    with_models: Path, speech: Callable[..., Path], tmp_path: Path, small_disk: Path
) -> None:
    state = small_disk / "state"
    assert run_cli("clips", "list", "--state-dir", str(state)).returncode == 0  # create the store
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    proc = run_cli("simulate", str(speech(WAKE_SENTENCE)), "--state-dir", str(state))
    assert proc.returncode == 0, proc.stderr
    [err] = errors_of(proc)
    assert err["code"] == "store_unavailable" and "read-only" in str(err["message"])


def test_full_disk_fails_at_the_os_level(
    with_models: Path, speech: Callable[..., Path], tmp_path: Path, state_dir: Path
) -> None:
    """Without a tmpfs: the kernel refuses writes past a file-size limit (RLIMIT_FSIZE)."""
    import resource
    import signal

    assert run_cli("clips", "list").returncode == 0  # the store exists, small files only

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    proc = spawn_cli("simulate", str(speech(WAKE_SENTENCE)), preexec_fn=limit)
    assert proc.returncode == 0, proc.stderr
    [err] = errors_of(proc)
    assert err["code"] == "store_failed" and "File too large" in str(err["message"])
    store = ClipStore(state_dir)
    assert indexed(store) == on_disk(store) == set()
    assert list(store.clips_dir.iterdir()) == []
