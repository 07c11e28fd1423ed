"""The owner verifier: a second look at a wake, before the light, that knows the owner's voice.

openWakeWord's custom verifier (openwakeword/custom_verifier_model.py) is a logistic regression
over the 16 x 96 embedding features the wake model has just scored, trained on the owner saying
the wake word (positives: the frames where the wake model fires) against the owner's other speech
(negatives: every frame). edge-recorder trains it the same way (scikit-learn, the `verifier`
extra, only while training) but keeps the result as plain arrays, so the daemon checks a wake with
one dot product and never imports scikit-learn (110 MB on a Pi Zero 2 W) or unpickles anything.

Files, owner-only, in `<state>/verifier/` (features, never audio; `enroll --remove` and `wipe`
delete them):
  <wake_word>.features.npz   the training features: `pos` and `neg` (n x 16 x 96)
  <wake_word>.weights.npz    the trained verifier: `mean`, `scale`, `coef`, `intercept`
A reject ("that wasn't for you") adds the rejected wake's features, stored sealed with its clip,
to `neg` and trains again in a child process: the daemon picks the new weights up at its next wake.

A weights file that cannot be used (random bytes, empty, arrays missing or of the wrong shape) never
stops the listening loop: it is reported once (a log line and an `error` event, WEIGHTS_DAMAGED), and
every wake of that wake word is discarded (VERIFIER_DAMAGED) until the file is trained again or
removed; a changed file is read again at the next frame, so no restart is needed.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Protocol

import numpy as np

from device.core.errors import ErrorCode, ModelError, describe
from device.core.events import DiscardReason
from device.core.files import atomic_write, ensure_private_dir
from device.wake.trigger import Wake

log = logging.getLogger(__name__)

DIR = "verifier"
FEATURES, WEIGHTS = ".features.npz", ".weights.npz"
REGULARISATION_C = 0.001
"""openWakeWord's own choice for its custom verifier: a strongly regularised model, since a few
utterances of one voice are all it ever sees."""
TURNED_AWAY: DiscardReason = "not_owner"
"""The `discarded` reason of a wake the verifier turned away."""
VERIFIER_DAMAGED: DiscardReason = "verifier_damaged"
"""The `discarded` reason of a wake whose owner verifier's weights cannot be used: never kept."""
WEIGHTS_DAMAGED: ErrorCode = "weights_damaged"
"""The `error` code when a second look's weights file cannot be used (said once per file version)."""
WEIGHT_ARRAYS = ("mean", "scale", "coef", "intercept")
NPZ_MAGIC = b"PK\x03\x04"
"""An .npz file is a zip archive: it starts with a zip local file header."""
IMPOSTORS = ".impostors.npz"
"""Bundled with a wake-word model (device/data/<name>.impostors.npz, by scripts/make-impostors):
other people's voices at frames where the model wakes or nearly does, as 16 x 96 features."""
IMPOSTOR_FLOOR = 0.1
"""Impostor frames are those scoring at least this: openWakeWord's own `custom_verifier_threshold`,
the lowest score at which it asks a custom verifier."""
IMPOSTOR_SHARE = 0.5
"""Of the negatives' weight in training, the impostors' share (the owner's other speech has the
rest; the positives weigh as much as all the negatives together). Chosen on eval-wake's first four
owners (BENCHMARKS.md): 0.1, 0.25 and 0.5 all kept every owner take, 0.5 turned other voices away
best; at 0.9 (impostors weighted by their number) the verifier doubted its own owner."""


