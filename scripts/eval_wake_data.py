"""Lays out eval-wake's data from public recordings fetched beforehand, plus espeak-ng speech.

    scripts/eval-wake-data MIRRORS OUT

MIRRORS holds bare git snapshots (as the `fetch` tool leaves them: MIRRORS/<owner>+<name>/repo) of
  MycroftAI/Precise-Community-Data      wake and not-wake words of many speakers (negatives)
  Picovoice/wake-word-benchmark         real "alexa" and bare "jarvis" recordings, and "computer",
                                        "smart mirror", "snowboy", "view glass" (negatives)
  Jakobovski/free-spoken-digit-dataset  spoken digits (negatives)
  chaeyoung-lee/wids_tutorial           Speech Commands' background noise (noise/ for --snr)
  jim-schwoebel/sample_voice_data       VoxCeleb interview excerpts, 102 speakers (held out)
  vocobox/human-voice-dataset           sung notes and syllables (held out)
and, for OUT/more (about 20 hours more, ../shared/research/audio-sources.md; held out):
  jimbozhang/speechocean762             read English, 250 speakers (Mandarin first language)
  wake-up-word/wuw-corpus-ii            telephone calls saying other wake words (8 kHz mu-law)
  abdulkaderghandoura/arabic-speech-commands-dataset   40 Arabic command words, 30 speakers
  thegtagamer/PICO-tinyML-benchmark     Speech Commands v0.02's test set (without _silence_)
plus Debian's game dialogue (fillets-ng-data, -cs, -nl) and soundtracks (warzone2100-music,
nexuiz-music), taken with `apt-get download` into OUT/debs. And, for OUT/fresh (about 10.6 hours
that no tuning or look has touched: keep it so; held out):
  Picovoice/speech-to-intent-benchmark  spoken coffee-maker orders, 50+ speakers (16 kHz)
plus Debian's phone prompts (asterisk-core-sounds-{en,es,fr,it,ru}-wav, 8 kHz) and three voiced
adventure games' dialogue in English (flight-of-the-amazon-queen, beneath-a-steel-sky, drascula),
cut out of the games' data files into 16 kHz WAV. Whichever are missing are left out.
OUT gets these eval-wake data directories:
  OUT/main    positives/<model>/ from espeak-ng (12 voices x 3 speeds x 3 pitches), negatives/,
              noise/, owners/hey_jarvis/<voice>/ (eight espeak-ng voices: 5 takes to enroll, two
              sentences of other speech, 9 held-out takes to test)
  OUT/alexa   positives/alexa/: Picovoice's real recordings of "alexa" (recall on real speech)
  OUT/jarvis  positives/hey_jarvis/: Picovoice's real recordings of the bare name "Jarvis" (how
              often the bare name wakes hey_jarvis), and the same owners, tested on those recordings
  OUT/heldout negatives/ only (talk and singing that nothing was tuned on), and the same owners
  OUT/splices positives/hey_jarvis/: each real bare "Jarvis" after a real "hey" of other speakers
              (Precise's "hey savant" takes, cut as scripts/train-phrase-check cuts them): real
              speech saying "hey jarvis" (testing only: CC BY-NC-SA)
  OUT/more    negatives/<source>/ only: the 20 hours above, one folder per source, file names
              keeping the speaker or session (e.g. read-english/SPEAKER0001__...)
  OUT/fresh/<source>/negatives/ one eval-wake data directory per source of the 10.6 hours above
and, for scripts/train-phrase-check, OUT/phrase/hey_jarvis/: bare/ (the same bare "Jarvis"), hey/
(Precise's public-domain "hey chatterbox" and "hey computer" takes) and hey-heldout/ (its "hey
savant" and "hey Vermont" takes, CC BY-NC-SA: used to test the phrase check, never to train it).
Nothing here is committed or downloaded at run time: the recordings are read from MIRRORS.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import soundfile
from speech import say  # scripts/ is on sys.path when this runs as a script

ROOT = Path(__file__).resolve().parent.parent
VOICES = ["en", "en-us", "en-gb", "en+f3", "en+m3", "en-us+f2", "en-gb-x-rp", "en+f4", "en-029",
          "en-gb-scotland", "en+m7", "en-us+m4"]
OWNERS = ["en+f4", "en+m3", "en-gb-scotland", "en-us+f2",
          # Voices that no other set uses (nor scripts/make-impostors): added after the owner
          # verifier's impostor training was tuned on the first four, to test it held out.
          "en-029+f2", "en-gb-x-rp+m6", "en-us-nyc+m2", "en-gb-scotland+f1"]
PHRASES = {"hey_jarvis": "hey jarvis", "alexa": "alexa"}
OTHER = ["The weather tomorrow looks fine, so we could walk to the market in the morning.",
         "I left the keys on the kitchen table next to the bowl of oranges and the old radio."]
# Negatives from the Picovoice benchmark: other wake words, from many speakers.
PICOVOICE_NEGATIVES = ["computer", "smart mirror", "snowboy", "view glass"]


def git(repo: Path, *args: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True).stdout


def blobs(repo: Path, prefix: str = "") -> list[tuple[str, str]]:
    """(path, blob id) of every file under `prefix` at HEAD (NUL-separated: paths have spaces)."""
    out = []
    for entry in git(repo, "ls-tree", "-r", "-z", "HEAD", *([prefix] if prefix else [])).split(b"\0"):
        if entry:
            meta, path = entry.split(b"\t", 1)
            out.append((path.decode(), meta.split()[2].decode()))
    return out


def export(repo: Path, into: Path, prefix: str = "", suffixes: tuple[str, ...] = (".wav", ".flac"),
           strip: int = 0, skip: str | None = None) -> int:
    """Writes the audio files under `prefix`, and those inside .tar.gz archives there, into `into`
    (named by their path, less `strip` leading folders; none whose path contains `skip`). Raw 8 kHz
    mu-law (.ulaw) becomes WAV."""
    count = 0
    for path, blob in blobs(repo, prefix):
        if skip and skip in path:
            continue
        try:
            data = git(repo, "cat-file", "blob", blob)
        except subprocess.CalledProcessError:
            continue  # listed but absent in the snapshot (a large file)
        flat = "__".join(path.split("/")[strip:]).replace(" ", "_")
        if path.lower().endswith(".ulaw"):
            into.mkdir(parents=True, exist_ok=True)
            subprocess.run(["sox", "-t", "ul", "-r", "8000", "-c", "1", "-", str(into / f"{flat}.wav")],
                           input=data, check=True)
            count += 1
        elif path.lower().endswith(suffixes):
            into.mkdir(parents=True, exist_ok=True)
            (into / flat).write_bytes(data)
            count += 1
        elif path.endswith(".tar.gz"):
            try:
                with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                    for member in tar.getmembers():
                        if member.isfile() and member.name.endswith(suffixes) and "/models/" not in path:
                            extracted = tar.extractfile(member)
                            if extracted:
                                into.mkdir(parents=True, exist_ok=True)
                                name = member.name.replace("/", "__").replace(" ", "_")
                                (into / f"{flat}__{name}").write_bytes(extracted.read())
                                count += 1
            except tarfile.TarError:
                continue
    return count


def owners(root: Path) -> None:
    for voice in OWNERS:
        owner = root / "owners" / "hey_jarvis" / voice.replace("+", "_")
        for i, (speed, pitch) in enumerate([(150, 45), (160, 55), (170, 50), (185, 40), (200, 60)]):
            say("hey jarvis", voice, speed, pitch, owner / "enroll" / f"{i}.wav")
        for i, text in enumerate(OTHER):
            say(text, voice, 165, 50, owner / "other" / f"{i}.wav")
        for i, (speed, pitch) in enumerate([(s, p) for s in (140, 175, 210) for p in (35, 50, 65)]):
            say("hey jarvis", voice, speed, pitch, owner / "test" / f"{i}.wav")


# Real "hey ..." takes for scripts/train-phrase-check, by licence: the public-domain ones train the
# shipped phrase check, the CC BY-NC-SA ones (Hey Savant) only ever test it.
PHRASE_HEYS = {"hey": ["heychatterbox__*", "heycomputer__en__*"],
               "hey-heldout": ["heysavant__wake-word__*", "heysavant__not-wake-words__en__HeyVermont*"]}


def phrase_data(out: Path, precise: Path, bare_name: Path) -> None:
    """OUT/phrase/hey_jarvis/: bare (real bare "Jarvis"), hey and hey-heldout (real "hey ..." takes)."""
    root = out / "phrase" / "hey_jarvis"
    root.mkdir(parents=True, exist_ok=True)
    (root / "bare").symlink_to(bare_name)
    for part, patterns in PHRASE_HEYS.items():
        (root / part).mkdir()
        for pattern in patterns:
            for take in sorted(precise.glob(pattern)):
                (root / part / take.name).symlink_to(take)


MORE_REPOS = {  # source folder: (repository, path prefix, leading folders dropped from names, skipped)
    "read-english": ("jimbozhang/speechocean762", "WAVE/", 1, None),
    "calls": ("wake-up-word/wuw-corpus-ii", "calls/", 1, None),
    "arabic-commands": ("abdulkaderghandoura/arabic-speech-commands-dataset", "dataset/", 1, None),
    "speech-commands": ("thegtagamer/PICO-tinyML-benchmark", "MLTK_keyworkSpotting/dataset/", 2,
                        "/_silence_/"),
}
MORE_DEBS = {"game-dialogue": ["fillets-ng-data", "fillets-ng-data-cs", "fillets-ng-data-nl"],
             "soundtracks": ["warzone2100-music", "nexuiz-music"]}
"""Debian packages with real voices and music (GPL-2): game dialogue in English, Czech and Dutch
(fillets-ng: its voice folders only, not its music), and two games' soundtracks."""


