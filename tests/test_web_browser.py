"""The web page in a real browser: Debian's Chromium, headless, driven by Playwright (the system
browser; nothing is downloaded). One browser for the module; each test has its own context.
The screenshots in docs/images/ are made here, so they show the page as it is:
`EDGE_RECORDER_SCREENSHOTS=docs .venv/bin/pytest tests/test_web_browser.py` renews them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from device.storage.upload_queue import REMOTE_DELETE, UPLOAD
from tests.helpers import ENTRY_POINT, WAKE_SENTENCE, Broker, wait_until
from tests.test_daemon_mqtt import retained_status
from tests.web_harness import TONE_S, WebServer, add_clip

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORD = "the household's password"
IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
SHOTS = Path(tempfile.gettempdir()) / "edge-recorder-screenshots"
PHONE = {"width": 390, "height": 844}

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is missing")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def shared_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    srv = WebServer(tmp_path_factory.mktemp("web") / "state", password=PASSWORD)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def household(browser: Any, shared_site: WebServer) -> Iterator[Any]:
    """One signed-in browser context for the module (a test opens its own page in it)."""
    page = signed_in(browser, shared_site)
    yield page.context
    page.context.close()


@pytest.fixture
def site(shared_site: WebServer) -> WebServer:
    """The module's page, with no clips left by an earlier test."""
    shared_site.store.delete(everything=True)
    return shared_site


@pytest.fixture
def page(household: Any, site: WebServer) -> Iterator[Any]:
    tab = household.new_page()
    tab.set_viewport_size({"width": 900, "height": 900})
    tab.on("dialog", lambda d: d.accept())  # "Delete this recording?"
    tab.goto(site.url + "/")
    yield tab
    tab.close()


def signed_in(browser: Any, site: WebServer, viewport: dict[str, int] | None = None) -> Any:
    context = browser.new_context(viewport=viewport or {"width": 900, "height": 900},
                                  accept_downloads=True)
    page = context.new_page()
    page.on("dialog", lambda d: d.accept())
    page.goto(site.url + "/")
    assert page.url.endswith("/login")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(site.url + "/")
    return page


def shot(page: Any, name: str) -> None:
    """Every run takes the screenshots; `EDGE_RECORDER_SCREENSHOTS=docs` writes them over the ones
    in docs/images/ (each run's clips have new times, so a plain test run leaves the tree clean)."""
    folder = IMAGES if os.environ.get("EDGE_RECORDER_SCREENSHOTS") == "docs" else SHOTS
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / name), full_page=True)


def listed(page: Any) -> list[str]:
    return page.eval_on_selector_all("li.clip", "els => els.map(e => e.id.slice(5))")


@pytest.mark.slow
def test_sign_in_list_newest_first_play_and_export(browser: Any, site: WebServer) -> None:
    markup = add_clip(site.store, transcript='<script>window.pwned = 1</script><b>bold?</b>')
    longer = add_clip(site.store, transcript="what's the weather tomorrow", seconds=2.5)
    text_only = add_clip(site.store, transcript="remind me to call mum", audio=False)
    page = signed_in(browser, site)
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url))
    page.reload()
    assert listed(page) == [text_only.id, longer.id, markup.id]
    row = page.locator(f"#clip-{markup.id}")
    assert row.locator(".transcript").inner_text() == markup.transcript  # shown as text
    assert page.evaluate("window.pwned") is None and row.locator("b").count() == 0
    assert "text only" in page.locator(f"#clip-{text_only.id}").inner_text()
    assert page.locator(f"#clip-{text_only.id} audio").count() == 0
    assert "local only" in row.inner_text()

    duration = page.evaluate("""async (id) => {
        const audio = document.querySelector(`#clip-${id} audio`);
        audio.preload = "auto"; audio.load();
        await new Promise((ok, fail) => { audio.onloadedmetadata = ok; audio.onerror = fail; });
        return audio.duration; }""", longer.id)
    assert duration == pytest.approx(2.5, abs=0.01)

    with page.expect_download() as download:
        page.click(f"#clip-{longer.id} a[download]")
    assert Path(download.value.path()).read_bytes() == site.store.read_audio(longer)
    assert asked and all(url.startswith(site.url + "/") for url in asked)  # nothing third-party
    shot(page, "web-recordings.png")
    page.set_viewport_size(PHONE)  # a phone: the same page, nothing wider than the screen
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    shot(page, "web-phone.png")
    page.context.close()