@dataclass(frozen=True)
class Weights:
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    impostors: int = 0
    """How many impostor frames it was trained against (0: the owner's speech only)."""
    source: str = field(default="the weights", compare=False)
    """Where they were read from, for messages."""

    @classmethod
    def read(cls, path: Path | Traversable) -> Weights:
        """Weights saved as `mean`, `scale`, `coef`, `intercept` (and `impostors`) in an .npz
        (any float width). FileNotFoundError if there is none; ModelError, naming the file and
        what is wrong with it, if it cannot be used."""
        arrays = read_npz(path)
        if missing := [k for k in WEIGHT_ARRAYS if k not in arrays]:
            raise ModelError(f"'{path}' lacks the array(s) {', '.join(missing)}")
        if bad := [k for k in WEIGHT_ARRAYS if not np.issubdtype(arrays[k].dtype, np.number)]:
            raise ModelError(f"'{path}' holds no numbers in {', '.join(bad)}")
        mean, scale, coef = (arrays[k].astype(np.float64) for k in ("mean", "scale", "coef"))
        intercept = arrays["intercept"].astype(np.float64)
        if mean.ndim != 1 or not 0 < mean.size == scale.size == coef.size or intercept.size != 1 \
                or scale.ndim != 1 or coef.ndim != 1:
            raise ModelError(f"'{path}' has arrays of the wrong shape: mean {mean.shape}, scale "
                             f"{scale.shape}, coef {coef.shape}, intercept {intercept.shape}")
        if not all(np.isfinite(a).all() for a in (mean, scale, coef, intercept)) or not scale.all():
            raise ModelError(f"'{path}' holds NaN, infinite or zero-scale values")
        impostors = arrays.get("impostors", np.array(0))
        counted = impostors.size == 1 and impostors.dtype.kind in "iu"
        return cls(mean, scale, coef, float(intercept.reshape(())),
                   int(impostors) if counted else 0, f"'{path}'")

    def arrays(self, dtype: type = np.float64) -> dict[str, np.ndarray]:
        """What `read` takes back, as arrays of `dtype` (the bundled files use float32)."""
        return {"mean": self.mean.astype(dtype), "scale": self.scale.astype(dtype),
                "coef": self.coef.astype(dtype), "intercept": np.array(self.intercept, dtype),
                "impostors": np.array(self.impostors)}

    def fit(self, size: int) -> Weights:
        """These weights, if they are for `size` features; else ModelError."""
        if size != self.coef.size:
            raise ModelError(f"{self.source} holds weights for {self.coef.size} features; the "
                             f"wake model gives {size}")
        return self

    def probability(self, features: np.ndarray) -> float:
        """How likely these wake features are the owner saying the wake word (0..1). ModelError
        if the weights were made for features of another size."""
        self.fit(features.size)
        x = (features.reshape(-1).astype(np.float64) - self.mean) / self.scale
        z = float(x @ self.coef + self.intercept)
        return float(1.0 / (1.0 + np.exp(-np.clip(z, -500, 500))))


