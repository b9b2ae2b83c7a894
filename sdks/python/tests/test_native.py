"""The native module's conversion of Python objects to JSON, which every action and event
goes through (no runtime needed: a client connects on first use)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from pydantic import BaseModel

from agent_assembly import _native
from agent_assembly.assembly import _jsonable


@pytest.fixture
def client(tmp_path: Any) -> _native.Client:
    return _native.Client(
        socket_path=tmp_path / "none.sock", state_dir=tmp_path, json_default=_jsonable
    )


class Point(BaseModel):
    x: int
    y: int


def roundtrip(client: _native.Client, value: object) -> Any:
    return json.loads(client.dumps(value))


def test_json_types_are_kept(client: _native.Client) -> None:
    value = {"s": "é ☃", "i": -3, "f": 1.5, "t": True, "n": None, "l": [1, [2]], "d": {"k": {}}}
    assert roundtrip(client, value) == value


def test_what_json_cannot_hold_is_sent_readably(client: _native.Client) -> None:
    value = {
        "bytes": b"/tmp/x",
        "bytearray": bytearray(b"\xffok"),
        "tuple": (1, 2),
        "set": {3},
        "frozenset": frozenset({4}),
        "model": Point(x=1, y=2),
        "object": object(),
        1: "int key",
        "big": 2**70,
        "nan": math.nan,
    }
    got = roundtrip(client, value)
    assert got["bytes"] == "/tmp/x"
    assert got["bytearray"] == "\ufffdok"
    assert got["tuple"] == [1, 2]
    assert got["set"] == [3]
    assert got["frozenset"] == [4]
    assert got["model"] == {"x": 1, "y": 2}
    assert got["object"].startswith("<object object")
    assert got["1"] == "int key"
    assert got["big"] == str(2**70)
    assert got["nan"] == "NaN"


def test_a_cycle_is_cut_not_followed(client: _native.Client) -> None:
    loop: dict[str, Any] = {"a": 1}
    loop["self"] = loop
    shared = [1]
    # A container seen twice side by side is not a cycle.
    assert roundtrip(client, {"loop": loop, "x": shared, "y": shared}) == {
        "loop": {"a": 1, "self": "<cycle>"},
        "x": [1],
        "y": [1],
    }


def test_too_deep_is_refused_not_crashed(client: _native.Client) -> None:
    deep: list[Any] = []
    for _ in range(1000):
        deep = [deep]
    with pytest.raises(RecursionError, match="deeper than"):
        client.dumps(deep)


def test_a_failing_default_raises_its_error(tmp_path: Any) -> None:
    def refuse(value: object) -> object:
        raise TypeError(f"cannot send {type(value).__name__}")

    client = _native.Client(socket_path=tmp_path / "none.sock", json_default=refuse)
    with pytest.raises(TypeError, match="cannot send object"):
        client.dumps({"o": object()})


def test_without_a_default_objects_are_sent_as_repr(tmp_path: Any) -> None:
    client = _native.Client(socket_path=tmp_path / "none.sock")
    assert roundtrip(client, [Point(x=1, y=2)]) == [repr(Point(x=1, y=2))]


def test_lone_surrogates_do_not_crash(client: _native.Client) -> None:
    assert isinstance(roundtrip(client, {"s": "a\ud800b"})["s"], str)
