"""A step's result made ready to commit: its destination, the memory patch (only the fields
that changed, checked against the schema and the size limit), its output, all storable as
JSON; or why it cannot be (`UnstorableResult`, or `StepFailed` for what no try can fix)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import pydantic_core
from pydantic import BaseModel, JsonValue, ValidationError

from storage.base import json_bytes
from storage.errors import Unstorable

from ._ledger import Ledger, json_size
from ._step import StepResult
from ._table import Transition
from .errors import InvalidMemory, MemoryTooLarge, RunError, UnstorableResult

if TYPE_CHECKING:
    from ._spec import MachineSpec

__all__ = ["Settled", "StepFailed", "settle"]

M = TypeVar("M", bound=BaseModel)


class StepFailed(Exception):
    """A step gave up: its last error, and the try it happened on."""

    def __init__(
        self,
        error: BaseException,
        attempt: int,
        spent: dict[str, int] | None = None,
        *,
        final: bool = False,
    ) -> None:
        super().__init__(str(error))
        self.error = error
        self.attempt = attempt
        self.spent = spent or None
        self.final = final
        """Past any detour: the run goes to the machine's failure state (a spent loop)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Settled(Generic[M]):
    """A step's result as its commit will write it: checked, and storable as JSON."""

    result: StepResult[M]
    dest: str
    patch: dict[str, JsonValue]
    memory: M
    patch_sizes: dict[str, int]
    output: JsonValue


def settle(
    machine: MachineSpec[M], run_id: str, ledger: Ledger, current: M, t: Transition,
    result: StepResult[M],
) -> Settled[M]:  # fmt: skip
    """Where `result` goes and what its commit writes (`current` is the memory as last
    committed); `UnstorableResult` naming the part that cannot be stored as JSON (the try
    fails), `StepFailed` for a result no try can fix."""
    dest = _dest(t, result)
    patch, memory, patch_sizes = _changes(machine, run_id, ledger, current, t, result.memory)
    return Settled(
        result=result,
        dest=dest,
        patch=patch,
        memory=memory,
        patch_sizes=patch_sizes,
        output=_storable(t, "its output", result.output),
    )


def _dest(t: Transition, result: StepResult[M]) -> str:
    if t.dest is not None:
        return t.dest
    if result.route in t.routes:
        return t.routes[result.route]  # type: ignore[index]  # checked just above
    raise StepFailed(
        RunError(
            f"step {t.trigger!r} chose route {result.route!r}, which is not one of"
            f" {sorted(t.routes)}"
        ),
        1,
    )


def _changes(
    machine: MachineSpec[M], run_id: str, ledger: Ledger, current: M, t: Transition, new: M
) -> tuple[dict[str, JsonValue], M, dict[str, int]]:
    """The memory patch (changed fields, as JSON), the checked new memory, and the bytes
    of each patched field as JSON (sized once, here, for the limit and the snapshots)."""
    if not isinstance(new, machine.memory_type):
        raise StepFailed(
            TypeError(
                f"a step returned {type(new).__name__} as memory,"
                f" not {machine.memory_type.__name__}"
            ),
            1,
        )
    fields = ledger.fields
    dump = _memory_dump(t, new)
    if dump == fields:
        return {}, current, {}
    changed = {k: v for k, v in dump.items() if k not in fields or fields[k] != v}
    # Before the schema: a schema error on a value nested 200 deep is pages long.
    sizes_of = {k: _sized(t, f"memory field {k!r}", v) for k, v in changed.items()}
    try:
        checked = machine.memory_type.model_validate(dump)
    except ValidationError as exc:
        raise StepFailed(InvalidMemory(f"run {run_id!r}", exc), 1) from None
    dump = checked.model_dump(mode="json", warnings=False)
    patch = {k: v for k, v in dump.items() if k not in fields or fields[k] != v}
    patch_sizes = {
        k: sizes_of[k] if k in changed and changed[k] == v else _sized(t, repr(k), v)
        for k, v in patch.items()
    }  # the schema may have coerced a value: sized (and checked) again
    limit = machine.max_memory
    if limit is not None:  # sized by the fields that change, not the whole memory
        sizes = ledger.field_sizes()
        size = sum(sizes.values()) + sum(n - sizes.get(k, 0) for k, n in patch_sizes.items())
        if size > limit:
            raise StepFailed(
                MemoryTooLarge(
                    f"run {run_id!r}: the step would make the memory {size} bytes as"
                    f" JSON, over the limit of {limit}; nothing was written"
                ),
                1,
            )
    return patch, checked, patch_sizes


def _storable(t: Transition, what: str, value: object) -> JsonValue:
    """`value` as JSON-able data, or `UnstorableResult` naming `what` and the trouble: also
    what would not read back equal (NaN, nesting too deep; see `storage.base.json_bytes`)."""
    if value is None:  # most steps' output: nothing to check
        return None
    try:
        jsonable: JsonValue = pydantic_core.to_jsonable_python(value)
        json_bytes(jsonable, what)  # also catches bytes that are not UTF-8 text
    except (pydantic_core.PydanticSerializationError, ValueError, TypeError) as exc:
        raise _unstorable(t, what, value, exc) from None
    return jsonable


def _sized(t: Transition, what: str, value: JsonValue) -> int:
    """`json_size(value)`, or `UnstorableResult` as `_storable` says it."""
    try:
        return json_size(value, what)
    except Unstorable as exc:
        raise _unstorable(t, what, value, exc) from None


def _unstorable(t: Transition, what: str, value: object, exc: Exception) -> UnstorableResult:
    problem: object = exc
    if isinstance(exc, Unstorable):
        problem = exc.problem
    else:  # pydantic's words ("Circular reference detected"): say where, and what, in ours
        try:
            json_bytes(value, what)
        except Unstorable as ours:
            problem = ours.problem
    return UnstorableResult(
        f"step {t.trigger!r} returned what cannot be stored as JSON in {what}"
        f" ({type(value).__name__}): {problem}; return JSON-able data (str, finite numbers,"
        " bool, None, lists, dicts, pydantic models)"
    )


def _memory_dump(t: Transition, memory: BaseModel) -> dict[str, JsonValue]:
    """The memory's fields as JSON, or `UnstorableResult` naming the field that is not."""
    try:
        dump: dict[str, JsonValue] = memory.model_dump(mode="json", warnings=False)
    except (pydantic_core.PydanticSerializationError, ValueError, TypeError):
        for name in type(memory).model_fields:
            _storable(t, f"memory field {name!r}", getattr(memory, name))
        raise  # every field alone was storable: not ours to explain
    return dump