def read_npz(path: Path | Traversable) -> dict[str, np.ndarray]:
    """Every array of an .npz file, never unpickling anything. FileNotFoundError if there is no
    file; ModelError naming it if it is empty, not an .npz or unreadable."""
    try:
        with path.open("rb") as f:
            head = f.read(len(NPZ_MAGIC))
            if not head:
                raise ModelError(f"'{path}' is empty")
            if head != NPZ_MAGIC:
                raise ModelError(f"'{path}' is not an .npz file")
            f.seek(0)
            with np.load(f, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ModelError(f"'{path}' cannot be read: {describe(exc)}") from None


def report_damage(what: str, exc: ModelError, consequence: str,
                  report: Callable[[str], None]) -> str:
    """One log line and one report (an `error` event in the daemon) for a second look whose
    weights cannot be used. Returns the message."""
    message = f"{what} cannot be used: {exc}; {consequence}"
    log.error("%s", message)
    report(message)
    return message


def bundled_file(name: str, suffix: str) -> Traversable | None:
    """device/data/<name><suffix>, shipped for a bundled wake-word model, if there is one (a model
    given as a path has none)."""
    if not name.isidentifier():
        return None
    path = resources.files("device") / "data" / f"{name}{suffix}"
    return path if path.is_file() else None


def bundled_impostors(name: str) -> np.ndarray | None:
    """The impostor features shipped for a wake-word model, if there are any."""
    path = bundled_file(name, IMPOSTORS)
    if path is None:
        return None
    features = read_npz(path).get("features")
    if features is None or features.ndim != 3 or not np.issubdtype(features.dtype, np.number):
        raise ModelError(f"'{path}' holds no (n x 16 x 96) `features` array")
    return features.astype(np.float32)


def train(pos: np.ndarray, neg: np.ndarray, impostors: np.ndarray | None = None) -> Weights:
    """openWakeWord's verifier recipe (standardise, then logistic regression with C = 0.001).
    With `impostors` (other voices near the wake word) the samples are weighted: the positives as
    much as all the negatives, and the impostors IMPOSTOR_SHARE of the negatives."""
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise ModelError("training the owner verifier needs scikit-learn: run: "
                         f"{sys.executable} -m pip install 'edge-recorder[verifier]'") from None
    parts = [pos, neg] if impostors is None else [pos, neg, impostors]
    x = np.vstack([p.reshape(len(p), -1) for p in parts]).astype(np.float64)
    y = np.r_[np.ones(len(pos)), np.zeros(len(x) - len(pos))]
    weight = None
    if impostors is not None:
        weight = np.r_[np.full(len(pos), 0.5 / len(pos)),
                       np.full(len(neg), 0.5 * (1 - IMPOSTOR_SHARE) / len(neg)),
                       np.full(len(impostors), 0.5 * IMPOSTOR_SHARE / len(impostors))] * len(x)
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(random_state=0, max_iter=2000, C=REGULARISATION_C)
    model.fit(scaler.transform(x), y, sample_weight=weight)
    return Weights(scaler.mean_, scaler.scale_, model.coef_[0], float(model.intercept_[0]),
                   0 if impostors is None else len(impostors))


class VerifierFiles:
    """The owner's verifiers in a state directory, one per wake word."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / DIR

    def path(self, name: str, kind: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ModelError(f"not a wake-word name: {name!r}")
        return self.dir / f"{name}{kind}"

    def enrolled(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.name[:-len(WEIGHTS)] for p in self.dir.glob(f"*{WEIGHTS}"))

    def untrained(self) -> list[str]:
        """Verifiers whose features changed after their weights were trained: a reject's training
        (a child process) that a stop cut short (`systemctl stop` ends the whole unit)."""
        found = []
        for name in self.enrolled():
            try:
                if self.path(name, FEATURES).stat().st_mtime_ns > \
                        self.path(name, WEIGHTS).stat().st_mtime_ns:
                    found.append(name)
            except OSError:
                continue
        return found

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time (a reject in the daemon, a retrain, an enroll)."""
        ensure_private_dir(self.dir)
        fd = os.open(self.dir / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def features(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The training features (None if there are none; ModelError if the file is damaged)."""
        path = self.path(name, FEATURES)
        try:
            arrays = read_npz(path)
        except FileNotFoundError:
            return None
        pos, neg = arrays.get("pos"), arrays.get("neg")
        if pos is None or neg is None or pos.ndim != 3 or pos.shape[1:] != neg.shape[1:] \
                or not (np.issubdtype(pos.dtype, np.number) and np.issubdtype(neg.dtype, np.number)):
            raise ModelError(f"'{path}' holds no `pos` and `neg` feature arrays of one shape")
        return pos, neg

    def weights(self, name: str) -> Weights | None:
        try:
            return Weights.read(self.path(name, WEIGHTS))
        except FileNotFoundError:
            return None

    def _save(self, path: Path, **arrays: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        atomic_write(path, buffer.getvalue())

    def enroll(self, name: str, pos: np.ndarray, neg: np.ndarray, add: bool = False) -> Weights:
        """Train on these features and keep both. A new enrollment replaces the old one; with
        `add`, it joins it (another voice of the household, or more takes)."""
        known = self.features(name) if add else None
        if known is not None:
            pos, neg = np.concatenate([known[0], pos]), np.concatenate([known[1], neg])
        weights = train(pos, neg, bundled_impostors(name))
        with self._locked():
            self._save(self.path(name, FEATURES), pos=pos.astype(np.float32),
                       neg=neg.astype(np.float32))
            self._save_weights(name, weights)
        return weights

    def _save_weights(self, name: str, w: Weights) -> None:
        self._save(self.path(name, WEIGHTS), **w.arrays())

    def add_negative(self, name: str, features: np.ndarray) -> bool:
        """A rejected wake's features join the negatives. False if `name` has no verifier, or its
        features file is damaged (said in the log: the reject itself is carried out)."""
        with self._locked():
            try:
                known = self.features(name)
            except ModelError as exc:
                log.error("the rejected wake cannot teach the owner verifier for %s: %s; "
                          "`edge-recorder enroll %s` trains it anew", name, exc, name)
                return False
            if known is None:
                return False
            pos, neg = known
            self._save(self.path(name, FEATURES), pos=pos,
                       neg=np.concatenate([neg, features.reshape(1, *pos.shape[1:])]
                                          ).astype(np.float32))
        return True

    def retrain(self, name: str) -> Weights | None:
        with self._locked():
            known = self.features(name)
            if known is None:
                return None
            weights = train(*known, bundled_impostors(name))
            self._save_weights(name, weights)
        return weights

    def remove(self, name: str | None = None) -> list[str]:
        """Delete one wake word's verifier (or all of them, and the folder). Returns the names."""
        names = self.enrolled() if name is None else [name]
        if name is None:
            shutil.rmtree(self.dir, ignore_errors=True)
            return names
        removed = False
        for kind in (FEATURES, WEIGHTS):
            with contextlib.suppress(FileNotFoundError):
                self.path(name, kind).unlink()
                removed = True
        return [name] if removed else []


FRAME = 1280
BUNDLED_FEATURES = 16 * 96
"""The embedding features every bundled openWakeWord model scores: 16 frames of 96."""
ENROLL_THRESHOLD = 0.5
"""A positive sample gives the frames where the wake model scores at least this (openWakeWord's)."""
POSITIVE_OFFSETS = 5
"""Each sample is scored from this many starting points within one frame (openWakeWord's N = 5),
so one utterance gives several slightly different feature windows."""
MIN_SAMPLES = 3
MIN_OTHER_S = 5.0


class FeatureSource(Protocol):
    """The wake detector as enrollment uses it (device.wake.detector.OpenWakeWordDetector)."""

    def scores(self, samples: np.ndarray) -> Mapping[str, float]: ...

    def features(self, name: str) -> np.ndarray: ...

    def reset(self) -> None: ...


@dataclass(frozen=True)
class Enrollment:
    pos: np.ndarray
    neg: np.ndarray
    woke: list[bool]
    """Per sample: whether it woke the wake model at all (a sample that did not adds nothing)."""


def _padded(clip: np.ndarray, rng: np.random.Generator, offset: int) -> np.ndarray:
    """1 s of faint noise before (the models look 2 s back; exact zeros would make the scores
    depend on openWakeWord's random start-up buffer) and 0.5 s after."""
    def faint(n: int) -> np.ndarray:
        return rng.normal(0, 30, n).astype(np.int16)

    return np.concatenate([faint(16000), clip[offset:], faint(8000)])


def scored_frames(source: FeatureSource, name: str, audio: np.ndarray,
                  threshold: float) -> list[tuple[float, np.ndarray]]:
    """From a fresh start, (score, features) of every frame of `audio` scoring `threshold` or more."""
    source.reset()
    found = []
    for i in range(0, len(audio) - FRAME + 1, FRAME):
        score = source.scores(audio[i:i + FRAME])[name]
        if score >= threshold:
            found.append((score, np.array(source.features(name), dtype=np.float32)))
    return found


def _scored_features(source: FeatureSource, name: str, audio: np.ndarray,
                     threshold: float) -> list[np.ndarray]:
    return [features for _, features in scored_frames(source, name, audio, threshold)]


def enrollment_features(source: FeatureSource, name: str, samples: list[np.ndarray],
                        other: list[np.ndarray], seed: int = 0) -> Enrollment:
    """openWakeWord's recipe: the wake model's features wherever it fires on the samples
    (positives), and every frame of the other speech (negatives)."""
    rng = np.random.default_rng(seed)
    pos: list[np.ndarray] = []
    woke = []
    for clip in samples:
        found: list[np.ndarray] = []
        for k in range(POSITIVE_OFFSETS):
            offset = int(rng.integers(0, FRAME)) if k else 0
            found += _scored_features(source, name, _padded(clip, rng, offset), ENROLL_THRESHOLD)
        woke.append(bool(found))
        pos += found
    if sum(woke) < MIN_SAMPLES:
        raise ModelError(f"only {sum(woke)} of {len(samples)} samples woke {name} (at least "
                         f"{MIN_SAMPLES} must): one clear utterance of the wake word per sample")
    other_s = sum(len(c) for c in other) / 16000
    if other_s < MIN_OTHER_S:
        raise ModelError(f"{other_s:.1f} s of other speech: the verifier needs at least "
                         f"{MIN_OTHER_S:.0f} s of the same voice saying anything but the wake word")
    neg: list[np.ndarray] = []
    for clip in other:
        neg += _scored_features(source, name, _padded(clip, rng, 0), 0.0)
    source.reset()
    return Enrollment(np.stack(pos), np.stack(neg), woke)


def retrain_in_child(state_dir: Path, name: str, wait: bool) -> subprocess.Popen[bytes]:
    """Train again in another process: scikit-learn never enters the daemon's memory."""
    child = subprocess.Popen([sys.executable, "-m", "device.wake.verifier", str(state_dir), name],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    if wait:
        child.wait()
    return child


class OwnerVerifier:
    """The second look: asked by the recorder at each wake, with the features just scored."""

    def __init__(self, files: VerifierFiles, features: Callable[[str], np.ndarray],
                 threshold: float, report: Callable[[str], None] = lambda message: None) -> None:
        """`report(message)`: a weights file cannot be used (once per version of the file)."""
        self._files = files
        self._features = features
        self.threshold = threshold
        self._report = report
        self._loaded: dict[str, tuple[tuple[int, int, int], Weights | ModelError]] = {}
        """Per wake word: its weights file's (mtime, size, inode), and the weights read from it or
        why they cannot be used."""
        self._last: tuple[Wake, np.ndarray] | None = None
        self.probabilities: deque[float] = deque(maxlen=1000)
        """The latest probabilities computed, in order (for benchmarks and tests)."""

    def _weights(self, name: str) -> Weights | ModelError | None:
        """`name`'s weights; None if it has no verifier; a ModelError if its file cannot be
        used. Read again whenever the file changes (a retrain, a fix or a removal)."""
        try:
            path = self._files.path(name, WEIGHTS)
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except (FileNotFoundError, ModelError):
            self._loaded.pop(name, None)
            return None
        except OSError:
            stamp = (0, 0, 0)  # it cannot even be looked at: reading it says why, once
        cached = self._loaded.get(name)
        if cached is None or cached[0] != stamp:
            cached = self._loaded[name] = (stamp, self._read(name, path))
        return cached[1]

    def _read(self, name: str, path: Path) -> Weights | ModelError:
        try:
            weights = Weights.read(path)
        except FileNotFoundError as exc:  # removed since the stat: gone at the next frame
            return ModelError(describe(exc))
        except ModelError as exc:
            return self._damaged(name, exc)
        log.info("owner verifier for %s loaded", name)
        return weights

    def _damaged(self, name: str, exc: ModelError) -> ModelError:
        report_damage(f"the owner verifier for {name}", exc,
                      f"every wake of {name} is discarded until `edge-recorder enroll {name}` "
                      f"trains it again or `edge-recorder enroll --remove {name}` removes it",
                      self._report)
        return exc

    def listens_lower(self, name: str) -> bool:
        """Whether `name` has an owner verifier trained against impostors: then the wake model
        may put lower scores to it (config.OWNER_THRESHOLDS), as openWakeWord does with its own
        custom verifier."""
        weights = self._weights(name)
        return isinstance(weights, Weights) and weights.impostors > 0

    def second_look(self, wake: Wake) -> DiscardReason | None:
        """None if the wake may light the light; else why not."""
        self._last = None
        weights = self._weights(wake.wake_word)
        if weights is None:
            return None
        if isinstance(weights, ModelError):
            return VERIFIER_DAMAGED
        features = np.array(self._features(wake.wake_word), dtype=np.float32)
        try:
            p = weights.probability(features)
        except ModelError as exc:
            name = wake.wake_word
            self._loaded[name] = (self._loaded[name][0], self._damaged(name, exc))
            return VERIFIER_DAMAGED
        self.probabilities.append(p)
        self._last = (wake, features)
        if p < self.threshold:
            log.info("wake %s turned away: the owner verifier gives %.2f (< %.2f)",
                     wake.wake_word, p, self.threshold)
            return TURNED_AWAY
        return None

    def features_of(self, wake: Wake) -> np.ndarray | None:
        """The features of a wake that passed the second look, to keep sealed with its clip."""
        if self._last is not None and self._last[0] is wake:
            return self._last[1]
        return None


def main(argv: list[str]) -> int:
    """`python -m device.wake.verifier STATE_DIR NAME`: train NAME's verifier again (after a reject)."""
    logging.basicConfig(level=logging.INFO, format="edge-recorder verifier: %(message)s")
    state_dir, name = Path(argv[0]), argv[1]
    try:
        done = VerifierFiles(state_dir).retrain(name)
    except ModelError as exc:
        log.error("could not train the verifier for %s again: %s", name, exc)
        return 1
    if done is not None:
        log.info("verifier for %s trained again", name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