def unpacked(out: Path, package: str) -> Path:
    """OUT/debs/<package>: the package's files, `apt-get download`ed and unpacked once."""
    debs = out / "debs"
    tree = debs / package
    if not tree.exists():
        debs.mkdir(parents=True, exist_ok=True)
        if not list(debs.glob(f"{package}_*.deb")):
            subprocess.run(["apt-get", "download", "-q", package], cwd=debs, check=True,
                           capture_output=True)
        subprocess.run(["dpkg-deb", "-x", str(next(debs.glob(f"{package}_*.deb"))), str(tree)],
                       check=True)
    return tree


def debian_audio(out: Path, into: Path, packages: list[str],
                 suffixes: tuple[str, ...] = (".ogg", ".opus")) -> int:
    """Links the packages' audio (OUT/debs, `apt-get download`ed) into `into`."""
    into.mkdir(parents=True, exist_ok=True)
    count = 0
    for package in packages:
        tree = unpacked(out, package)
        for pk3 in tree.rglob("*.pk3"):  # nexuiz: a zip of .ogg files
            shutil.unpack_archive(pk3, tree / "pk3", "zip")
        for f in sorted(tree.rglob("*")):
            voice = "fillets" not in package or "/sound/" in str(f)
            if f.suffix in suffixes and voice:
                flat = "__".join(f.relative_to(tree).parts[-4:])  # names repeat across levels
                (into / f"{package}__{flat}").symlink_to(f)
                count += 1
    return count