@pytest.mark.slow
def test_a_wrong_password_is_refused_and_then_held_back(browser: Any, state_dir: Path) -> None:
    srv = WebServer(state_dir, password=PASSWORD)
    try:
        add_clip(srv.store)
        page = browser.new_page()
        page.goto(srv.url + "/")
        for attempt in range(6):
            page.fill("input[name=password]", "guess" * (attempt + 2))
            with page.expect_response(lambda r: r.url.endswith("/login") and r.request.method == "POST"
                                      ) as answer:
                page.click("button[type=submit]")
            assert answer.value.status == (401 if attempt < 5 else 429)
        assert "Too many wrong passwords" in page.inner_text(".error")
        assert page.locator("li.clip").count() == 0
        page.goto(srv.url + "/")
        assert page.url.endswith("/login")
        page.close()
    finally:
        srv.close()


@pytest.mark.slow
def test_delete_one_selected_and_all(page: Any, site: WebServer) -> None:
    state_dir = site.store.state_dir
    clips = [add_clip(site.store, transcript=f"clip {i}") for i in range(5)]
    page.reload()
    page.click(f"#clip-{clips[0].id} button.delete")
    page.wait_for_selector(".flash")
    assert "Deleted: 1 clip." in page.inner_text(".flash")
    assert clips[0].id not in listed(page)
    assert not (state_dir / "clips" / f"{clips[0].id}.clip").exists()

    for clip in clips[1:3]:
        page.check(f"#clip-{clip.id} input[name=selected]")
    page.click("#delete-selected")
    page.wait_for_selector(".flash")
    assert "Deleted: 2 clips." in page.inner_text(".flash")
    assert listed(page) == [clips[4].id, clips[3].id]

    page.click("#delete-all")  # the confirmation box is not ticked: the browser does not send it
    assert len(listed(page)) == 2
    page.check("form:has(#delete-all) input[name=confirm]")
    page.click("#delete-all")
    page.wait_for_selector(".empty")
    assert listed(page) == [] and site.store.all() == []
    assert list((state_dir / "clips").iterdir()) == []


def test_that_wasnt_for_me_deletes_and_counts_a_false_wake(page: Any, site: WebServer) -> None:
    kept, rejected = add_clip(site.store), add_clip(site.store, transcript="<i>tv noise</i>")
    before = (site.store.state.stats.days(1) or [{}])[0]
    page.reload()
    page.click(f"#clip-{rejected.id} button.reject")
    page.wait_for_selector(".flash")
    assert "counted as a false wake" in page.inner_text(".flash")
    assert listed(page) == [kept.id]
    today = site.store.state.stats.days(1)[0]
    assert today["rejected"] == before.get("rejected", 0) + 1
    assert today["deleted"] == before.get("deleted", 0) + 1
    page.click("nav >> text=Days")
    row = page.locator("table.days tbody tr").first
    assert row.locator(".false").inner_text() == str(today["rejected"])
    assert row.locator(".deleted").inner_text() == str(today["deleted"])
    assert page.locator("svg.chart rect.bar-false_wakes").count() == 14
    shot(page, "web-days.png")


@pytest.mark.slow
def test_forged_posts_are_refused(page: Any, browser: Any, site: WebServer) -> None:
    clip = add_clip(site.store)
    page.reload()
    forged = page.request.post(site.url + "/clips/delete", form={"ids": clip.id, "form_id": "1"})
    assert forged.status == 403  # the session cookie went along, the CSRF token did not
    other = browser.new_page()  # a page of another site that posts to the speaker
    other.set_content(f'<form method="post" action="{site.url}/clips/delete">'
                      f'<input name="ids" value="{clip.id}"></form>')
    with other.expect_navigation():
        other.evaluate("document.forms[0].submit()")
    assert "Refused" in other.content()
    assert [c.id for c in site.store.all()] == [clip.id]
    other.close()


@pytest.mark.slow
def test_settings_sensitivity_save_mode_and_consent(page: Any, site: WebServer) -> None:
    page.reload()
    page.click("nav >> text=Settings")
    page.select_option("select[name=level]", "strict")
    page.click("form[action='/settings/sensitivity'] button")
    page.wait_for_selector(".flash")
    assert page.inner_text("#sensitivity") == "strict"
    page.select_option("select[name=mode]", "transcript")
    page.click("form[action='/settings/save'] button")
    page.wait_for_selector(".flash")
    assert page.inner_text("#save-mode") == "transcript" and page.inner_text("#saving") == "transcript"
    page.select_option("select[name=scope]", "audio,transcript")
    page.click("#grant")  # on the device itself (loopback): as the CLI may
    page.wait_for_selector("#revoke")
    assert page.inner_text("#consent") == "on"
    shot(page, "web-settings.png")
    page.click("#revoke")
    page.wait_for_selector("#grant")
    assert page.inner_text("#consent") == "off" and "waiting upload(s) were cancelled" in \
        page.inner_text(".flash")


