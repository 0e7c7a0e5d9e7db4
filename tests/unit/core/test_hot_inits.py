"""`Entry` and `ApplyResult` write their own `__init__` (made once per entry on every master: the slots'
descriptors instead of the frozen dataclass's object.__setattr__). It must stay the dataclass's own in
everything but speed: the same parameters and defaults, frozen, equal and hashed by value, pickled in the
dataclass's form (Raft snapshots hold ApplyResults written by earlier releases)."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from typing import Any

import pytest

from tessera.control_plane.core.events import Entry, RoleWeightSet
from tessera.control_plane.core.state import ApplyResult

HOT = [Entry, ApplyResult]


def _dataclass_parameters(cls: type) -> list[tuple[str, Any]]:
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else inspect.Parameter.empty)
        out.append((f.name, default))
    return out


@pytest.mark.parametrize("cls", HOT, ids=lambda c: c.__name__)
def test_the_hand_written_init_takes_the_fields_in_order_with_their_defaults(cls: type) -> None:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert [(p.name, p.default) for p in params] == _dataclass_parameters(cls)
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)


@pytest.mark.parametrize("cls", HOT, ids=lambda c: c.__name__)
def test_every_field_is_set_from_its_argument(cls: type) -> None:
    values = {f.name: f"value-{i}" for i, f in enumerate(dataclasses.fields(cls))}
    made = cls(**values)
    assert {name: getattr(made, name) for name in values} == values
    positional = cls(*values.values())
    assert positional == made and hash(positional) == hash(made)


def test_defaults_and_frozenness_are_the_dataclasses() -> None:
    entry = Entry(3, "m1", 1.5)
    assert (entry.request_id, entry.traceparent, entry.events) == ("", "", ())
    result = ApplyResult("applied")
    assert (result.events, result.first_seq, result.last_seq, result.error_code, result.reason,
            result.request_id) == ((), 0, 0, "", "", "")
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.term = 4  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.outcome = "rejected"  # type: ignore[misc]
    assert dataclasses.replace(entry, term=4) == Entry(4, "m1", 1.5)


def test_pickles_keep_the_dataclass_form_both_ways() -> None:
    entry = Entry(3, "m1", 1.5, "req-1", "", (RoleWeightSet("r", 2.0),))
    result = ApplyResult("applied", ((7, RoleWeightSet("r", 2.0)),), 7, 7, "", "", "req-1")
    for value in (entry, result):
        # a slots dataclass pickles its field values as a list: what earlier releases wrote and read
        assert value.__reduce_ex__(pickle.HIGHEST_PROTOCOL)[2] == [getattr(value, f.name) for f in dataclasses.fields(value)]
        assert pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL)) == value
