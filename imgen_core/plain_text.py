"""YAML and JSON that users and datasets supply (dataset metadata, training configs, a base
model's `xp.cfg`), read as plain values within bounds: a size limit before parsing, no YAML
aliases (a 1 KB "billion laughs" file expands to gigabytes through them), no tags beyond plain
YAML's, and nesting at most MAX_DEPTH deep (deeper input would exhaust the parser's recursion).
Every problem is a ValueError with one line that says what is wrong."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

MAX_DEPTH = 64


class _PlainLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing aliases and deep nesting while it composes the document."""

    depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise ValueError("it uses a YAML alias (*name); aliases are not accepted (they can expand a small "
                             "file into gigabytes)")
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ValueError(f"it nests values more than {MAX_DEPTH} deep")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def read_file(path, what: str, max_bytes: int) -> str:
    """A text file of at most `max_bytes`, checked before it is read."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{what} {path} is {size} bytes; at most {max_bytes} are read")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path} is not UTF-8 text") from None


def parse_yaml(text: str, what: str):
    """Plain YAML -> Python values (dicts, lists, strings, numbers, booleans, None)."""
    try:
        return yaml.load(text, Loader=_PlainLoader)  # noqa: S506 - a SafeLoader subclass
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    except (yaml.YAMLError, RecursionError) as e:
        raise ValueError(f"{what} is not plain YAML: {' '.join(str(e).split())[:200]}") from None


def parse_json(text: str, what: str):
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{what} is not readable JSON: {' '.join(str(e).split())[:200]}") from None
