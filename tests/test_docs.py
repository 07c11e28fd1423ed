"""The documents hold to the code (as Home Assistant's hassfest does for its manifests): the tables
generated from the code are current, every link and anchor resolves, every test a document names
exists, and the README stays a front door."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
NAMED_TEST = re.compile(r"tests/(\w+\.py)::(\w+)")
README_MAX_LINES = 200


def gen_docs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    for heading in HEADING.findall(text):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_the_generated_tables_match_the_code() -> None:
    gen = gen_docs()
    pages = sorted((ROOT / "docs").glob("*.md"))
    stale = [p.name for p in pages if gen.regenerate(p.read_text()) != p.read_text()]
    assert not stale, f"out of date: {stale}; run scripts/gen-docs"
    blocks = {name for p in (ROOT / "docs").glob("*.md") for name in re.findall(
        r"<!-- BEGIN GENERATED: (\w+) -->", p.read_text())}
    assert blocks == set(gen.GENERATORS), "every generated table appears in docs/"


def test_every_link_and_anchor_resolves() -> None:
    broken = []
    for doc in DOCUMENTS:
        for target in LINK.findall(re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)):
            if re.match(r"[a-z]+:", target):
                continue  # a web address: nothing here may fetch it
            path_part, _, anchor = target.partition("#")
            path = (doc.parent / path_part).resolve() if path_part else doc
            if not path.exists():
                broken.append(f"{doc.name}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{doc.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_every_test_a_document_names_exists() -> None:
    missing = []
    for doc in DOCUMENTS:
        for file, name in NAMED_TEST.findall(doc.read_text()):
            test_file = ROOT / "tests" / file
            if not test_file.exists() or not re.search(rf"^def {name}\(", test_file.read_text(), re.M):
                missing.append(f"{doc.name}: tests/{file}::{name}")
    assert not missing, "\n".join(missing)


def test_the_readme_is_a_front_door() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < README_MAX_LINES
    assert "scripts/demo" in lines[lines.index("```sh") + 1], "the first command runs the demo"
    assert "scripts/test" in lines[lines.index("```sh") + 2], "the second runs the tests"
