"""The IR: the verifier catches broken graphs, and the JSON form round-trips."""

import json

import pytest

from conftest import lowered
from monologue_compile.ir import Graph, IRError, Node, TensorType, verify
from monologue_compile.passes import run_pipeline


def _tiny_graph(nodes):
    return Graph({"ids": TensorType((1, "T"), "i32")}, {}, nodes, [nodes[-1].name] if nodes else [])


def test_verifier_rejects_broken_graphs():
    t = TensorType((1, "T", 4))
    with pytest.raises(IRError, match="before it is defined"):
        verify(_tiny_graph([Node("a", "unary", ["nope"], {"fn": "neg"}, t)]))
    with pytest.raises(IRError, match="not in the IR op table"):
        verify(_tiny_graph([Node("a", "frobnicate", ["ids"], {}, t)]))
    with pytest.raises(IRError, match="defined twice"):
        verify(_tiny_graph([Node("a", "unary", ["ids"], {"fn": "neg"}, t), Node("a", "unary", ["ids"], {"fn": "neg"}, t)]))
    with pytest.raises(IRError, match="sequence axis"):
        verify(_tiny_graph([Node("a", "softmax", ["ids"], {"axis": 1}, t)]))
    with pytest.raises(IRError, match="more than one sequence"):
        verify(_tiny_graph([Node("a", "unary", ["ids"], {"fn": "neg"}, TensorType((1, "T", "T")))]))
    with pytest.raises(IRError, match="not JSON"):
        verify(_tiny_graph([Node("a", "unary", ["ids"], {"fn": object()}, t)]))


def test_json_round_trip_and_dump(tiny_export):
    g, _ = run_pipeline(lowered(*tiny_export), "int8")
    d = json.loads(json.dumps(g.to_json()))
    data = {k: w.data for k, w in g.weights.items()}
    back = verify(Graph.from_json(d, data))
    assert back.dump() == g.dump()
    assert back.to_json() == g.to_json()
    text = g.dump()
    assert "%ids: (1, T) i32" in text and "attention(" in text and "quant=int8" in text
