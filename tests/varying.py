"""Compare a run with a reference run on everything that does not vary from run to run, where
what varies is derived, not listed by hand.

A `Reference` is the same deterministic run done twice (or more), each turned into a JSON
tree. The *paths* (field locations, such as `[1]["parts"][0]["timestamp"]`) whose values
differ between the runs are what varies: timestamps, generated ids, durations, and any such
field an upstream release adds. `Reference.differences(candidate)` compares a candidate's
tree with the first run's on everything else:

- the same shape: the same paths (a missing or extra message, part or field is a difference);
- at every path that did not vary, the first run's value, exactly;
- at a path that varied, a value of the JSON type it had (a timestamp stays a string);
- values linked in the reference stay linked: paths that hold one value in each run (a tool
  call's generated id and its return's; a run id on each of its messages) hold one value in
  the candidate.

Only leaves vary: runs of different shapes are no reference (`NotDeterministic`), and neither
are runs that differ at a path under a key named in `stable` (content, arguments, ...), where
a varying value would hide a real difference. `compare()` does one more run when a candidate
differs, in case two runs shared a value by chance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

Path = tuple[str | int, ...]


class _Empty:
    """An empty dict or list, as a leaf: its path is part of the shape."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


EMPTY_DICT: Final = _Empty("{}")
EMPTY_LIST: Final = _Empty("[]")


class NotDeterministic(AssertionError):
    """The two reference runs differ where a run must not vary: they cannot be the reference."""


def jsonable(value: Any) -> Any:
    """`value` as a JSON tree; a dataclass or pydantic model keeps its type's name (`"type"`),
    so two objects of different types never compare equal. A dataclass's private fields its
    own equality leaves out (`compare=False`: a cache such as `BinaryContent._identifier`) are
    left out."""
    if isinstance(value, BaseModel):
        return {"type": type(value).__name__, **value.model_dump(mode="json")}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {
            f.name: jsonable(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.compare or not f.name.startswith("_")
        }
        return {"type": type(value).__name__, **fields}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return to_jsonable_python(value, bytes_mode="base64")  # datetimes, durations, bytes, ...


def leaves(tree: Any, path: Path = ()) -> dict[Path, Any]:
    """Every leaf of a JSON tree by its path; an empty dict or list is a leaf."""
    out: dict[Path, Any] = {}
    if isinstance(tree, dict):
        if not tree:
            out[path] = EMPTY_DICT
        for key, value in tree.items():
            out.update(leaves(value, (*path, key)))
    elif isinstance(tree, list):
        if not tree:
            out[path] = EMPTY_LIST
        for i, value in enumerate(tree):
            out.update(leaves(value, (*path, i)))
    else:
        out[path] = tree
    return out


def spell(path: Path) -> str:
    return "".join(f"[{p!r}]" for p in path) or "(the whole)"


def _cut(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else f"{text[:117]}..."


def _same_type(a: Any, b: Any) -> bool:
    """The same JSON type (an int and a float are both numbers, a bool is not)."""

    def kind(v: Any) -> str:
        if isinstance(v, bool):
            return "bool"
        if isinstance(v, int | float):
            return "number"
        return type(v).__name__

    return kind(a) == kind(b)


@dataclasses.dataclass(frozen=True)
class Reference:
    """One run done the same way several times: `runs` are their leaves (the first is what a
    candidate is compared with), `varying` the paths whose values were not the same in all,
    `links` the groups of varying paths that held one value in each run."""

    runs: tuple[dict[Path, Any], ...]
    varying: frozenset[Path]
    links: tuple[frozenset[Path], ...]

    @property
    def first(self) -> dict[Path, Any]:
        return self.runs[0]

    @classmethod
    def of(cls, *trees: Any, stable: Iterable[str] = ()) -> Reference:
        """The reference of two or more runs' JSON trees. `stable`: keys whose values must not
        vary (a run that varies there is no reference: the comparison would be blind there)."""
        assert len(trees) >= 2, "a reference is one run done at least twice"
        runs = tuple(leaves(t) for t in trees)
        first = runs[0]
        for other in runs[1:]:
            if other.keys() != first.keys():
                only = sorted(map(spell, first.keys() ^ other.keys()))[:10]
                raise NotDeterministic(f"the reference runs differ in shape, at {only}")
        varying = frozenset(
            p for p in first if any(r[p] != first[p] or not _same_type(r[p], first[p])
                                    for r in runs)
        )  # fmt: skip
        keep = set(stable)
        wrong = sorted(spell(p) for p in varying if any(k in keep for k in p if type(k) is str))
        if wrong:
            raise NotDeterministic(f"the reference runs differ at {wrong[:10]}")
        groups: dict[tuple[Any, ...], set[Path]] = {}
        for p in varying:
            if not isinstance(first[p], _Empty):  # an empty container has no value to link
                groups.setdefault(tuple(r[p] for r in runs), set()).add(p)
        links = tuple(frozenset(g) for g in groups.values() if len(g) > 1)
        return cls(runs, varying, links)

    def differences(self, candidate: Any) -> list[str]:
        """How the candidate's JSON tree differs from the reference (empty: not at all)."""
        first, c = self.first, leaves(candidate)
        problems = [f"missing {spell(p)} (was {_cut(first[p])})"
                    for p in sorted(first.keys() - c.keys(), key=spell)]  # fmt: skip
        problems += [f"extra {spell(p)} = {_cut(c[p])}"
                     for p in sorted(c.keys() - first.keys(), key=spell)]  # fmt: skip
        for p in sorted(first.keys() & c.keys(), key=spell):
            want, got = first[p], c[p]
            if p in self.varying:
                if not any(_same_type(r[p], got) for r in self.runs):
                    problems.append(f"{spell(p)} varies, but {_cut(got)} is not like {_cut(want)}")
            elif want != got or not _same_type(want, got):
                problems.append(f"{spell(p)} = {_cut(got)}, not {_cut(want)}")
        for group in self.links:
            values = {c[p] for p in group if p in c and not isinstance(c[p], _Empty)}
            if len(values) > 1:
                where = sorted(map(spell, group))
                problems.append(
                    f"{where} held one value in each run, here {sorted(map(repr, values))}"
                )
        return problems


async def compare(
    candidate: Any,
    runs: list[Any],
    again: Callable[[], Awaitable[Any]],
    *,
    stable: Iterable[str] = (),
    what: str = "the run",
    most: int = 6,
) -> None:
    """Fail, saying where, unless `candidate` is like the reference of `runs` (the JSON trees
    of one run done the same way, at least twice).

    Two runs may share a value by chance (two durations of the same microseconds): there it
    does not show as varying. So on a difference `again()` gives one more run's tree (added
    to `runs`) and the candidate is compared again, up to `most` runs. A real difference
    stays one however often the run is done.
    """
    stable = tuple(stable)
    while True:
        problems = Reference.of(*runs, stable=stable).differences(candidate)
        if not problems or len(runs) >= most:
            break
        runs.append(await again())
    assert not problems, (
        f"{what} differs from the reference of {len(runs)} runs:\n  " + "\n  ".join(problems[:30])
    )
