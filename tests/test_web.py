"""The web page without a browser: who may listen where, the password file, the hand-off of
commands to the daemon, the upload log, and the HTTP rules (CSRF, Host, ranges, no-store)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import io
import json
import os
import socket
import ssl
import stat
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from device.control import consent, handoff
from device.control.commands import Controller
from device.control.mute import MuteState
from device.core import events
from device.core.config import Settings, UploadSettings, WebSettings
from device.core.errors import ConfigError, StoreError
from device.doctor import check_web
from device.storage.clips import ClipStore
from device.storage.upload_queue import REMOTE_DELETE, UPLOAD
from device.web import auth, policy
from tests.helpers import run_cli, spawn_cli
from tests.web_harness import WebServer, add_clip


def web(host: str, tls: bool = False) -> WebSettings:
    files = {"cert_file": "/c.pem", "key_file": "/k.pem"} if tls else {}
    return WebSettings(host=host, **files)


def test_loopback_needs_nothing_the_network_needs_a_password_and_https(state_dir: Path) -> None:
    state_dir.mkdir()
    assert policy.binding(web("127.0.0.1"), state_dir).protection.startswith("this device only")
    assert policy.binding(web("::1"), state_dir).warning is None
    with pytest.raises(ConfigError, match="edge-recorder web passwd"):
        policy.binding(web("0.0.0.0", tls=True), state_dir)
    auth.set_password(policy.password_path(state_dir), "a long enough password")
    with pytest.raises(ConfigError, match="web.cert_file and web.key_file"):
        policy.binding(web("192.168.1.20"), state_dir)
    assert policy.binding(web("0.0.0.0", tls=True), state_dir).url == "https://0.0.0.0:8380/"
    lan = policy.binding(web("0.0.0.0"), state_dir, insecure_lan=True)
    assert lan.warning and "plain HTTP" in lan.warning and "unencrypted" in lan.protection
    with pytest.raises(ValueError, match="both cert_file and key_file"):
        WebSettings(cert_file="/c.pem")


def test_passwd_stores_an_owner_only_argon2id_hash(state_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    proc = spawn_cli("web", "passwd", input="correct horse battery\n", timeout=60)
    assert proc.returncode == 0, proc.stderr
    path = policy.password_path(state_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("$argon2id$") and "correct horse" not in path.read_text()
    assert auth.check_password(path, "correct horse battery")
    assert not auth.check_password(path, "correct horse battery!")
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    short = run_cli("web", "passwd")
    assert short.returncode == 2 and short.stderr.count("\n") == 1 and "8 to 1024" in short.stderr
    assert auth.check_password(path, "correct horse battery")  # unchanged
    assert run_cli("web", "passwd", "--remove").returncode == 0
    assert not path.exists()


def test_a_lan_page_without_a_password_does_not_start(tmp_path: Path) -> None:
    cfg = tmp_path / "lan.toml"
    cfg.write_text('[web]\nhost = "0.0.0.0"\n')
    proc = run_cli("web", "--config", str(cfg))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "set a password first with `edge-recorder web passwd`" in proc.stderr


def test_a_missing_or_wrong_certificate_is_one_line(tmp_path: Path, tls_material: dict[str, Path]) -> None:
    for cert, key in (("/nonexistent.pem", "/nonexistent.key"),
                      (tls_material["cert"], tls_material["ca"])):  # a key that is not the key
        cfg = tmp_path / "tls.toml"
        cfg.write_text(f'[web]\ncert_file = "{cert}"\nkey_file = "{key}"\nport = 9\n')
        proc = run_cli("web", "--config", str(cfg))
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "cannot load them" in proc.stderr and "Traceback" not in proc.stderr


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        cfg = tmp_path / "port.toml"
        cfg.write_text(f"[web]\nport = {taken.getsockname()[1]}\n")
        proc = run_cli("web", "--config", str(cfg))
    assert proc.returncode == 2 and "is another program using it?" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_failed_logins_are_limited_per_address_and_in_all() -> None:
    limiter = auth.LoginLimiter()
    for _ in range(auth.FAILS_PER_CLIENT):
        assert limiter.wait_s("10.0.0.1") == 0
        limiter.failed("10.0.0.1")
    assert limiter.wait_s("10.0.0.1") > auth.WINDOW_S - 5
    assert limiter.wait_s("10.0.0.2") == 0  # another address may still try
    for i in range(auth.FAILS_IN_ALL):
        limiter.failed(f"10.0.1.{i}")
    assert limiter.wait_s("10.0.0.3") > 0  # a spread-out guesser is held back too


@pytest.fixture
def page(state_dir: Path) -> Iterator[WebServer]:
    srv = WebServer(state_dir)
    yield srv
    srv.close()


def request(srv: WebServer, method: str, path: str, body: dict[str, object] | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    data = urllib.parse.urlencode(body or {}, doseq=True).encode() if body is not None else None
    hdrs = {"Host": f"127.0.0.1:{srv.port}", **(headers or {})}
    if data is not None:
        hdrs["Content-Type"] = "application/x-www-form-urlencoded"
    conn.request(method, path, body=data, headers=hdrs)
    resp = conn.getresponse()
    out = resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    conn.close()
    return out


def session_of(srv: WebServer) -> tuple[str, str]:
    """A session cookie and its CSRF token, as a browser gets them from the page."""
    _, headers, body = request(srv, "GET", "/")
    cookie = headers["set-cookie"].split(";")[0]
    csrf = body.decode().split('name="csrf" value="')[1].split('"')[0]
    return cookie, csrf


def test_a_post_without_the_csrf_token_or_from_another_site_changes_nothing(page: WebServer) -> None:
    clip = add_clip(page.store)
    cookie, csrf = session_of(page)
    form = {"ids": clip.id, "form_id": "ab12"}
    assert request(page, "POST", "/clips/delete", form)[0] == 403  # no cookie (SameSite)
    assert request(page, "POST", "/clips/delete", form, {"Cookie": cookie})[0] == 403
    assert request(page, "POST", "/clips/delete", {**form, "csrf": "x" * 43},
                   {"Cookie": cookie})[0] == 403
    evil = {"Cookie": cookie, "Origin": "http://evil.example"}
    assert request(page, "POST", "/clips/delete", {**form, "csrf": csrf}, evil)[0] == 403
    assert [c.id for c in page.store.all()] == [clip.id]
    status, headers, _ = request(page, "POST", "/clips/delete", {**form, "csrf": csrf},
                                 {"Cookie": cookie, "Origin": f"http://127.0.0.1:{page.port}"})
    assert status == 303 and page.store.all() == []


def test_the_same_form_sent_twice_is_replayed_not_done_twice(page: WebServer) -> None:
    first, second = add_clip(page.store), add_clip(page.store)
    cookie, csrf = session_of(page)
    form = {"scope": "all", "confirm": "yes", "csrf": csrf, "form_id": "0a1b2c"}
    request(page, "POST", "/clips/delete", form, {"Cookie": cookie})
    third = add_clip(page.store)
    request(page, "POST", "/clips/delete", form, {"Cookie": cookie})  # the browser resends it
    assert [c.id for c in page.store.all()] == [third.id]
    assert {first.id, second.id}.isdisjoint(c.id for c in page.store.all())
    _, _, body = request(page, "GET", "/", headers={"Cookie": cookie})
    assert b"already done; nothing more was deleted" in body


def test_without_a_password_a_foreign_host_name_is_refused(page: WebServer) -> None:
    status, _, body = request(page, "GET", "/", headers={"Host": "rebind.example:80"})
    assert status == 403 and b"only this device" in body
    assert request(page, "GET", "/", headers={"Host": "localhost"})[0] == 200


def test_audio_is_streamed_in_ranges_and_never_cached(page: WebServer, state_dir: Path) -> None:
    clip = add_clip(page.store)
    wav = page.store.read_audio(clip)
    cookie, _ = session_of(page)
    status, headers, body = request(page, "GET", f"/clips/{clip.id}/audio", headers={"Cookie": cookie})
    assert status == 200 and body == wav and headers["cache-control"] == "no-store"
    assert headers["content-type"] == "audio/wav" and "default-src 'none'" in headers[
        "content-security-policy"]
    status, headers, body = request(page, "GET", f"/clips/{clip.id}/audio",
                                    headers={"Cookie": cookie, "Range": "bytes=44-99"})
    assert status == 206 and body == wav[44:100]
    assert headers["content-range"] == f"bytes 44-99/{len(wav)}"
    status, headers, body = request(page, "GET", f"/clips/{clip.id}/audio",
                                    headers={"Cookie": cookie, "Range": "bytes=-10"})
    assert status == 206 and body == wav[-10:]
    for nothing in ("bytes=-0", f"bytes={len(wav)}-"):  # ranges that select no byte
        status, headers, body = request(page, "GET", f"/clips/{clip.id}/audio",
                                        headers={"Cookie": cookie, "Range": nothing})
        assert (status, headers["content-range"], body) == (416, f"bytes */{len(wav)}", b"")
        assert headers["cache-control"] == "no-store"
    status, _, body = request(page, "GET", f"/clips/{clip.id}/audio",  # no 500 for absurd numbers
                              headers={"Cookie": cookie, "Range": "bytes=" + "9" * 5000 + "-"})
    assert (status, body) == (200, wav)
    status, headers, body = request(page, "GET", f"/clips/{clip.id}/wav", headers={"Cookie": cookie})
    assert body == wav and headers["content-disposition"] == f'attachment; filename="{clip.id}.wav"'
    on_disk = [p for p in state_dir.rglob("*") if p.is_file() and wav[44:1000] in p.read_bytes()]
    assert on_disk == []  # nothing decrypted was written anywhere in the state directory
    assert request(page, "GET", "/clips/" + "0" * 32 + "/audio", headers={"Cookie": cookie})[0] == 404


def test_https_when_a_certificate_is_configured(state_dir: Path, tls_material: dict[str, Path]) -> None:
    settings = Settings(web=WebSettings(cert_file=str(tls_material["cert"]),
                                        key_file=str(tls_material["key"])))
    srv = WebServer(state_dir, password="a long enough password", settings=settings)
    try:
        ctx = ssl.create_default_context(cafile=str(tls_material["ca"]))
        conn = http.client.HTTPSConnection("127.0.0.1", srv.port, context=ctx, timeout=30)
        conn.request("GET", "/login")
        resp = conn.getresponse()
        assert resp.status == 200 and "Secure" in resp.getheader("set-cookie", "")
        assert "HttpOnly" in resp.getheader("set-cookie", "")
        assert "SameSite=strict" in resp.getheader("set-cookie", "")
        conn.close()
    finally:
        srv.close()


def test_doctor_says_where_the_page_listens_and_how_it_is_protected(page: WebServer,
                                                                    state_dir: Path) -> None:
    on = check_web(Settings(web=WebSettings(port=page.port)), state_dir)
    assert on.ok and f"on at http://127.0.0.1:{page.port}/" in on.detail
    assert "this device only (loopback), no password" in on.detail
    page.close()
    off = check_web(Settings(web=WebSettings(port=page.port)), state_dir)
    assert off.ok and "off" in off.detail and "systemctl enable --now edge-recorder-web" in off.detail


# -- the hand-off to the daemon -------------------------------------------------------------------

def test_a_command_handed_to_the_daemon_is_run_there_and_announced(state_dir: Path) -> None:
    store = ClipStore(state_dir)
    announced: list[events.Event] = []
    server = handoff.HandoffServer(state_dir, Controller(store, MuteState()), announced.append)
    try:
        assert handoff.send(state_dir, "delete", {"request_id": "w1", "all": True}, False) is None
        server.start()
        assert stat.S_IMODE(os.stat(handoff.socket_path(state_dir)).st_mode) == 0o600
        clip = add_clip(store)
        reply = handoff.send(state_dir, "delete", {"request_id": "w2", "ids": [clip.id]}, False)
        assert reply is not None and reply["type"] == "deleted" and reply["ids"] == [clip.id]
        assert [e.to_dict() for e in announced] == [reply]
        refused = handoff.send(state_dir, "consent", {"request_id": "w3", "action": "grant"}, True)
        assert refused is not None and refused["code"] == "refused"
    finally:
        server.close()
        store.close()
    assert not handoff.socket_path(state_dir).exists()


def test_a_stalled_client_holds_neither_the_next_command_nor_the_stop(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half a request and then nothing (a web process frozen mid-send) held the one hand-off thread
    for 120 s: the next page command waited that long, and so did the daemon's stop (past
    systemd's TimeoutStopSec=30)."""
    monkeypatch.setattr(handoff, "REQUEST_TIMEOUT_S", 1.0)
    store = ClipStore(state_dir)
    server = handoff.HandoffServer(state_dir, Controller(store, MuteState()), lambda e: None)
    server.start()
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        stalled.connect(str(handoff.socket_path(state_dir)))
        stalled.sendall(b'{"kind": "delete", "pay')
        started = time.monotonic()
        reply = handoff.send(state_dir, "delete", {"request_id": "after", "all": True}, False,
                             timeout_s=20)
        assert reply is not None and reply["type"] == "deleted"
        assert time.monotonic() - started < 1.0 + 3.0
        again = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # and again, as the daemon stops,
        again.connect(str(handoff.socket_path(state_dir)))  # a byte at a time this time
        trickling = threading.Event()

        def trickle() -> None:
            for byte in b'{"kind": "delete", "payload": {"request_id": "slow", "all": true}}':
                if trickling.wait(0.3):
                    return
                with contextlib.suppress(OSError):
                    again.send(bytes([byte]))

        feeder = threading.Thread(target=trickle)
        feeder.start()
        time.sleep(0.5)  # taken by the hand-off thread
        started = time.monotonic()
        server.close()
        assert time.monotonic() - started < 1.0 + 3.0
        trickling.set()
        feeder.join()
        again.close()
    finally:
        stalled.close()
        server.close()
        store.close()


