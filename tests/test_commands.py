"""The command layer against a real store: every delete form on disk and in the index, idempotency,
P5 refusals, signatures, bad input, and a fuzz that no invalid payload deletes anything."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device.control.commands import (
    MAX_PAYLOAD_BYTES,
    CommandError,
    Controller,
    DeleteCommand,
    Signing,
    parse,
    sign,
)
from device.control.mute import MuteState
from device.storage.clips import ClipStore
from tests.helpers import NOW, add_clip, indexed, on_disk, run

SECRET = b"shared secret for tests"


@pytest.fixture
def store(tmp_path: Path) -> ClipStore:
    return ClipStore(tmp_path / "state")


def test_delete_by_ids(store: ClipStore) -> None:
    a, b, c = (add_clip(store) for _ in range(3))
    missing = "f" * 32
    reply = run(store, {"request_id": "r1", "ids": [a, c, missing]})
    assert reply == {"type": "deleted", "request_id": "r1", "ids": [a, c], "not_found": [missing],
                     "reason": "command",
                     "remote": {"status": "none_uploaded", "pending": [], "confirmed": []},
                     "replayed": False}
    assert on_disk(store) == indexed(store) == {b}


def test_delete_by_time_range_and_last(store: ClipStore) -> None:
    old = add_clip(store, timedelta(hours=30))
    mid = add_clip(store, timedelta(hours=5))
    new = add_clip(store, timedelta(minutes=5))
    frm, to = (NOW - timedelta(hours=6)).isoformat(), (NOW - timedelta(hours=1)).isoformat()
    assert run(store, {"request_id": "r1", "from": frm, "to": to})["ids"] == [mid]
    assert run(store, {"request_id": "r2", "last": "15m"})["ids"] == [new]
    assert on_disk(store) == indexed(store) == {old}


def test_delete_all(store: ClipStore) -> None:
    ids = {add_clip(store) for _ in range(4)}
    assert set(run(store, {"request_id": "r1", "all": True})["ids"]) == ids
    assert on_disk(store) == indexed(store) == set()


def test_same_request_id_returns_the_same_result_and_deletes_nothing_new(store: ClipStore) -> None:
    first = add_clip(store)
    reply = run(store, {"request_id": "again", "all": True})
    later = add_clip(store)
    again = run(store, {"request_id": "again", "all": True})
    assert again["replayed"] is True and {**again, "replayed": False} == reply
    assert reply["ids"] == [first] and indexed(store) == {later}


def test_an_acknowledged_delete_survives_a_crash_before_the_files_were_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ClipStore(tmp_path / "s")
    doomed, kept = add_clip(store), add_clip(store)

    def power_cut(paths: list[Path]) -> None:
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(store.state.eraser, "remove_files", power_cut)
    with pytest.raises(KeyboardInterrupt):
        store.delete(ids=[doomed], request_id="r1")
    assert doomed in on_disk(store)  # the file outlived the commit ...
    monkeypatch.undo()
    store.close()  # the process is gone: its lock with it
    store = ClipStore(tmp_path / "s")  # ... and is gone at the next start
    assert on_disk(store) == indexed(store) == {kept}
    assert store.delete(ids=[doomed], request_id="r1")["ids"] == [doomed]  # recorded as done


def test_remote_commands_can_only_reduce(store: ClipStore) -> None:
    grant = run(store, {"request_id": "g", "action": "grant"}, "consent")
    assert (grant["type"], grant["code"], grant["request_id"]) == ("error", "refused", "g")
    assert store.state.preferences.get("consent", "off") == "off"
    assert run(store, {"request_id": "r", "action": "revoke"}, "consent")["state"] == "off"

    mute = MuteState()
    mute.set(hardware=True)
    refused = run(store, {"request_id": "u", "muted": False}, "mute", mute)
    assert refused["code"] == "refused" and "button" in refused["message"]
    assert mute.muted and mute.hardware
    mute.set(hardware=False)
    assert run(store, {"request_id": "m", "muted": True}, "mute", mute)["muted"] is True
    assert run(store, {"request_id": "n", "muted": False}, "mute", mute)["muted"] is False


def signed(kind: str, payload: dict[str, Any], ts: float | None = None,
           nonce: str = "nonce-0001") -> dict[str, Any]:
    body = {**payload, "ts": int(ts if ts is not None else time.time()), "nonce": nonce}
    return {**body, "sig": sign(kind, body, SECRET)}


def test_signed_commands(tmp_path: Path) -> None:
    store = ClipStore(tmp_path / "s")
    signing = Signing(SECRET, 300)
    a, b = add_clip(store), add_clip(store)
    ok = signed("delete", {"request_id": "s1", "ids": [a]})
    assert run(store, ok, signing=signing)["ids"] == [a]

    cases = {
        "unsigned": {"request_id": "s2", "ids": [b]},
        "bad_signature": {**signed("delete", {"request_id": "s3", "ids": [b]}, nonce="n-000003"),
                          "ids": [b, "a" * 32]},
        "stale": signed("delete", {"request_id": "s4", "ids": [b]}, ts=time.time() - 3600,
                        nonce="n-000004"),
        "replayed": signed("delete", {"request_id": "s6", "ids": [b]}),  # ok's nonce, reused
    }
    reopened = ClipStore(tmp_path / "s")  # nonces are durable: a restart does not reopen replays
    for code, payload in cases.items():
        reply = run(reopened, payload, signing=signing)
        assert (reply["type"], reply["code"]) == ("error", code), reply
    again = run(reopened, ok, signing=signing)  # the broker's redelivery of a command that ran
    assert again["type"] == "deleted" and again["replayed"] is True and again["ids"] == [a]
    other_topic = signed("mute", {"request_id": "s5", "muted": True}, nonce="n-000005")
    assert run(reopened, {**other_topic, "ids": [b]}, signing=signing)["code"] == "bad_signature"
    assert indexed(reopened) == {b}


@pytest.mark.parametrize(
    ("kind", "raw", "code", "request_id", "fragment"),
    [
        ("delete", b"not json", "bad_json", None, "not JSON"),
        ("delete", b"[1, 2]", "bad_request", None, "JSON object"),
        ("delete", b'{"request_id": "x", "ids": "abc"}', "bad_request", "x", "ids"),
        ("delete", b'{"request_id": "x", "all": true, "why": 1}', "bad_request", "x", "unknown key"),
        ("delete", b'{"request_id": "x", "last": "15 minutes"}', "bad_request", "x", "last"),
        ("delete", b'{"request_id": "x", "last": "999999d"}', "bad_request", "x",
         "at most 36500d (100 years), not '999999d'; to delete everything, use all"),
        ("save", b'{"request_id": "x", "mode": "nothing", "for": "999999d"}', "bad_request", "x",
         "at most 36500d"),
        ("delete", b'{"request_id": "x", "from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}',
         "bad_request", "x", "from < to"),
        ("delete", b'{"request_id": "x", "from": "yesterday", "to": "2026-01-01T00:00:00Z"}',
         "bad_request", "x", "from"),
        ("delete", b'{"request_id": "x", "from": "2026-01-01T00:00:00", "to": "2026-01-02T00:00:00Z"}',
         "bad_request", "x", "timezone"),
        ("delete", b'{"request_id": "x"}', "bad_request", "x", "exactly one of"),
        ("consent", b'{"request_id": "x", "action": "sell"}', "bad_request", "x", "action"),
        ("mute", b'{"request_id": "x", "muted": "yes"}', "bad_request", "x", "muted"),
        ("format", b'{"request_id": "x"}', "unknown_command", "x", "unknown command"),
        ("delete", b'{"request_id": "x", "ids": ["' + b"a" * MAX_PAYLOAD_BYTES + b'"]}',
         "too_large", None, "limit"),
    ],
)
def test_bad_input_is_refused_with_a_clear_reason(
    store: ClipStore, kind: str, raw: bytes, code: str, request_id: str | None, fragment: str
) -> None:
    keep = add_clip(store)
    reply = run(store, raw, kind)
    assert (reply["type"], reply["code"], reply["request_id"]) == ("error", code, request_id)
    assert fragment in reply["message"] and len(reply["message"]) < 300
    assert indexed(store) == on_disk(store) == {keep}


# -- fuzz: no crash, and nothing deleted except what a valid command selects ------------------------

KEYS = ["request_id", "ids", "from", "to", "last", "all", "action", "muted", "ts", "nonce", "sig", "x"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["15m", "0h", "24h", "7d", "grant",
                                                           "revoke", "2026-01-01T00:00:00Z"]))


def payloads(existing: list[str]) -> st.SearchStrategy[bytes]:
    ids = st.sampled_from(existing + ["0" * 32, "not-an-id"])
    values = st.one_of(SCALARS, st.lists(st.one_of(ids, SCALARS), max_size=4), ids)
    loose = st.dictionaries(st.sampled_from(KEYS), values, max_size=5)
    near_valid = st.fixed_dictionaries(
        {"request_id": st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True)},
        optional={"ids": st.lists(ids, min_size=1, max_size=3), "all": st.booleans(),
                  "last": st.sampled_from(["15m", "2h", "15 m"]), "from": SCALARS,
                  "action": st.sampled_from(["revoke", "grant"]), "muted": st.booleans(),
                  "x": SCALARS},
    )
    as_json = st.one_of(loose, near_valid).map(lambda d: json.dumps(d).encode())
    return st.one_of(as_json, st.binary(max_size=64), as_json.map(lambda b: b[: len(b) // 2]))


@pytest.mark.slow
def test_fuzzed_payloads_never_crash_or_delete_without_a_valid_command(tmp_path: Path) -> None:
    store = ClipStore(tmp_path / "fuzz")
    existing = [add_clip(store) for _ in range(3)]
    mute = MuteState()
    seen = {"valid_deletes": 0}
    first_replies: dict[str, dict[str, Any]] = {}

    @settings(max_examples=1000, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(kind=st.sampled_from(["delete", "consent", "mute", "bogus"]), raw=payloads(existing))
    def check(kind: str, raw: bytes) -> None:
        before = indexed(store)
        try:
            command = parse(kind, raw, None, store)
        except CommandError as exc:
            assert exc.code and str(exc)
            assert indexed(store) == on_disk(store) == before
            return
        try:
            reply = Controller(store, mute).execute(command).to_dict()
        except CommandError as exc:  # the same request id with another body: refused
            assert exc.code == "request_id_reused" and command.request_id in first_replies
            assert indexed(store) == on_disk(store) == before
            return
        deleted = before - indexed(store)
        if isinstance(command, DeleteCommand) and command.request_id in first_replies:
            assert {**reply, "replayed": False} == first_replies[command.request_id]  # a replay
            assert reply["replayed"] is True and deleted == set()
        elif isinstance(command, DeleteCommand):
            seen["valid_deletes"] += 1
            first_replies[command.request_id] = reply
            assert set(reply["ids"]) == deleted
            if command.ids is not None:
                assert deleted <= set(command.ids)
        else:
            assert deleted == set()
        assert indexed(store) == on_disk(store)
        while len(indexed(store)) < 3:
            existing.append(add_clip(store))

    check()
    assert seen["valid_deletes"] > 0  # the fuzz did reach the delete path


def test_the_index_is_a_real_sqlite_file(store: ClipStore) -> None:
    add_clip(store)
    db = sqlite3.connect(store.state_dir / "index.sqlite")
    assert db.execute("SELECT COUNT(*) FROM clips").fetchone()[0] == 1
