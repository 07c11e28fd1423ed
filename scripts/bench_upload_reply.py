"""Peak memory of an upload whose server answers with a huge body, next to bare `requests`.

    scripts/bench-upload-reply [--reply-mb 1536] [--repo PATH]

Starts an HTTPS server on loopback (the tests' throwaway CA, made with openssl) that answers every POST and
DELETE with 200 and a body of --reply-mb MiB (Content-Length set, sent in 1 MiB writes). Each side
runs in a fresh child process, so its peak RSS (ru_maxrss) is its own:
- `uploader`: edge-recorder's Uploader as the daemon runs it (a ClipStore, consent granted, one
  clip recorded, hold 0) until the clip is uploaded;
- `bare_requests`: `requests.post(url, data=...)` with the same multipart body, as the library does
  by default (the reply is read whole).
Prints a table and one JSON line. --repo imports `device` from another checkout (e.g. an older
commit unpacked with `git archive`), to measure before and after a change with the same server.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MIB = 1 << 20

from tests.upload_server import make_test_tls  # noqa: E402  (the tests' throwaway CA)


class HugeReplies(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tls: dict[str, Path], reply_bytes: int) -> None:
        import ssl

        super().__init__(("127.0.0.1", 0), Handler)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(tls["cert"], tls["key"])
        self.socket = ctx.wrap_socket(self.socket, server_side=True)
        self.reply_bytes = reply_bytes
        self.written = 0
        threading.Thread(target=self.serve_forever, daemon=True).start()


class Handler(BaseHTTPRequestHandler):
    server: HugeReplies
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", str(self.server.reply_bytes))
        self.end_headers()
        chunk, left = b"x" * MIB, self.server.reply_bytes
        try:
            while left > 0:
                self.wfile.write(chunk[:left])
                self.server.written += min(left, MIB)
                left -= MIB
        except OSError:
            self.close_connection = True

    do_POST = _answer
    do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


def child_uploader(url: str, ca: str, state: str) -> dict[str, Any]:
    import numpy as np

    from device.control import consent
    from device.core.config import UploadSettings
    from device.core.events import EventSink
    from device.integrations.upload import Uploader
    from device.storage.clips import ClipStore

    store = ClipStore(Path(state))
    consent.grant(store, ("audio",))
    samples = (np.sin(np.arange(16000 * 5) / 7) * 3000).astype(np.int16)
    done = threading.Event()
    statuses: list[str] = []
    sink = EventSink()

    def on_event(event: Any) -> None:
        if event.type == "upload":
            statuses.append(event.status)
            done.set()

    sink.subscribe(on_event)
    uploader = Uploader(UploadSettings(url=url, ca_file=ca, hold_s=0, timeout_s=600), store, sink)
    base = rss_now_mb()
    started = time.monotonic()
    uploader.start()
    store.add(samples, 1.0, 6.0, "hey_jarvis", 0.97, None,
              eligible=lambda: consent.read(store).covers)
    done.wait(900)
    seconds = time.monotonic() - started
    uploader.close()
    return {"status": statuses[0] if statuses else "none", "seconds": round(seconds, 2),
            "rss_before_mb": base, "peak_rss_mb": peak_rss_mb()}


def child_bare(url: str, ca: str) -> dict[str, Any]:
    import requests
    from urllib3.filepost import encode_multipart_formdata

    body, content_type = encode_multipart_formdata({"audio": ("a.wav", b"\0" * 160_000, "audio/wav")})
    base = rss_now_mb()
    started = time.monotonic()
    resp = requests.post(url, data=body, headers={"Content-Type": content_type}, verify=ca,
                         timeout=600)
    return {"status": f"HTTP {resp.status_code}", "seconds": round(time.monotonic() - started, 2),
            "rss_before_mb": base, "peak_rss_mb": peak_rss_mb()}


def rss_now_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_child(side: str, repo: Path, url: str, ca: Path, work: Path) -> dict[str, Any]:
    args = [sys.executable, __file__, "--child", side, "--repo", str(repo), "--url", url,
            "--ca", str(ca), "--state", str(work / f"state-{side}")]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{side} failed: {proc.stderr.strip()[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reply-mb", type=int, default=1536)
    parser.add_argument("--repo", type=Path, default=ROOT)
    parser.add_argument("--child", choices=["uploader", "bare_requests"])
    parser.add_argument("--url")
    parser.add_argument("--ca")
    parser.add_argument("--state")
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(args.repo.resolve()))
        got = child_uploader(args.url, args.ca, args.state) if args.child == "uploader" \
            else child_bare(args.url, args.ca)
        print(json.dumps(got))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tls = make_test_tls(work)
        server = HugeReplies(tls, args.reply_mb * MIB)
        url = f"https://127.0.0.1:{server.server_address[1]}/clips"
        result: dict[str, Any] = {"reply_mb": args.reply_mb, "repo": str(args.repo)}
        for side in ("uploader", "bare_requests"):
            server.written = 0
            result[side] = run_child(side, args.repo, url, tls["ca"], work)
            result[side]["server_wrote_mb"] = round(server.written / MIB, 1)
        server.shutdown()
    print(f"reply of {args.reply_mb} MiB; device code from {args.repo}")
    print(f"{'side':<14} {'status':>10} {'s':>7} {'RSS before MB':>14} {'peak RSS MB':>12} "
          f"{'server wrote MB':>16}")
    for side in ("uploader", "bare_requests"):
        r = result[side]
        print(f"{side:<14} {r['status']:>10} {r['seconds']:>7} {r['rss_before_mb']:>14} "
              f"{r['peak_rss_mb']:>12} {r['server_wrote_mb']:>16}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