@pytest.mark.slow
def test_what_left_this_device(page: Any, site: WebServer) -> None:
    clip = add_clip(site.store, transcript="a private sentence")
    q = site.store.uploads
    meta = {"clip_id": clip.id, "recorded_hour": "2026-11-30T09:00:00Z", "duration_s": TONE_S,
            "wake_word": "hey_jarvis", "transcript": clip.transcript}
    q.record_sent(UPLOAD, clip.id, "uploads.home.example", "none: ConnectionError: refused", meta)
    q.record_sent(UPLOAD, clip.id, "uploads.home.example", "HTTP 201 Created", meta)
    q.record_sent(REMOTE_DELETE, clip.id, "uploads.home.example", "HTTP 204 No Content")
    page.reload()
    assert "remote copy deleted (confirmed by the server)" in page.inner_text(f"#clip-{clip.id}")
    page.click("nav >> text=What left this device")
    rows = page.locator("table.sent tbody tr")
    assert rows.count() == 3
    assert "remote delete" in rows.nth(0).inner_text() and "HTTP 204" in rows.nth(0).inner_text()
    assert "uploads.home.example" in rows.nth(1).inner_text()
    assert "a private sentence" not in page.content() and "[18 characters]" in rows.nth(1).inner_text()
    shot(page, "web-sent.png")


# -- beside the running daemon, with a real broker ------------------------------------------------

DEVICE = "0e2e0e2e0e2f"
BASE = f"edge-recorder/{DEVICE}/"


@pytest.mark.slow
def test_the_page_while_the_daemon_records_and_evt_deleted_on_mqtt(
    browser: Any, broker: Broker, with_models: Path, speech: Callable[..., Path], tmp_path: Path,
    state_dir: Path
) -> None:
    """The daemon's pipeline at real time (`simulate --realtime`, with MQTT: the same process `run`
    is, on a file) records while the page is open; the page lists the new clip and hands its
    delete to the daemon, which announces it on `evt/deleted` at once."""
    state_dir.mkdir(mode=0o700)
    (state_dir / "device_id").write_text(DEVICE)
    cfg = tmp_path / "daemon.toml"
    cfg.write_text('[indicator]\npin_factory = "mock"\n' + broker.config_toml())
    events = tmp_path / "events.jsonl"
    daemon = subprocess.Popen(
        [str(ENTRY_POINT), "simulate", "--realtime", "--config", str(cfg), "--events", str(events),
         str(speech(WAKE_SENTENCE, tail_s=60.0))],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def seen(kind: str, **fields: str) -> list[dict[str, Any]]:
        lines = events.read_text().splitlines() if events.exists() else []
        return [e for e in map(json.loads, lines)
                if e["type"] == kind and all(e.get(k) == v for k, v in fields.items())]

    srv = None
    try:
        srv = WebServer(state_dir, password=PASSWORD)
        page = signed_in(browser, srv)
        wait_until(lambda: seen("indicator", state="recording") or daemon.poll() is not None, 120,
                   "the daemon never recorded")
        page.reload()  # the light is on: the page reads the store the daemon is writing to
        assert listed(page) == []
        wait_until(lambda: seen("clip"), 60, "no clip stored")
        recorded = seen("clip")[0]["id"]
        page.reload()
        assert listed(page) == [recorded]
        # the retained status arriving proves the subscription is live before the delete is sent
        sub = subprocess.Popen(["mosquitto_sub", *broker.client_args(), "-v", "-t", BASE + "status",
                                "-t", BASE + "evt/deleted"], stdout=subprocess.PIPE, text=True)
        heard: list[tuple[str, str]] = []
        reader = threading.Thread(target=lambda: heard.extend(
            tuple(line.rstrip("\n").split(" ", 1)) for line in sub.stdout or ()), daemon=True)
        reader.start()
        try:
            wait_until(lambda: any(t == BASE + "status" for t, _ in heard), 10, "not subscribed")
            wait_until(lambda: (state_dir / ".commands.sock").exists(), 30, "no hand-off socket")
            page.click(f"#clip-{recorded} button.delete")
            page.wait_for_selector(".flash")
            wait_until(lambda: any(t == BASE + "evt/deleted" for t, _ in heard), 40, "no evt/deleted")
        finally:
            sub.terminate()
            sub.wait(timeout=10)
        deleted = json.loads(next(body for t, body in heard if t == BASE + "evt/deleted"))
        assert deleted["ids"] == [recorded] and deleted["request_id"].startswith("web-")
        assert listed(page) == [] and not (state_dir / "clips" / f"{recorded}.clip").exists()
        assert retained_status(broker, BASE)["clips"] == 0  # announced with the reply
        page.context.close()
    finally:
        if srv is not None:
            srv.close()
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=60)
    assert "Traceback" not in err
