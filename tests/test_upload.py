"""Consent and upload against a real HTTPS https_server on loopback that records every byte (P1, P2, P3)."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device.control import consent
from device.control.commands import Controller, DeleteCommand
from device.control.mute import MuteState
from device.core.config import UploadSettings
from device.core.events import EventSink
from device.integrations import upload
from device.integrations.upload import Uploader
from device.storage.clips import ClipStore
from tests.helpers import wait_until
from tests.upload_server import UploadServer

Event = dict[str, Any]  # events as their JSON objects

TOKEN = "owner-token-123"
WAIT_S = 20




@pytest.fixture
def store(state_dir: Path) -> ClipStore:
    return ClipStore(state_dir)


def settings(https_server: UploadServer, tls: dict[str, Path], **overrides: Any) -> UploadSettings:
    base: dict[str, Any] = {"url": https_server.url, "token": TOKEN, "ca_file": str(tls["ca"]),
                            "backoff_initial_s": 0.05, "backoff_max_s": 0.2, "timeout_s": 2.0,
                            "hold_s": 0.0}
    return UploadSettings(**{**base, **overrides})


class Running:
    def __init__(self, store: ClipStore, s: UploadSettings) -> None:
        self.events: list[Event] = []
        sink = EventSink()
        sink.subscribe(lambda e: self.events.append(e.to_dict()))
        self.uploader = Uploader(s, store, sink)
        self.uploader.start()

    def of(self, status: str) -> list[Event]:
        return [e for e in self.events if e["type"] == "upload" and e["status"] == status]

    def close(self) -> None:
        self.uploader.close()


@pytest.fixture
def running(store: ClipStore, https_server: UploadServer, tls_material: dict[str, Path]) -> Iterator[Any]:
    made: list[Running] = []

    def start(**overrides: Any) -> Running:
        r = Running(store, settings(https_server, tls_material, **overrides))
        made.append(r)
        return r

    yield start
    for r in made:
        r.close()


def record(store: ClipStore, transcript: str = "call me at 0123456789 or bob@example.com") -> str:
    samples = (np.sin(np.arange(16000) / 7) * 3000).astype(np.int16)
    return store.add(samples, 2.0, 3.0, "hey_jarvis", 0.97, transcript,
                     eligible=lambda: consent.read(store).covers).id


def parts(rec_body: bytes, content_type: str) -> dict[str, bytes]:
    msg = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + rec_body)
    return {p.get_param("name", header="content-disposition"): p.get_payload(decode=True)
            for p in msg.iter_parts()}


@pytest.mark.slow
def test_nothing_is_uploaded_without_consent(
    store: ClipStore, https_server: UploadServer, running: Any
) -> None:
    record(store)
    running()
    time.sleep(1.5)
    assert https_server.requests == []


def test_consent_is_not_retroactive_and_the_upload_is_an_allow_list(
    store: ClipStore, https_server: UploadServer, running: Any
) -> None:
    before = record(store)
    consent.grant(store, ("audio", "transcript"))
    after = record(store)
    r = running()
    wait_until(lambda: r.of("uploaded"), WAIT_S, "nothing uploaded")
    time.sleep(0.5)
    [post] = https_server.posts()
    sent = https_server.everything_received().decode("latin-1")
    assert post.headers["Idempotency-Key"] == after and before not in sent
    assert post.headers["Authorization"] == f"Bearer {TOKEN}"
    form = parts(post.body, post.headers["Content-Type"])
    assert set(form) == {"metadata", "audio"}
    meta = json.loads(form["metadata"])
    assert set(meta) == {"clip_id", "recorded_hour", "duration_s", "sample_rate", "wake_word",
                         "software_version", "transcript"}
    assert meta["clip_id"] == after and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:00:00Z", meta["recorded_hour"])
    assert meta["transcript"] == "call me at [number] or [email]"
    assert form["audio"] == store.read_audio(store.get(after))


def test_transcript_only_with_its_scope(store: ClipStore, https_server: UploadServer, running: Any) -> None:
    consent.grant(store, ("audio",))
    record(store)
    r = running()
    wait_until(lambda: r.of("uploaded"), WAIT_S, "nothing uploaded")
    [post] = https_server.posts()
    assert "transcript" not in json.loads(parts(post.body, post.headers["Content-Type"])["metadata"])


@pytest.mark.slow
def test_revoking_while_a_request_is_being_retried_stops_it(
    store: ClipStore, https_server: UploadServer, running: Any
) -> None:
    consent.grant(store, ("audio",))
    https_server.script.extend(["503"] * 1000)
    record(store)
    running(backoff_initial_s=0.2, backoff_max_s=0.2, max_attempts=100)
    wait_until(lambda: len(https_server.posts()) >= 2, WAIT_S, "no retries")
    _, purged = consent.revoke(store)
    seen = len(https_server.posts())
    time.sleep(1.5)
    assert len(https_server.posts()) <= seen + 1  # at most the one already on the wire
    assert https_server.accepted == {}
    assert len(purged) == 1


@pytest.mark.slow
def test_revoking_during_a_slow_upload_stops_the_body(
    store: ClipStore, https_server: UploadServer, running: Any
) -> None:
    consent.grant(store, ("audio",))
    clip = record(store)
    r = running(max_bytes_per_s=8000)  # ~32 KB of WAV: about 4 s on the wire
    # taken by a worker (a revoke before would purge it from the queue: nothing to withdraw)
    wait_until(lambda: store.uploads.clip_states(hold_s=0) == {clip: "sending"}, WAIT_S,
               "the upload never started")
    time.sleep(1.0)  # some of the body on the wire
    consent.revoke(store)
    wait_until(lambda: r.of("withheld"), WAIT_S, "upload not withdrawn")
    time.sleep(0.5)
    assert https_server.accepted == {}
    assert all(len(p.body) < int(p.headers["Content-Length"]) for p in https_server.posts())


@pytest.mark.parametrize(
    ("faults", "min_gap_s"),
    [(["500", "502", "503"], 0.0), (["429:1"], 1.0), (["reset", "reset"], 0.0),
     (["sleep:3"], 0.0), (["sleep:1"], 0.0)],
    ids=["5xx", "429-retry-after", "connection-reset", "timeout", "slow-but-in-time"],
)
def test_faults_never_lose_or_duplicate(
    store: ClipStore, https_server: UploadServer, running: Any, faults: list[str], min_gap_s: float
) -> None:
    consent.grant(store, ("audio",))
    https_server.script.extend(faults)
    clip = record(store)
    r = running()
    wait_until(lambda: r.of("uploaded"), 30, f"not uploaded through {faults}")
    time.sleep(0.3)
    posts = https_server.posts()
    assert len(https_server.accepted) == 1 and clip in https_server.accepted
    assert all(p.headers["Idempotency-Key"] == clip for p in posts)
    if min_gap_s:
        assert posts[1].at - posts[0].at >= min_gap_s * 0.95
    if faults == ["sleep:1"]:
        assert len(posts) == 1  # slow but in time: sent once


def test_a_stop_cuts_off_a_request_the_server_holds_and_the_next_start_sends_it(
    store: ClipStore, https_server: UploadServer, running: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop waited for the request's own deadline (timeout_s, 30 s by default, plus the body's
    time at max_bytes_per_s): longer than systemd's TimeoutStopSec=30, which then SIGKILLs the
    daemon mid-stop. Now the request gets a grace, is cut off, and waits for the next start."""
    monkeypatch.setattr(upload, "STOP_GRACE_S", 1.0)
    consent.grant(store, ("audio",))
    clip = record(store)
    https_server.script.append("sleep:60")  # the server takes the body and holds its answer
    r = running(timeout_s=30.0)
    wait_until(lambda: https_server.posts(), WAIT_S, "no upload started")
    started = time.monotonic()
    r.close()
    assert time.monotonic() - started < 1.0 + 3.0
    assert clip not in https_server.accepted and not r.of("uploaded")
    again = running()  # the next start
    wait_until(lambda: again.of("uploaded"), WAIT_S, "the cut-off upload was not sent again")
    assert https_server.accepted.get(clip) == 1