def more(out: Path, repo: Callable[[str], Path | None]) -> dict[str, int]:
    """OUT/more/negatives/: the 20 hours of audio-sources.md, one folder per source."""
    counts = {}
    for folder, (name, prefix, strip, skip) in MORE_REPOS.items():
        if found := repo(name):
            counts[folder] = export(found, out / "more" / "negatives" / folder, prefix,
                                    (".wav", ".flac"), strip, skip)
    for folder, packages in MORE_DEBS.items():
        try:
            counts[folder] = debian_audio(out, out / "more" / "negatives" / folder, packages)
        except (subprocess.CalledProcessError, StopIteration) as exc:
            print(f"eval-wake-data: left out {folder} (apt-get download {' '.join(packages)}: {exc})",
                  file=sys.stderr)
    return counts


FRESH_REPOS = {"spoken-commands": ("Picovoice/speech-to-intent-benchmark", "data/speech/clean/", 3)}
FRESH_PROMPTS = [f"asterisk-core-sounds-{lang}-wav" for lang in ("en", "es", "fr", "it", "ru")]
"""Asterisk's phone prompts, each language read by one professional speaker (CC BY-SA 3.0)."""
GAME_RATE = 11025  # the three games' speech: 11025 Hz
SCUMMVM = Path("usr/share/scummvm")