def test_a_reply_listing_thousands_of_clips_reaches_the_page_whole(state_dir: Path) -> None:
    """A delete of thousands of clips is answered with their ids: far more than a request may be
    (MAX_REQUEST_BYTES), and the page must read it whole (it was cut there, and the page reported
    the done delete as an error)."""
    import socket
    import threading

    state_dir.mkdir()
    ids = [f"{i:032x}" for i in range(5000)]
    reply = json.dumps({"type": "deleted", "request_id": "many", "ids": ids}).encode()
    assert len(reply) > 2 * handoff.MAX_REQUEST_BYTES
    daemon = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    daemon.bind(str(handoff.socket_path(state_dir)))
    daemon.listen(1)

    def answer() -> None:
        conn, _ = daemon.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(reply + b"\n")

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        got = handoff.send(state_dir, "delete", {"request_id": "many", "all": True}, False, timeout_s=30)
    finally:
        thread.join()
        daemon.close()
    assert got is not None and got["ids"] == ids


def test_a_reply_that_cannot_be_announced_still_reaches_the_page_and_the_next_command_runs(
        state_dir: Path) -> None:
    """MQTT's trouble (a status that cannot be read, a broker call that raises) is not the page's:
    the command's reply still reaches it, and the daemon's hand-off goes on serving."""
    store = ClipStore(state_dir)
    failures = ["the broker is gone"]

    def announce(reply: events.Event) -> None:
        if failures:
            raise RuntimeError(failures.pop())

    server = handoff.HandoffServer(state_dir, Controller(store, MuteState()), announce)
    server.start()
    try:
        first, second = add_clip(store), add_clip(store)
        for rid, clip in (("a1", first), ("a2", second)):
            reply = handoff.send(state_dir, "delete", {"request_id": rid, "ids": [clip.id]}, False,
                                 timeout_s=10)
            assert reply is not None and reply["ids"] == [clip.id]
        assert store.count() == 0 and failures == []
    finally:
        server.close()
        store.close()


