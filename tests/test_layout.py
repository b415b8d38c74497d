"""The package's layout: no import cycles and no upward arrow between layers (tools/import_graph.py), one
loading wing."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

from import_graph import LAYERS, cycles, import_graph, layer, upward_arrows  # noqa: E402


def test_no_import_cycles():
    edges = import_graph()
    assert "bns_export.loaders.spec" in edges and "bns_export.models" not in edges
    assert cycles(edges) == []


def test_the_runtime_needs_no_loader():
    edges = import_graph()
    assert not any(t.startswith("bns_export.loaders") for t in edges["bns_export.runtime.artifact"])


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_imports_point_down_the_layers():
    edges = import_graph()
    for m in edges:
        layer(m)  # every module belongs to a layer
    assert upward_arrows(edges) == []


def test_the_layer_check_finds_upward_arrows():
    assert LAYERS[0][0] == "" and ("contract",) in LAYERS and ("compile",) in LAYERS
    edges = {"bns_export.fields.field": {"bns_export.compile.build"}, "bns_export.compile.build": set()}
    assert upward_arrows(edges) == [("bns_export.fields.field", "bns_export.compile.build")]
    assert upward_arrows({"bns_export.loaders.spec": {"bns_export.solvers.table"}}) != []
