"""What third-party libraries say, asked of them while the tests run: agentfsm passes their
reasons on, and a test checks that it does, not how pydantic or pydantic-ai word them (that
is theirs to change in any release)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pydantic_ai.models
from pydantic import TypeAdapter, ValidationError
from pydantic_ai.exceptions import UserError


@dataclass(frozen=True)
class ModelRefused:
    """What agentfsm says of a model pydantic-ai cannot use here (an unknown name, no API
    key): its own words naming the model, then the first line of pydantic-ai's reason."""

    model: str

    def __str__(self) -> str:
        try:
            pydantic_ai.models.infer_model(self.model)
        except (UserError, ImportError) as exc:
            return f"cannot use model {self.model!r}: {str(exc).splitlines()[0]}"
        raise AssertionError(f"pydantic-ai can use {self.model!r} here")


def validation_error(schema: Any, value: Any) -> ValidationError:
    """Pydantic's error for `value` as a `schema` (a model, a dataclass, a type)."""
    try:
        TypeAdapter(schema).validate_python(value)
    except ValidationError as exc:
        return exc
    raise AssertionError(f"{value!r} is a valid {schema!r}")


def field_refused(schema: Any, value: Any) -> str:
    """How agentfsm names what is wrong with `value` as a `schema`: the first field pydantic
    refuses, then pydantic's message for it ("dataset: <pydantic's words>")."""
    error = validation_error(schema, value).errors()[0]
    return f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"


def first_line(schema: Any, value: Any) -> str:
    """The first line of pydantic's error ("<n> validation errors for <schema>")."""
    return str(validation_error(schema, value)).splitlines()[0]