# -- what left the device -------------------------------------------------------------------------

def test_the_page_names_the_upload_server_without_the_login_in_its_url(state_dir: Path) -> None:
    settings = Settings(upload=UploadSettings(url="https://owner:s3cret@uploads.example:8443/clips"))
    srv = WebServer(state_dir, settings=settings)
    try:
        cookie, _ = session_of(srv)
        status, _, body = request(srv, "GET", "/sent", headers={"Cookie": cookie})
        assert status == 200 and b"<strong>uploads.example:8443</strong>" in body
        assert b"s3cret" not in body and b"owner:" not in body
    finally:
        srv.close()


def test_the_upload_log_keeps_where_and_what_but_never_the_transcript(state_dir: Path) -> None:
    store = ClipStore(state_dir)
    try:
        clip = add_clip(store, transcript="my card is 1234")
        q = store.uploads
        q.enqueue(clip.id, "audio,transcript", recorded_at=0.0)
        assert q.clip_states(hold_s=600)[clip.id] == "queued"
        q.record_sent(UPLOAD, clip.id, "uploads.example:8443", "HTTP 201 Created",
                      {"clip_id": clip.id, "transcript": "my card is 1234"})
        q.record_sent(REMOTE_DELETE, clip.id, "uploads.example:8443", "HTTP 204 No Content")
        log = q.sent_log()
        assert [r["kind"] for r in log] == [REMOTE_DELETE, UPLOAD]
        assert log[1]["metadata"] == {"clip_id": clip.id, "transcript": "[15 characters]"}
        assert q.clip_states(hold_s=600)[clip.id] == "queued"  # the queue's own row comes first
        store.delete(ids=[clip.id])
        raw = (state_dir / "index.sqlite").read_bytes()
        assert b"1234" not in raw and json.dumps(log[0]["host"]).encode()[1:-1] in raw
        assert len(q.sent_log()) == 2  # the log outlives the clip
        store.wipe()
        assert q.sent_log() == []
    finally:
        store.close()