@pytest.mark.parametrize("via", ["direct", "proxy"])
def test_a_stop_cuts_off_a_server_that_never_answers_the_tls_handshake(
    store: ClipStore, tls_material: dict[str, Path], monkeypatch: pytest.MonkeyPatch, via: str
) -> None:
    """The socket was tracked only once the request went out: a server that took the TCP
    connection and never answered the TLS handshake held the worker past the stop (and past the
    request's own deadline) until the connect timeout. Through a proxy (HTTPS_PROXY) nothing was
    tracked at all: a silent proxy held it the same way."""
    monkeypatch.setattr(upload, "STOP_GRACE_S", 1.0)
    consent.grant(store, ("audio",))
    record(store)
    mute_server = socket.create_server(("127.0.0.1", 0))  # takes connections, never says a word
    silent = f"127.0.0.1:{mute_server.getsockname()[1]}"
    if via == "proxy":
        monkeypatch.setenv("HTTPS_PROXY", f"http://{silent}")
        monkeypatch.setenv("NO_PROXY", "")
    held: list[socket.socket] = []
    taker = threading.Thread(target=lambda: held.append(mute_server.accept()[0]), daemon=True)
    taker.start()
    url = f"https://{silent}" if via == "direct" else "https://uploads.example.invalid"
    uploader = Uploader(UploadSettings(url=url, ca_file=str(tls_material["ca"]), hold_s=0.0,
                                       timeout_s=60.0), store, EventSink())
    uploader.start()
    try:
        wait_until(lambda: held, WAIT_S, "the uploader never connected")
        started = time.monotonic()
        uploader.close()
        assert time.monotonic() - started < 1.0 + 3.0
        assert not any(t.is_alive() for t in uploader._threads)  # the worker ended, not left behind
    finally:
        for conn in held:
            conn.close()
        mute_server.close()


