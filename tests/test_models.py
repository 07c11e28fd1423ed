"""Model fetching: pinned digests, resumable downloads, clear errors offline. The HTTP server is a
real one on loopback that honours Range requests and can cut a response short."""

from __future__ import annotations

import hashlib
import io
import random
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from device.core.errors import DownloadError
from device.storage.models import Archive, ModelStore
from tests.helpers import run_cli


def tiny_model_zip(name: str = "tiny-model") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"{name}/am/final.mdl", random.Random(7).randbytes(400_000))
        zf.writestr(f"{name}/conf/model.conf", "--sample-frequency=16000\n")
    return buf.getvalue()


class ModelServer(ThreadingHTTPServer):
    body = b""
    cut_after: int | None = None
    """Close the connection after this many bytes of the next response (then serve normally)."""
    requests: list[dict[str, str]]


class Handler(BaseHTTPRequestHandler):
    server: ModelServer

    def do_GET(self) -> None:  # noqa: N802
        self.server.requests.append(dict(self.headers))
        body, start = self.server.body, 0
        if rng := self.headers.get("Range"):
            start = int(rng.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        chunk = body[start:]
        if self.server.cut_after is not None:
            chunk, self.server.cut_after = chunk[: self.server.cut_after], None
            self.wfile.write(chunk)
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(chunk)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ModelServer]:
    srv = ModelServer(("127.0.0.1", 0), Handler)
    srv.requests = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def url(srv: ModelServer) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/tiny-model.zip"


def test_an_interrupted_download_resumes_where_it_stopped(server: ModelServer, tmp_path: Path) -> None:
    server.body = tiny_model_zip()
    archive = Archive("tiny-model", url(server), hashlib.sha256(server.body).hexdigest(),
                      len(server.body))
    store = ModelStore(tmp_path / "models")
    server.cut_after = 250_000
    with pytest.raises(DownloadError, match="cannot download .*a partial download resumes"):
        store.fetch_vosk(archive.url, archive)
    kept = (tmp_path / "models" / "tiny-model.zip.part").stat().st_size
    assert 0 < kept <= 250_000

    path = store.fetch_vosk(archive.url, archive)
    assert server.requests[-1]["Range"] == f"bytes={kept}-"
    assert path == (tmp_path / "models" / "vosk" / "tiny-model").resolve()
    assert store.vosk_model() == path
    assert not (tmp_path / "models" / "tiny-model.zip.part").exists()
    [row] = [s for s in store.status() if s.kind == "asr"]
    assert row.ok


def test_a_download_that_does_not_match_the_pinned_digest_is_refused(
    server: ModelServer, tmp_path: Path
) -> None:
    server.body = tiny_model_zip()  # served in place of the real English model
    proc = run_cli("models", "fetch", "--vosk", "--vosk-url", url(server),
                   "--state-dir", str(tmp_path / "s"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "checksum mismatch" in proc.stderr and "30f26242" in proc.stderr
    assert not list((tmp_path / "s" / "models").glob("*.part"))
    assert not (tmp_path / "s" / "models" / "vosk.json").exists()


def test_offline_says_what_to_do(tmp_path: Path) -> None:
    proc = run_cli("models", "fetch", "--vosk", "--vosk-url", "http://127.0.0.1:9/m.zip",
                   "--state-dir", str(tmp_path / "s"))
    assert proc.returncode == 1
    [line] = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert "cannot download http://127.0.0.1:9/m.zip" in line
    assert "--vosk-zip FILE" in line and "--vosk-model DIR" in line


def test_a_local_zip_must_be_the_pinned_one(tmp_path: Path) -> None:
    fake = tmp_path / "vosk-model-small-en-us-0.15.zip"
    fake.write_bytes(tiny_model_zip("vosk-model-small-en-us-0.15"))
    proc = run_cli("models", "fetch", "--vosk-zip", str(fake), "--state-dir", str(tmp_path / "s"))
    assert proc.returncode == 1 and "checksum mismatch" in proc.stderr


def test_a_wheel_that_is_not_the_pinned_one_is_refused(tmp_path: Path) -> None:
    wheel = tmp_path / "wyoming_openwakeword-1.8.2-py3-none-any.whl"
    wheel.write_bytes(tiny_model_zip())
    proc = run_cli("models", "fetch", "--wheel", str(wheel), "--state-dir", str(tmp_path / "s"))
    assert proc.returncode == 1 and "is not the pinned wyoming-openwakeword==1.8.2" in proc.stderr


def test_models_list_fails_when_wake_models_are_missing(tmp_path: Path) -> None:
    proc = run_cli("models", "list", "--state-dir", str(tmp_path / "s"))
    assert proc.returncode == 1 and '"not installed"' in proc.stdout


def test_installed_models_verify(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_RECORDER_MODELS_DIR", str(models_dir))
    proc = run_cli("models", "list")
    assert proc.returncode == 0
    assert proc.stdout.count('"sha256 verified"') == 7