def test_a_daemon_that_never_answers_is_an_error_not_a_hang(state_dir: Path) -> None:
    import socket

    state_dir.mkdir()
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(str(handoff.socket_path(state_dir)))
    mute.listen(1)  # accepts (the kernel's backlog) and never replies
    try:
        with pytest.raises(StoreError, match="the daemon did not answer"):
            handoff.send(state_dir, "delete", {"request_id": "h", "all": True}, False, timeout_s=0.3)
    finally:
        mute.close()


def test_strangers_fetching_the_sign_in_page_cannot_push_the_owner_out() -> None:
    sessions = auth.Sessions(idle_s=3600)
    owner = sessions.new(signed_in=True)
    for _ in range(auth.MAX_SESSIONS * 2):
        sessions.new(signed_in=False)
    assert sessions.get(owner.token) is owner


# -- from the network: only what reduces ------------------------------------------------------------

async def asgi_request(app: Any, method: str, path: str, client: str, cookie: str,
                       form: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One request straight into the ASGI app, from `client` (a LAN address cannot be bound here)."""
    body = urllib.parse.urlencode(form or {}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "client": (client, 50000), "server": ("192.168.1.2", 8380),
             "headers": [(b"host", b"speaker.local:8380"), (b"cookie", cookie.encode()),
                         (b"content-type", b"application/x-www-form-urlencoded")]}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def asgi_call(app: Any, method: str, path: str, client: str, cookie: str,
              form: dict[str, str] | None = None) -> tuple[int, bytes]:
    return asyncio.run(asgi_request(app, method, path, client, cookie, form))


def test_guesses_sent_all_at_once_are_limited_like_guesses_one_by_one(
        state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Thirty wrong passwords from one address at the same moment: each passes the first look at
    the limit before any has failed, so the limit is asked again when its check's turn comes."""
    srv = WebServer(state_dir, password="a long enough password")
    checked = []
    real = auth.check_password

    def counted(path: Path, password: str) -> bool:
        checked.append(password)
        return real(path, password)

    monkeypatch.setattr(auth, "check_password", counted)
    try:
        app, session = srv.app.asgi(), srv.app.sessions.new(signed_in=False)
        cookie = f"er_session={session.token}"

        async def guesses() -> list[tuple[int, bytes]]:
            return await asyncio.gather(*(asgi_request(
                app, "POST", "/login", "192.168.1.40", cookie,
                {"csrf": session.csrf, "password": f"guess {i}"}) for i in range(30)))

        statuses = sorted(status for status, _ in asyncio.run(guesses()))
        assert len(checked) == auth.FAILS_PER_CLIENT
        assert statuses == [401] * auth.FAILS_PER_CLIENT + [429] * (30 - auth.FAILS_PER_CLIENT)
    finally:
        srv.close()


def test_from_the_network_the_page_only_reduces(state_dir: Path) -> None:
    srv = WebServer(state_dir, password="a long enough password")
    try:
        app, session = srv.app.asgi(), srv.app.sessions.new(signed_in=True)
        cookie = f"er_session={session.token}"
        lan, here = "192.168.1.30", "127.0.0.1"
        status, html = asgi_call(app, "GET", "/settings", lan, cookie)
        assert status == 200 and b'id="grant"' not in html and b"only be given on the speaker" in html
        grant = {"csrf": session.csrf, "action": "grant", "scope": "audio"}
        assert asgi_call(app, "POST", "/settings/consent", lan, cookie, grant)[0] == 303
        assert consent.read(srv.store).covers is None  # P1: never granted from the network
        assert "only be granted on the device" in session.flash[-1]
        save = {"csrf": session.csrf, "mode": "nothing", "form_id": "01"}
        asgi_call(app, "POST", "/settings/save", lan, cookie, save)
        assert srv.app.save.refresh().mode == "nothing"  # saving less: allowed
        asgi_call(app, "POST", "/settings/save", lan, cookie, {**save, "mode": "audio"})
        assert srv.app.save.refresh().mode == "nothing" and "saving can only be reduced" in \
            session.flash[-1]
        asgi_call(app, "POST", "/settings/save", here, cookie, {**save, "mode": "audio"})
        assert srv.app.save.refresh().mode == "audio"  # on the device: as the CLI may
        asgi_call(app, "POST", "/settings/consent", here, cookie, grant)
        assert consent.read(srv.store).covers == "audio"
        assert asgi_call(app, "GET", "/", lan, "")[0] == 303  # not signed in: to the sign-in page
    finally:
        srv.close()


def test_what_the_cli_set_a_moment_ago_holds_on_the_page_and_against_the_network(
        state_dir: Path) -> None:
    """The page's process follows no setting: after `edge-recorder save nothing` in another process,
    its header says so, and a request from the network cannot return to saving audio."""
    srv = WebServer(state_dir, password="a long enough password")
    try:
        app, session = srv.app.asgi(), srv.app.sessions.new(signed_in=True)
        cookie = f"er_session={session.token}"
        assert b'id="saving">audio<' in asgi_call(app, "GET", "/", "127.0.0.1", cookie)[1]
        assert run_cli("save", "transcript").returncode == 0
        assert b'id="saving">transcript<' in asgi_call(app, "GET", "/", "127.0.0.1", cookie)[1]
        assert run_cli("save", "nothing").returncode == 0
        save = {"csrf": session.csrf, "mode": "transcript", "form_id": "02"}
        asgi_call(app, "POST", "/settings/save", "192.168.1.30", cookie, save)
        assert "saving can only be reduced (now 'nothing')" in session.flash[-1]
        assert srv.store.state.preferences.get("recorder.save", "") == "nothing"
    finally:
        srv.close()


def test_a_state_directory_too_deep_for_a_socket_leaves_the_daemon_running(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "state"
    store = ClipStore(deep)
    server = handoff.HandoffServer(deep, Controller(store, MuteState()), lambda e: None)
    try:
        server.start()  # AF_UNIX paths stop at 107 bytes: a warning, not a crash
        assert handoff.send(deep, "delete", {"request_id": "d", "all": True}, False) is None
    finally:
        server.close()
        store.close()


def test_an_index_from_before_the_upload_log_gains_it(state_dir: Path) -> None:
    import sqlite3

    ClipStore(state_dir).close()
    old = sqlite3.connect(state_dir / "index.sqlite")  # as version 4 left it: no `sent` table
    old.executescript("DROP TABLE sent;\nPRAGMA user_version = 4;")
    old.close()
    store = ClipStore(state_dir)
    try:
        store.uploads.record_sent(UPLOAD, "0" * 32, "uploads.example", "HTTP 201 Created")
        assert [r["answer"] for r in store.uploads.sent_log()] == ["HTTP 201 Created"]
    finally:
        store.close()
