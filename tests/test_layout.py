"""The package's layout: no import cycles (tools/import_graph.py), one loading wing."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

from import_graph import cycles, import_graph  # noqa: E402


def test_no_import_cycles():
    edges = import_graph()
    assert "bns_export.loaders.spec" in edges and "bns_export.models" not in edges
    assert cycles(edges) == []


def test_the_runtime_needs_no_loader():
    edges = import_graph()
    assert not any(t.startswith("bns_export.loaders") for t in edges["bns_export.runtime.artifact"])


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
