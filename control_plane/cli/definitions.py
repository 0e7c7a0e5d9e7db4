"""App definitions as operators write them: a JSON or YAML file read into the plain mapping that
`tessera.sdk.services.app.parse_app` checks. The fields are checked there and only there; this module only
turns text into that mapping, and remembers where each field was written, so an error can say the line.

Which format: `--format json|yaml`; else the file's extension (`.json`; `.yaml`, `.yml`); else (stdin,
any other name) the first character that is not blank or a comment: `{` is JSON, anything else YAML
(a YAML flow mapping on stdin needs `--format yaml`).

YAML is read with PyYAML's safe loader (no Python objects, no custom tags) and these rules, against the
traps of YAML 1.1, which PyYAML follows:
- booleans are only `true` / `false` (as in YAML 1.2 and JSON): `yes`, `no`, `on`, `off`, `y`, `n` stay
  strings, so `env: {VERBOSE: on}` means the string "on";
- dates and times stay strings (no implicit timestamps);
- one document per file: a second non-empty document is refused with the line it starts on (apply writes
  one app with one compare-and-set; a half-applied file would be worse);
- a key written twice in one mapping is refused with its line (PyYAML, like `json`, would keep the last
  silently; JSON files get the same check); keys that are not strings are refused by `parse_app` with
  the field's path;
- anchors, aliases and merge keys (`<<: *defaults`) are resolved before the check, like any value.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

import yaml

__all__ = ["Definition", "DefinitionError", "FORMATS", "load_definition"]

FORMATS = ("json", "yaml")
_BY_SUFFIX = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}
_BOOL = "tag:yaml.org,2002:bool"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


class DefinitionError(ValueError):
    """Text that is not one JSON or YAML document (the message says where, when the parser knows)."""


class _Loader(yaml.SafeLoader):
    """The safe loader with YAML 1.2's booleans and no implicit timestamps (see the module's rules)."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _TIMESTAMP)]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


@dataclass(frozen=True)
class Definition:
    """A loaded document, its format, and where (line, column; 1-based) each field path was written."""

    data: Any
    format: str
    marks: dict[str, tuple[int, int]] = field(default_factory=dict)

    def where(self, path: str) -> str:
        """`line L, column C` of `path` (`healthChecks[0].intervalSeconds`) or of its nearest written
        parent; "" when the format keeps no positions (JSON) or the path is not in the file."""
        while path:
            if path in self.marks:
                line, column = self.marks[path]
                return f"line {line}, column {column}"
            path = re.sub(r"(\[\d+\]|\.[^.\[]*|^[^.\[]*)$", "", path, count=1)
        return ""


def choose_format(name: str, text: str, given: str | None = None) -> str:
    """The format of `text` read from `name` (see the module's docstring)."""
    if given:
        return given
    suffix = PurePath(name).suffix.lower()
    if suffix in _BY_SUFFIX:
        return _BY_SUFFIX[suffix]
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return "json" if stripped.startswith("{") else "yaml"
    return "yaml"


def load_definition(text: str, name: str, given: str | None = None) -> Definition:
    """The document in `text`; DefinitionError when it is not one document of its format."""
    fmt = choose_format(name, text, given)
    if fmt == "json":
        return Definition(_load_json(text), "json")
    return _load_yaml(text)


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise DefinitionError(f"not JSON we accept: key {key!r} appears twice in one object")
        seen[key] = value
    return seen


def _load_json(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_repeats)
    except json.JSONDecodeError as exc:
        raise DefinitionError(f"not JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}") from None


def _at(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _load_yaml(text: str) -> Definition:
    loader = _Loader(text)
    try:
        try:
            if not loader.check_node():
                raise DefinitionError("holds no YAML document")
            node = loader.get_node()
            while loader.check_node():
                extra = loader.get_node()
                if not (isinstance(extra, yaml.ScalarNode) and extra.value in ("", "~", "null")):
                    raise DefinitionError(f"{_at(extra.start_mark)}: a second YAML document starts here; "
                                          "apply one app per file")
            marks: dict[str, tuple[int, int]] = {}
            _walk(node, "", marks, set())
            data = loader.construct_document(node)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            text = exc.problem or exc.context or "not a YAML document"
            if exc.context and exc.problem:
                text += f" ({exc.context}" + (f" at {_at(exc.context_mark)})" if exc.context_mark else ")")
            raise DefinitionError(f"not YAML: {_at(mark)}: {text}" if mark else f"not YAML: {text}") from None
        except yaml.YAMLError as exc:  # a reader error (a character YAML does not allow) and the like
            raise DefinitionError(f"not YAML: {exc}") from None
    finally:
        loader.dispose()
    return Definition(data, "yaml", marks)


def _walk(node: yaml.Node, path: str, marks: dict[str, tuple[int, int]], seen: set[int]) -> None:
    """Record each field path's position and refuse a key written twice. An aliased node is walked once
    (aliases may nest or recurse: the walk stays linear in the text)."""
    marks.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))  # an alias: its anchor's
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: set[tuple[str, str]] = set()
        for key, value in node.value:
            if key.tag == "tag:yaml.org,2002:merge":  # `<<: *base` or `<<: [*a, *b]`: their fields are ours
                for merged in value.value if isinstance(value, yaml.SequenceNode) else [value]:
                    _walk(merged, path, marks, seen)
                continue
            if isinstance(key, yaml.ScalarNode):
                if (key.tag, key.value) in keys:
                    raise DefinitionError(f"{_at(key.start_mark)}: key {key.value!r} appears twice in one mapping")
                keys.add((key.tag, key.value))
                _walk(value, f"{path}.{key.value}" if path else key.value, marks, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, f"{path}[{i}]", marks, seen)