def queen_lines(tree: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Flight of the Amazon Queen's spoken lines: the .SB entries of queen.1c (a rebuilt resource
    file: "QTBL", version, compression, then 21-byte entries: name, bundle, offset, size), MP3."""
    data = (tree / SCUMMVM / "flight-of-the-amazon-queen" / "queen.1c").read_bytes()
    assert data[:4] == b"QTBL" and data[12] == 1, "queen.1c: not the MP3-compressed rebuild"
    for i in range(struct.unpack_from(">H", data, 13)[0]):
        raw, _, offset, size = struct.unpack_from(">12sBII", data, 15 + 21 * i)
        name = raw.rstrip(b"\0").decode()
        if name.endswith(".SB") and name != "BLANK000.SB":
            samples, rate = soundfile.read(io.BytesIO(data[offset:offset + size]), dtype="float32")
            assert rate == GAME_RATE
            yield name[:-3], samples


def sky_lines(tree: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Beneath a Steel Sky's spoken lines: files 50000-58999 of sky.dsk (indexed by sky.dnr's 8-byte
    entries: number, 24-bit offset whose top bit means "uncompressed, offset in 16 bytes", 22-bit
    size), unsigned 8-bit after a 22-byte header; any packed (RNC) one is left out."""
    folder = tree / SCUMMVM / "beneath-a-steel-sky"
    index, disk = (folder / "sky.dnr").read_bytes(), (folder / "sky.dsk").read_bytes()
    for i in range(struct.unpack_from("<I", index)[0]):
        entry = index[4 + 8 * i:12 + 8 * i]
        number = int.from_bytes(entry[:2], "little")
        offset, size = int.from_bytes(entry[2:5], "little"), int.from_bytes(entry[5:], "little") & 0x3FFFFF
        plain = offset >> 23 & 1
        offset = (offset & 0x7FFFFF) << (4 if plain else 0)
        if 50000 <= number < 59000 and (plain or not disk[offset] & 0x80):
            pcm = np.frombuffer(disk[offset + 22:offset + size], np.uint8)
            yield str(number), (pcm.astype(np.float32) - 128) / 128


