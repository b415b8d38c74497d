"""The package's import graph (module-level and in-function imports), its cycles and its layers.

python tools/import_graph.py        # prints modules, arrows, every cycle and every upward arrow; exit 1 if any

The layers read as the pipeline, lowest first; a module may import its own package and lower layers only.
The scripts in tools/ import each other by name; their graph must have no cycle either.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "bns_export"
TOOLS = Path(__file__).resolve().parent


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the package."""
    out = {}
    for p in root.rglob("*.py"):
        name = ".".join(p.relative_to(root.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its file (relative imports resolved)."""
    mods = modules(root)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = pkg
                for _ in range(max(0, node.level - 1)):
                    base = base.rsplit(".", 1)[0]
                mod = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names]
            else:
                continue
            edges[m].update(t for t in targets if t in mods and t != m)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by depth-first search (a package importing its own submodules does not count)."""
    found, state = [], {}

    def visit(u: str, stack: list[str]) -> None:
        state[u] = "open"
        stack.append(u)
        for v in sorted(edges[u]):
            if v.startswith(u + "."):
                continue
            if state.get(v) == "open":
                found.append(stack[stack.index(v) :] + [v])
            elif v not in state:
                visit(v, stack)
        stack.pop()
        state[u] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [])
    return found


#: the package's layers, lowest first: foundations; the artifact contract (torch-free records); fields and
#: backends (the two ends: the model's vector field, the runtimes' loaders and runners) and ground truth; the
#: model loaders, solvers and artifact runtime; evaluation, distillation and the diffusers scheduler; the
#: compiled graph with its validation; the demo; the CLI; its entry point
LAYERS = (
    ("", "errors", "checks", "devicespec", "interrupts", "fileio", "devices", "parallel", "metrics", "images", "sizes"),
    ("contract",),
    ("fields", "backends", "groundtruth", "reports"),
    ("loaders", "solvers", "runtime"),
    ("evaluate", "distill", "diffusers", "serve"),
    ("compile",),
    ("demo",),
    ("cli",),
    ("entry",),
    ("__main__",),
)


def layer(module: str) -> int:
    """The layer of a package module, by its first component below bns_export ("" for the package itself)."""
    part = module.split(".")[1] if "." in module else ""
    for i, names in enumerate(LAYERS):
        if part in names:
            return i
    raise KeyError(f"{module} is in no layer: add its package to LAYERS")


def upward_arrows(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports that point up: into a higher layer, or sideways into another package of the same layer
    (the foundations, single modules, may use each other; the cycle check keeps them acyclic)."""

    def top(m: str) -> str:
        return m.split(".")[1] if "." in m else ""

    def up(a: str, b: str) -> bool:
        return layer(b) > layer(a) or (layer(b) == layer(a) > 0 and top(a) != top(b))

    return sorted((a, b) for a, bs in edges.items() for b in bs if up(a, b))


def tool_graph(folder: Path = TOOLS) -> dict[str, set[str]]:
    """Script -> the other scripts of tools/ it imports by name (anywhere in its file)."""
    names = {p.stem for p in folder.glob("*.py")}
    edges: dict[str, set[str]] = {n: set() for n in names}
    for n in names:
        for node in ast.walk(ast.parse((folder / f"{n}.py").read_text())):
            if isinstance(node, ast.Import):
                edges[n].update(a.name for a in node.names if a.name in names and a.name != n)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module in names and node.module != n:
                edges[n].add(node.module)
    return edges


def main() -> None:
    edges = import_graph()
    found, up = cycles(edges), upward_arrows(edges)
    print(
        f"{len(edges)} modules, {sum(map(len, edges.values()))} import arrows, {len(LAYERS)} layers, "
        f"{len(found)} cycles, {len(up)} upward arrows"
    )
    for c in found:
        print("  cycle: " + " -> ".join(c))
    for a, b in up:
        print(f"  upward: {a} -> {b}")
    tools = tool_graph()
    tool_cycles = cycles(tools)
    print(f"tools: {len(tools)} scripts, {sum(map(len, tools.values()))} import arrows, {len(tool_cycles)} cycles")
    for c in tool_cycles:
        print("  cycle: " + " -> ".join(c))
    sys.exit(1 if found or up or tool_cycles else 0)


if __name__ == "__main__":
    main()
