"""The reference of every config field, generated from the schema's dataclasses.

    lensray config --reference > docs/config.md
    python -c "from lensray.config.reference import config_reference; print(config_reference())"

One Markdown table per section (field, type, default, description), in the order the fields are
declared. A field's description is the string literal under it in the source (litgpt's style):
Python keeps no such attribute at run time, so it is read from the source with `ast`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import textwrap
import types
import typing
from typing import Any

from lensray.config.schema import SelectConfig


def field_docs(cls: type) -> dict[str, str]:
    """{field name: the docstring under it} for the dataclass `cls` and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # defined where there is no source (an interpreter session)
            continue
        node = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef))
        for stmt, after in zip(node.body, node.body[1:]):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[stmt.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass a field of type `tp` holds (`X`, `X | None`, `list[X]`), or None."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if arg is not type(None) and arg is not Ellipsis and (found := _dataclass_in(arg)) is not None:
            return found
    return None


def type_name(tp: Any) -> str:
    """A field's type as the YAML sees it: `int`, `list[str]`, `DataConfig | None`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"list[{type_name(args[0])}]" if args else "list"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def default_text(f: dataclasses.Field) -> str:
    """A field's default as YAML (JSON, which YAML reads), or `required`."""
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if dataclasses.is_dataclass(value):
        return "(section)"
    if isinstance(value, tuple):
        value = list(value)
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _table(cls: type, prefix: str, sections: list[tuple[str, type, str]]) -> list[str]:
    """The rows of `cls`'s table; nested dataclasses are appended to `sections` as they are met."""
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    rows = ["| field | type | default | description |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        nested = _dataclass_in(hints[f.name])
        if nested is not None:
            many = typing.get_origin(hints[f.name]) in (list, tuple)
            sections.append((f"{prefix}{f.name}{'[]' if many else ''}", nested, docs.get(f.name, "")))
        rows.append(f"| `{f.name}` | `{type_name(hints[f.name])}` | {default_text(f)} | {_cell(docs.get(f.name, ''))} |")
    return rows


def config_reference(cls: type = SelectConfig) -> str:
    """The Markdown reference of every field of `cls` (docs/config.md), ending in a newline."""
    out = [
        "# Configuration reference",
        "",
        "Generated from `lensray/config/schema.py` (and the sections it imports) by",
        "`lensray config --reference > docs/config.md`; edit the docstrings there, not this file.",
        "",
        "A config is YAML with these sections; every field may be left out (its default applies).",
        "Any field can be set on the command line as `--set section.field=value`, the value in YAML:",
        "`lensray select CONFIG --set fit.window=4 --set probe.lr=1e-4 --set pool.models=[a,b]`.",
        "`lensray config CONFIG` prints a config with every default filled in.",
        "",
        "## Top level",
        "",
    ]
    top = [f for f in dataclasses.fields(cls) if _dataclass_in(typing.get_type_hints(cls)[f.name]) is None]
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    out += ["| field | type | default | description |", "| --- | --- | --- | --- |"]
    out += [f"| `{f.name}` | `{type_name(hints[f.name])}` | {default_text(f)} | {_cell(docs.get(f.name, ''))} |" for f in top]
    sections: list[tuple[str, type, str]] = []
    for f in dataclasses.fields(cls):
        nested = _dataclass_in(hints[f.name])
        if nested is not None:
            sections.append((f.name, nested, docs.get(f.name, "")))
    while sections:
        name, section, doc = sections.pop(0)
        out += ["", f"## `{name}`", ""]
        own = _cell(inspect.cleandoc(section.__doc__ or ""))
        doc = "" if own.startswith(_cell(doc).rstrip(".")) else _cell(doc)  # says it twice
        lead = " ".join(p for p in (doc, own) if p)
        if lead:
            out += [lead, ""]
        found: list[tuple[str, type, str]] = []
        prefix = name.removesuffix("[]") + ("[]." if name.endswith("[]") else ".")
        out += _table(section, prefix, found)
        sections = found + sections  # a section's own nested sections follow it
    return "\n".join(out) + "\n"