def drascula_lines(tree: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Drascula's spoken lines: en/*.ALS, raw unsigned 8-bit (S*.ALS are sound effects)."""
    for f in sorted((tree / SCUMMVM / "drascula" / "en").glob("*.ALS")):
        if not f.name.startswith("S"):
            yield f.stem, (np.fromfile(f, np.uint8).astype(np.float32) - 128) / 128


GAMES = {"adventure-fotaq": ("flight-of-the-amazon-queen", queen_lines),
         "adventure-bass": ("beneath-a-steel-sky", sky_lines),
         "adventure-drascula": ("drascula", drascula_lines)}
"""Voiced adventure games in Debian (free to copy, BSD-like): English dialogue by voice actors."""


def game_speech(out: Path, into: Path, package: str,
                lines: Callable[[Path], Iterator[tuple[str, np.ndarray]]]) -> int:
    """Writes each of a game's spoken lines into `into` as 16 kHz mono WAV."""
    import soxr

    into.mkdir(parents=True, exist_ok=True)
    count = 0
    for name, samples in lines(unpacked(out, package)):
        mono = samples.mean(axis=1) if samples.ndim > 1 else samples
        soundfile.write(str(into / f"{package}__{name}.wav"), soxr.resample(mono, GAME_RATE, 16000),
                        16000, subtype="PCM_16")
        count += 1
    return count


def fresh(out: Path, repo: Callable[[str], Path | None]) -> dict[str, int]:
    """OUT/fresh/<source>/negatives/: the 10.6 hours kept unseen, one data directory per source."""
    counts = {}
    for folder, (name, prefix, strip) in FRESH_REPOS.items():
        if found := repo(name):
            counts[folder] = export(found, out / "fresh" / folder / "negatives", prefix, strip=strip)
    try:
        counts["phone-prompts"] = debian_audio(out, out / "fresh" / "phone-prompts" / "negatives",
                                               FRESH_PROMPTS, (".wav",))
        for folder, (package, lines) in GAMES.items():
            counts[folder] = game_speech(out, out / "fresh" / folder / "negatives", package, lines)
    except (subprocess.CalledProcessError, StopIteration) as exc:
        print(f"eval-wake-data: left out the rest of OUT/fresh ({exc})", file=sys.stderr)
    return counts


def splices(out: Path) -> int:
    """OUT/splices/positives/hey_jarvis/: real "hey" + real "Jarvis" (scripts/train-phrase-check's
    held-out splices, one per bare name, seed 0)."""
    from train_phrase_check import RATE, heys, load, splice, trimmed

    root = out / "phrase" / "hey_jarvis"
    other = heys(root / "hey-heldout")
    into = out / "splices" / "positives" / "hey_jarvis"
    into.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = sorted((root / "bare").iterdir())
    for name in names:
        joined = splice(other[int(rng.integers(len(other)))], trimmed(load(name)), rng)
        soundfile.write(str(into / f"{name.stem}.wav"), joined, RATE, subtype="PCM_16")
    return len(names)


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    mirrors, out = Path(sys.argv[1]), Path(sys.argv[2])

    def repo(name: str) -> Path | None:
        path = mirrors / name.replace("/", "+") / "repo"
        return path if path.exists() else None

    main_dir = out / "main"
    for model, phrase in PHRASES.items():
        for voice in VOICES:
            for speed in (140, 175, 210):
                for pitch in (30, 50, 70):
                    say(phrase, voice, speed, pitch,
                        main_dir / "positives" / model / f"{voice.replace('+', '_')}-{speed}-{pitch}.wav")
    owners(main_dir)
    counts = {}
    if precise := repo("MycroftAI/Precise-Community-Data"):
        counts["precise"] = export(precise, main_dir / "negatives" / "precise")
    if picovoice := repo("Picovoice/wake-word-benchmark"):
        for word in PICOVOICE_NEGATIVES:
            folder = main_dir / "negatives" / f"picovoice-{word.replace(' ', '-')}"
            counts[f"picovoice {word}"] = export(picovoice, folder, f"audio/{word}/")
        counts["real alexa"] = export(picovoice, out / "alexa" / "positives" / "alexa", "audio/alexa/")
        counts["bare jarvis"] = export(picovoice, out / "jarvis" / "positives" / "hey_jarvis",
                                       "audio/jarvis/")
        bare_name = out / "jarvis" / "positives" / "hey_jarvis"
        for owner in (main_dir / "owners" / "hey_jarvis").iterdir():
            # The same owners (the same verifiers) meet other people saying the bare name.
            linked = out / "jarvis" / "owners" / "hey_jarvis" / owner.name
            linked.mkdir(parents=True, exist_ok=True)
            for part in ("enroll", "other"):
                (linked / part).symlink_to(owner / part)
            (linked / "test").symlink_to(bare_name)
        if precise:
            phrase_data(out, main_dir / "negatives" / "precise", bare_name)
            counts["hey + jarvis splices"] = splices(out)
    if digits := repo("Jakobovski/free-spoken-digit-dataset"):
        counts["spoken digits"] = export(digits, main_dir / "negatives" / "digits", "recordings/")
    if noise := repo("chaeyoung-lee/wids_tutorial"):
        counts["noise"] = export(noise, main_dir / "noise", "data/_background_noise_/")
        (main_dir / "negatives" / "noise").symlink_to(main_dir / "noise")  # also a negative: a tap...
    talk, singing = repo("jim-schwoebel/sample_voice_data"), repo("vocobox/human-voice-dataset")
    if talk:
        counts["held-out talk"] = export(talk, out / "heldout" / "negatives" / "talk")
    if singing:
        counts["held-out singing"] = export(singing, out / "heldout" / "negatives" / "singing",
                                            "data/voices/")
    if talk or singing:
        (out / "heldout" / "owners").symlink_to(main_dir / "owners")
    counts.update(more(out, repo))
    counts.update(fresh(out, repo))
    for what, n in counts.items():
        print(f"{what}: {n} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
