"""Forms made from payload schemas, and payloads read back from them (unvalidated: the wait
step's own check says what is wrong)."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel

from agents.ui._forms import FormProblem, payload_fields, payload_from_form, payload_inputs


class Inner(BaseModel):
    x: int


class Payload(BaseModel):
    name: str
    size: int
    ratio: float = 0.5
    ok: bool = False
    kind: Literal["a", "b"]
    inner: Inner | None = None
    tags: list[str] = []


def test_each_field_gets_an_input_of_its_kind() -> None:
    fields = {f.name: f for f in payload_fields(Payload)}
    kinds = {name: f.kind for name, f in fields.items()}
    assert kinds == {"name": "string", "size": "integer", "ratio": "number", "ok": "boolean",
                     "kind": "enum", "inner": "json", "tags": "json"}  # fmt: skip
    assert fields["kind"].choices == ("a", "b") and fields["name"].required
    html = payload_inputs(list(fields.values()), {"f.name": "<b>"})
    assert 'value="&lt;b&gt;"' in html and "<b>" not in html


def test_the_form_reads_back_as_the_payload() -> None:
    fields = payload_fields(Payload)
    form = {"f.name": "n", "f.size": "3", "f.ratio": "", "f.ok": "on", "f.kind": "b",
            "f.inner": '{"x": 1}', "f.tags": ""}  # fmt: skip
    assert payload_from_form(fields, form) == {
        "name": "n", "size": 3, "ok": True, "kind": "b", "inner": {"x": 1}
    }  # fmt: skip
    assert payload_from_form(fields, {"f.size": "many"})["size"] == "many"  # the schema says
    with pytest.raises(FormProblem, match="field 'inner' is not JSON"):
        payload_from_form(fields, {"f.inner": "{"})
    assert payload_from_form(fields, {"payload_json": '{"name": "j"}'}) == {"name": "j"}


def test_a_payload_that_is_not_an_object_or_none() -> None:
    [whole] = payload_fields(str)
    assert whole.whole and whole.kind == "string"
    assert payload_from_form([whole], {"f.payload": "hello"}) == "hello"
    nothing = payload_fields(None)
    assert payload_from_form(nothing, {}) is None
    assert "no payload" in payload_inputs(nothing, {})
