"""The web page beside the listening daemon: its memory, and the time to draw 1,000 clips.

    EDGE_RECORDER_MODELS_DIR=... scripts/bench-web [--clips 1000] [--requests 10]

One run, in a fresh state directory filled with --clips clips of 1.5 s:
- the daemon listens at real time (`simulate --realtime` on two minutes of quiet room noise, ASR
  off), the same process a speaker runs, with the store the page reads;
- `edge-recorder web` starts beside it; its RSS when idle (after start, before any request), then
  the time of --requests full renders of the clip list (GET /, all clips) and of a clip's audio;
- the daemon's RSS and CPU while the page is idle and while it renders;
- beside them, a bare Starlette app on uvicorn (one route) as the floor for the web process.
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parent.parent
ENTRY = Path(sys.executable).parent / "edge-recorder"
BARE = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route
async def page(request): return HTMLResponse("<p>hello</p>")
uvicorn.run(Starlette(routes=[Route("/", page)]), host="127.0.0.1", port=int(sys.argv[1]),
            http="h11", loop="asyncio", lifespan="off", log_level="warning")
"""
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    sys.exit(f"nothing listens on port {port}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def get(port: int, path: str, cookie: str = "") -> tuple[float, bytes, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    t = time.perf_counter()
    conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
    resp = conn.getresponse()
    body = resp.read()
    took = time.perf_counter() - t
    conn.close()
    return took, body, (resp.getheader("set-cookie") or "").split(";")[0]


def fill(state_dir: Path, n: int) -> list[str]:
    sys.path.insert(0, str(ROOT))
    from device.storage.clips import ClipStore

    store = ClipStore(state_dir)
    t = np.arange(24000) / 16000
    tone = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    ids = [store.add(tone, i * 10.0, i * 10.0 + 1.5, "hey_jarvis", 0.97,
                     f"clip number {i}: turn on the kitchen light").id for i in range(n)]
    store.close()
    return ids


def window(pid: int, seconds: float) -> float:
    """The CPU share of a process over `seconds`."""
    before = cpu_s(pid)
    time.sleep(seconds)
    return (cpu_s(pid) - before) / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=10)
    args = parser.parse_args()
    models = Path(os.environ.get("EDGE_RECORDER_MODELS_DIR", ""))
    if not (models / "hey_jarvis_v0.1.tflite").is_file():
        sys.exit("set EDGE_RECORDER_MODELS_DIR to a directory filled by `edge-recorder models fetch`")
    work = Path(tempfile.mkdtemp(prefix="bench-web-"))
    state = work / "state"
    t0 = time.perf_counter()
    ids = fill(state, args.clips)
    fill_s = time.perf_counter() - t0
    room = work / "room.wav"
    rng = np.random.default_rng(0)
    soundfile.write(room, (rng.normal(0, 60, 16000 * 120)).astype(np.int16), 16000)
    port = free_port()
    cfg = work / "c.toml"
    cfg.write_text(f"[asr]\nenabled = false\n[web]\nport = {port}\n")
    env = {**os.environ, "EDGE_RECORDER_STATE_DIR": str(state)}
    procs = []
    try:
        daemon = subprocess.Popen([str(ENTRY), "simulate", "--realtime", "--events", os.devnull,
                                   "--config", str(cfg), str(room)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(daemon)
        time.sleep(8)  # models loaded, listening at real time
        daemon_idle_cpu = window(daemon.pid, 5)
        daemon_rss_before = rss_mb(daemon.pid)
        web = subprocess.Popen([str(ENTRY), "web", "--config", str(cfg)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(web)
        wait_port(port)
        time.sleep(2)
        web_idle_rss = rss_mb(web.pid)
        _, body, cookie = get(port, "/")  # a first render: templates compiled, session made
        cpu_before, t_before = cpu_s(daemon.pid), time.perf_counter()
        pages = [get(port, "/", cookie)[0] for _ in range(args.requests)]
        daemon_busy_cpu = (cpu_s(daemon.pid) - cpu_before) / (time.perf_counter() - t_before)
        audio = [get(port, f"/clips/{ids[i]}/audio", cookie)[0] for i in range(args.requests)]
        web_rss_after = rss_mb(web.pid)
        web_idle_cpu = window(web.pid, 5)
        daemon_rss_after = rss_mb(daemon.pid)
        bare_port = free_port()
        bare = subprocess.Popen([sys.executable, "-c", BARE, str(bare_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(bare)
        wait_port(bare_port)
        time.sleep(2)
        bare_rss = rss_mb(bare.pid)
        bare_page = statistics.median(get(bare_port, "/")[0] for _ in range(args.requests))
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)
    result = {
        "clips": args.clips, "requests": args.requests, "fill_s": round(fill_s, 1),
        "page_bytes": len(body),
        "web_idle_rss_mb": round(web_idle_rss, 1), "web_rss_after_mb": round(web_rss_after, 1),
        "page_median_s": round(statistics.median(pages), 3), "page_max_s": round(max(pages), 3),
        "audio_median_s": round(statistics.median(audio), 4),
        "web_idle_cpu": round(web_idle_cpu, 4),
        "daemon_rss_mb": [round(daemon_rss_before, 1), round(daemon_rss_after, 1)],
        "daemon_cpu_idle_page": round(daemon_idle_cpu, 3),
        "daemon_cpu_while_rendering": round(daemon_busy_cpu, 3),
        "bare_starlette_rss_mb": round(bare_rss, 1), "bare_page_median_s": round(bare_page, 4),
    }
    rows = [
        ("web process RSS, idle after start", f"{web_idle_rss:.1f} MB", f"{bare_rss:.1f} MB (bare)"),
        (f"web process RSS after {args.requests} renders", f"{web_rss_after:.1f} MB", ""),
        (f"GET / with {args.clips} clips (median, max)",
         f"{result['page_median_s']:.3f} s, {result['page_max_s']:.3f} s",
         f"{bare_page * 1000:.1f} ms (bare, one line)"),
        ("page size", f"{len(body) / 1024:.0f} KiB", ""),
        ("GET a clip's audio (median)", f"{result['audio_median_s'] * 1000:.1f} ms", ""),
        ("web process CPU when idle", f"{web_idle_cpu:.1%}", ""),
        ("daemon RSS (before, after the page)", f"{daemon_rss_before:.1f}, {daemon_rss_after:.1f} MB", ""),
        ("daemon CPU, page idle / rendering", f"{daemon_idle_cpu:.1%} / {daemon_busy_cpu:.1%}", ""),
    ]
    width = max(len(r[0]) for r in rows)
    for name, ours, bare_value in rows:
        print(f"{name:<{width}}  {ours:>22}  {bare_value}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