@pytest.mark.slow
def test_after_max_attempts_it_says_so_and_keeps_trying_at_the_longest_backoff(
    store: ClipStore, https_server: UploadServer, running: Any
) -> None:
    consent.grant(store, ("audio",))
    https_server.script.extend(["503"] * 5)
    record(store)
    r = running(max_attempts=3)
    wait_until(lambda: r.of("retrying"), WAIT_S, "no notice after max_attempts")
    # the notice counts the attempts itself: the fourth may be on the server by the time it is read
    [notice] = r.of("retrying")
    assert "HTTP 503" in notice["reason"] and "after 3 attempts" in notice["reason"]
    assert len(https_server.posts()) >= 3
    wait_until(lambda: r.of("uploaded"), WAIT_S, "gave up while the clip is still kept")
    assert len(https_server.posts()) == 6 and not r.of("failed") and len(r.of("retrying")) == 1


def test_a_server_that_is_not_trusted_is_a_tls_failure(
    store: ClipStore, https_server: UploadServer, running: Any
) -> None:
    consent.grant(store, ("audio",))
    record(store)
    r = running(ca_file=None, max_attempts=2)  # the test CA is not in the system's trust store
    wait_until(lambda: r.of("retrying"), WAIT_S, "TLS error not reported")
    assert "SSL" in r.of("retrying")[0]["reason"]
    assert https_server.accepted == {}


