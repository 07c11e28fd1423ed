"""The reference tables in docs/ that the code is the source of, generated from the code.

Every block between `<!-- BEGIN GENERATED: NAME -->` and `<!-- END GENERATED: NAME -->` in docs/*.md
is rewritten from the code: `events` (one row per event type, from device/core/events.py),
`values` (every reason, state and error code an event can carry), `states` (the recorder's
transition table), `config` (every configuration
key with its default and meaning, from the settings models' field docstrings), `cli` (every command
and option, from the argument parser) and `mqtt` (every topic, from the command schemas and the MQTT
adapter). `scripts/gen-docs` rewrites them; `scripts/gen-docs --check` (and tests/test_docs.py)
fails when a document and the code disagree.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pydantic import BaseModel  # noqa: E402

from device import cli  # noqa: E402
from device.control import commands  # noqa: E402
from device.core import errors, events  # noqa: E402
from device.core.config import Settings  # noqa: E402
from device.integrations import mqtt  # noqa: E402
from device.recording import recorder  # noqa: E402

DOCS = ROOT / "docs"
BLOCK = re.compile(r"(<!-- BEGIN GENERATED: (\w+) -->\n)(.*?)(<!-- END GENERATED: \2 -->)", re.S)
VALUE_TYPES: dict[str, Any] = {
    "indicator `state`": events.IndicatorState,
    "discarded `reason`": events.DiscardReason,
    "deleted `reason`": events.DeleteReason,
    "deleted `remote.status`": events.RemoteStatus,
    "upload `status`": events.UploadStatus,
    "audio `state`": events.AudioState,
    "consent `state`": events.ConsentState,
    "error `code`": errors.ErrorCode,
}


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _table(head: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def event_types() -> list[type[events.Event]]:
    return sorted((c for c in vars(events).values() if isinstance(c, type)
                   and issubclass(c, events.Event) and c is not events.Event),
                  key=lambda c: list(vars(events)).index(c.__name__))


def _field_text(cls: type, field: dataclasses.Field[Any]) -> str:
    hint = typing.get_type_hints(cls)[field.name]
    values = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else ()
    return f"`{field.name}`" + (f" ({', '.join(values)})" if values else "")


def events_table() -> str:
    rows = [(f"`{c.type}`", ", ".join(_field_text(c, f) for f in dataclasses.fields(c)),  # type: ignore[arg-type]
             c.__doc__ or "") for c in event_types()]
    return _table(("type", "fields", "what it says"), rows)


def values_table() -> str:
    rows = [(where, ", ".join(f"`{v}`" for v in typing.get_args(alias)))
            for where, alias in VALUE_TYPES.items()]
    return _table(("field", "every value it can take"), rows)


def _settings_rows(model: BaseModel, prefix: str = "") -> Iterator[tuple[str, str, str]]:
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _settings_rows(value, f"{prefix}{name}.")
        else:
            default = "unset" if value is None else f"`{_toml(value)}`"
            yield f"`{prefix}{name}`", default, field.description or ""


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


def config_table() -> str:
    return _table(("key", "default", "meaning"), list(_settings_rows(Settings())))


def _commands(parser: argparse.ArgumentParser, path: str = "edge-recorder") -> Iterator[tuple[str, str, str]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
                if nested and not nested[0].required:  # runs alone too (`edge-recorder web`)
                    yield f"`{path} {name}`", _usage(sub), helps.get(name, "")
                if nested:
                    yield from _commands(sub, f"{path} {name}")
                else:
                    yield f"`{path} {name}`", _usage(sub), helps.get(name, "")


def _usage(parser: argparse.ArgumentParser) -> str:
    common = {"--config", "--state-dir", "-v", "-h"}
    parts = []
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            continue
        if a.option_strings and not common & set(a.option_strings):
            metavar = "" if a.nargs == 0 else f" {a.metavar or a.dest.upper()}"
            parts.append(f"`{a.option_strings[-1]}{metavar}`")
        elif not a.option_strings:
            parts.append(f"`{a.metavar or a.dest.upper()}`" + ("..." if a.nargs in ("*", "+") else ""))
    return " ".join(parts)


def cli_table() -> str:
    return _table(("command", "arguments", "what it does"), list(_commands(cli.build_parser())))


def mqtt_table() -> str:
    base = "`<prefix>/<device id>/"
    rows = [(f"{base}cmd/{kind}`", "in", ", ".join(f"`{f.alias or n}`" for n, f in schema.model_fields.items()
                                                   if n not in commands.SIGNATURE_FIELDS),
             _cell(schema.__doc__ or "") + (f" Reply: `evt/{schema.reply.type}`." if schema.reply else ""))
            for kind, schema in commands.SCHEMAS.items()]
    rows += [(f"{base}{topic}`", "out", payload, what) for topic, payload, what in mqtt.PUBLISHED]
    return _table(("topic", "direction", "payload", "what it is"), rows)


def states_table() -> str:
    rows = [(f"`{state.value}`", ", ".join(f"`{n.value}`" for n in recorder.State if n in allowed))
            for state, allowed in recorder.TRANSITIONS.items()]
    return _table(("from", "may go to"), rows)


GENERATORS: dict[str, Callable[[], str]] = {
    "states": states_table, "events": events_table, "values": values_table, "config": config_table,
    "cli": cli_table, "mqtt": mqtt_table,
}


def regenerate(text: str) -> str:
    def replace(m: re.Match[str]) -> str:
        if m.group(2) not in GENERATORS:
            raise SystemExit(f"gen-docs: unknown block {m.group(2)!r}; known: {', '.join(GENERATORS)}")
        return m.group(1) + GENERATORS[m.group(2)]() + m.group(4)
    return BLOCK.sub(replace, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a document is out of date")
    args = parser.parse_args(argv)
    stale = []
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text()
        new = regenerate(text)
        if new != text:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print(f"gen-docs: out of date: {', '.join(map(str, stale))}; run scripts/gen-docs", file=sys.stderr)
        return 1
    print(f"gen-docs: {'regenerated ' + ', '.join(map(str, stale)) if stale else 'up to date'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
