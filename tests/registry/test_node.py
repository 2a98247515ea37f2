"""langcluster.Node and NodeStatus."""

from __future__ import annotations

import math

import pytest

from langcluster import Node, NodeStatus


def test_node_fields_and_defaults():
    n = Node("a", "10.0.0.1", 8000, weight=2, metadata={"model": "llama"})
    assert (n.id, n.address, n.port, n.weight) == ("a", "10.0.0.1", 8000, 2)
    assert n.metadata == {"model": "llama"}
    assert n.status is NodeStatus.UNKNOWN
    assert n.url == "10.0.0.1:8000"
    assert Node("b", "sock").url == "sock"


def test_node_is_slotted():
    n = Node("a", "h")
    with pytest.raises(AttributeError):
        n.extra = 1  # type: ignore[attr-defined]


def test_status_accepts_its_string_value():
    assert Node("a", "h", status="healthy").status is NodeStatus.HEALTHY
    assert NodeStatus.DRAINING == "draining"
    assert str(NodeStatus.UNHEALTHY) == "unhealthy"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"id": ""}, ValueError, "^id:"),
        ({"id": 3}, TypeError, "^id:"),
        ({"address": None}, TypeError, "^address:"),
        ({"port": 0}, ValueError, "^port:"),
        ({"port": "80"}, TypeError, "^port:"),
        ({"weight": 0}, ValueError, "^weight:"),
        ({"weight": math.nan}, ValueError, "^weight:"),
        ({"weight": True}, TypeError, "^weight:"),
        ({"metadata": [1]}, TypeError, "^metadata:"),
        ({"status": "sick"}, ValueError, "^status:"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, error, message):
    args = {"id": "a", "address": "h"} | kwargs
    with pytest.raises(error, match=message):
        Node(**args)


def test_equality_and_hash():
    assert Node("a", "h", 1) == Node("a", "h", 1)
    assert Node("a", "h", 1) != Node("a", "h", 2)
    assert len({Node("a", "h", 1), Node("a", "h", 1)}) == 1