@pytest.mark.slow
def test_remote_delete_is_retried_until_confirmed(
    store: ClipStore, https_server: UploadServer, running: Any
) -> None:
    consent.grant(store, ("audio",))
    clip = record(store)
    r = running()
    wait_until(lambda: r.of("uploaded"), WAIT_S, "not uploaded")
    https_server.script.extend(["500", "503", "404"])
    reply = Controller(store, MuteState()).execute(DeleteCommand(request_id="forget", ids=[clip]))
    assert reply.to_dict()["remote"] == {"status": "pending", "pending": [clip], "confirmed": []}
    wait_until(lambda: [e for e in r.events if e["type"] == "deleted"], WAIT_S, "not confirmed")
    [follow_up] = [e for e in r.events if e["type"] == "deleted"]
    assert follow_up["request_id"] == "forget" and follow_up["remote"]["confirmed"] == [clip]
    deletes = [q for q in https_server.requests if q.method == "DELETE"]
    assert [q.path for q in deletes] == [f"/clips/{clip}"] * 3
    assert all(q.headers["Authorization"] == f"Bearer {TOKEN}" for q in deletes)


def test_no_identifying_byte_ever_leaves(
    store: ClipStore, https_server: UploadServer, running: Any, state_dir: Path
) -> None:
    (state_dir / "device_id").write_text("d3v1c31d0042")
    consent.grant(store, ("audio", "transcript"))
    for _ in range(2):
        record(store, transcript="turn on the kitchen light")
    r = running()
    wait_until(lambda: len(r.of("uploaded")) == 2, WAIT_S, "not uploaded")
    canaries = {socket.gethostname(), socket.getfqdn(), "d3v1c31d0042", "speaker-username"}
    for iface in Path("/sys/class/net").glob("*/address"):
        mac = iface.read_text().strip()
        if mac and mac != "00:00:00:00:00:00":
            canaries |= {mac, mac.replace(":", ""), mac.replace(":", "-")}
    cpuinfo = Path("/proc/cpuinfo").read_text()
    canaries |= set(re.findall(r"^Serial\s*:\s*(\S+)", cpuinfo, re.M))
    sent = https_server.everything_received().lower()
    assert len(https_server.posts()) == 2
    for canary in canaries:
        if len(canary) >= 6:
            assert canary.lower().encode() not in sent, f"{canary!r} left the device"


def test_keep_local_off_removes_the_copy_after_upload_but_remote_delete_still_works(
    store: ClipStore, https_server: UploadServer, running: Any
) -> None:
    consent.grant(store, ("audio",))
    clip = record(store)
    r = running(keep_local=False)
    wait_until(lambda: r.of("uploaded"), WAIT_S, "not uploaded")
    assert not (store.clips_dir / f"{clip}.clip").exists()
    assert store.get(clip).transcript is None
    result = store.delete(everything=True, request_id="all")
    assert result["remote_pending"] == [clip]
    wait_until(lambda: https_server.deleted == [clip], WAIT_S, "remote copy not deleted")


@pytest.mark.slow
def test_every_request_that_left_is_logged_with_host_metadata_and_answer(
    store: ClipStore, https_server: UploadServer, running: Any
) -> None:
    """What the web page's "What left this device" shows: each upload attempt and remote delete,
    with where it went and the server's answer; a transcript by its length only."""
    consent.grant(store, ("audio", "transcript"))
    https_server.script.extend(["503"])
    clip = record(store)
    r = running()
    wait_until(lambda: r.of("uploaded"), WAIT_S, "not uploaded")
    https_server.script.extend(["500", "404"])
    Controller(store, MuteState()).execute(DeleteCommand(request_id="gone", ids=[clip]))
    wait_until(lambda: [e for e in r.events if e["type"] == "deleted"], WAIT_S, "not confirmed")
    log = store.uploads.sent_log()[::-1]  # oldest first
    host = https_server.url.split("//")[1].split("/")[0]
    assert [(e["kind"], e["answer"].split(" ")[:2], e["host"]) for e in log] == [
        ("upload", ["HTTP", "503"], host), ("upload", ["HTTP", "200"], host),
        ("remote_delete", ["HTTP", "500"], host), ("remote_delete", ["HTTP", "404"], host)]
    assert log[1]["metadata"]["clip_id"] == clip and log[1]["metadata"]["wake_word"] == "hey_jarvis"
    assert log[1]["metadata"]["transcript"] == "[30 characters]" and log[2]["metadata"] is None
    assert store.uploads.clip_states(hold_s=0) == {clip: "remote_deleted"}
