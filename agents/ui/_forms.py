"""A form made from a wait's payload schema, and the payload read back from that form.

Fields of simple types (string, integer, number, boolean, an enum) get an input each; any
other field a JSON text box. A whole-payload JSON box can replace the fields. The payload
read back is not validated here: the wait step's own check (`check_payload`) does that, and
its message is what the page shows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from pydantic import TypeAdapter

from ._html import esc

__all__ = ["FormProblem", "payload_fields", "payload_from_form", "payload_inputs"]

RAW = "payload_json"
"""The form field that holds a whole payload as JSON (used when not empty)."""


class FormProblem(ValueError):
    """The form cannot be read as a payload (a JSON box that is not JSON)."""


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    kind: str
    """"string", "integer", "number", "boolean", "enum", "json" or "none" (no payload)."""
    required: bool
    choices: tuple[str, ...] = ()
    default: Any = None
    description: str = ""
    whole: bool = False
    """The payload is not an object: this one field is all of it."""


def payload_fields(payload_type: Any) -> list[Field]:
    """The form fields for a payload of `payload_type` (None: the event takes no payload)."""
    if payload_type is None:
        return [Field("", "none", False)]
    schema = TypeAdapter(payload_type).json_schema()
    if schema.get("type") != "object" or "properties" not in schema:
        return [replace(_field("payload", schema, required=True), whole=True)]
    required = set(schema.get("required", ()))
    return [
        _field(name, spec, required=name in required) for name, spec in schema["properties"].items()
    ]


def _field(name: str, spec: Mapping[str, Any], *, required: bool) -> Field:
    options = [s for s in spec.get("anyOf", ()) if s.get("type") != "null"]
    if len(options) == 1:  # Optional[X]: X
        spec = {**options[0], **{k: v for k, v in spec.items() if k != "anyOf"}}
    kind = spec.get("type")
    choices = spec.get("enum") or ([spec["const"]] if "const" in spec else None)
    default, description = spec.get("default"), str(spec.get("description", ""))
    if choices and all(isinstance(c, str) for c in choices):
        return Field(name, "enum", required, tuple(choices), default, description)
    if kind in ("string", "integer", "number", "boolean"):
        return Field(name, kind, required, (), default, description)
    return Field(name, "json", required, (), default, description)


def payload_inputs(fields: list[Field], values: Mapping[str, str]) -> str:
    """The inputs of `fields`, filled with `values` (what the user typed before)."""
    out = []
    for f in fields:
        if f.kind == "none":
            return '<p class="muted">This event carries no payload.</p>'
        name = f"f.{f.name}"
        shown = values.get(name)
        if shown is None and f.default is not None:
            shown = f.default if isinstance(f.default, str) else json.dumps(f.default)
        shown = shown or ""
        label = f"{esc(f.name)}{' *' if f.required else ''}"
        hint = f' <span class="muted">{esc(f.description)}</span>' if f.description else ""
        if f.kind == "enum":
            options = "" if f.required else '<option value="">(none)</option>'
            options += "".join(
                f'<option{" selected" if c == shown else ""} value="{esc(c)}">{esc(c)}</option>'
                for c in f.choices
            )
            control = f'<select name="{esc(name)}">{options}</select>'
        elif f.kind == "boolean":
            checked = " checked" if shown in ("on", "true", "True") else ""
            control = f'<input type="checkbox" name="{esc(name)}"{checked}>'
        elif f.kind == "json":
            control = f'<textarea name="{esc(name)}" rows="3">{esc(shown)}</textarea> (JSON)'
        else:
            kind = {"integer": "number", "number": "text"}.get(f.kind, "text")
            control = f'<input type="{kind}" name="{esc(name)}" value="{esc(shown)}">'
        out.append(f"<label>{label} {control}{hint}</label>")
    raw = values.get(RAW, "")
    out.append(
        f"<details{' open' if raw else ''}><summary>or the whole payload as JSON</summary>"
        f'<textarea name="{RAW}" rows="4">{esc(raw)}</textarea></details>'
    )
    return "".join(out)


def payload_from_form(fields: list[Field], form: Mapping[str, str]) -> Any:
    """The payload the form describes (unvalidated), or `FormProblem`."""
    raw = form.get(RAW, "").strip()
    if raw:
        return _json(raw, "the payload")
    if fields and fields[0].kind == "none":
        return None
    values: dict[str, Any] = {}
    for f in fields:
        text = form.get(f"f.{f.name}")
        if f.kind == "boolean":
            values[f.name] = text in ("on", "true")
            continue
        if text is None or (text == "" and not f.required) or (text == "" and f.kind != "string"):
            continue  # left empty: the schema's default applies (or it says what is missing)
        if f.kind == "integer":
            values[f.name] = _number(text, int)
        elif f.kind == "number":
            values[f.name] = _number(text, float)
        elif f.kind == "json":
            values[f.name] = _json(text, f"field {f.name!r}")
        else:
            values[f.name] = text
    if fields and fields[0].whole:
        return values.get("payload")
    return values


def _number(text: str, kind: type[int] | type[float]) -> Any:
    try:
        return kind(text)
    except ValueError:
        return text  # the schema check names the field and says what it wanted


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormProblem(f"{what} is not JSON: {exc}") from None
