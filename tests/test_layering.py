"""Layers point one way: the import graph of the package has no cycle, not even through imports
inside functions (which would only dodge one), and `jaxviz.models` holds architectures only."""

import ast
import os
import pathlib
import subprocess
import sys

import jaxviz

PACKAGE_DIR = pathlib.Path(jaxviz.__file__).parent

#: What `jaxviz.models` may not import: training, data, files, provisioning of trained weights (and
#: everything above them).
NOT_BELOW_MODELS = ("jaxviz.io", "jaxviz.train", "jaxviz.data", "jaxviz.pretrained", "jaxviz.demo", "jaxviz.cli")
#: The bottom layer: helpers every module may import, importing nothing from jaxviz themselves.
BOTTOM = ("jaxviz._util",)


def _modules() -> dict[str, pathlib.Path]:
    """`{dotted name: file}` of every module of the package (`jaxviz.models` for its `__init__`)."""
    out = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The package module `name` refers to (itself, or the closest enclosing module), or None."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> dict[str, list[int]]:
    """`{imported jaxviz module: [line numbers]}` for every import statement in `module`, at module
    level or inside functions alike. `from P import x` counts as importing `P.x` when that is a
    module, else `P`. Parent packages that Python initialises implicitly are not counted: they are
    the package structure, not a dependency the code chose."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    out: dict[str, list[int]] = {}
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in MODULES else prefix for a in node.names]
        for t in targets:
            if t.split(".")[0] != "jaxviz":
                continue
            r = _resolve(t)
            if r is not None and r != module:
                out.setdefault(r, []).append(node.lineno)
    return out


def test_the_import_graph_has_no_cycle():
    graph = {m: imports_of(m) for m in MODULES}
    # Depth-first search for a back edge; report the whole cycle with the lines that make it.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for dep in graph[m]:
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                edges = [f"{a} (line {graph[a][b][0]}) -> {b}" for a, b in zip(cycle, cycle[1:])]
                raise AssertionError("import cycle: " + "; ".join(edges))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    # The check sees real edges (a vacuous graph would pass anything).
    assert "jaxviz.models.digits" in graph["jaxviz.pretrained"] and "jaxviz.io" in graph["jaxviz.pretrained"]


def test_models_hold_architectures_only():
    offending = {}
    for m in MODULES:
        if m == "jaxviz.models" or m.startswith("jaxviz.models."):
            bad = {dep: lines for dep, lines in imports_of(m).items()
                   if dep.startswith(NOT_BELOW_MODELS) or not (dep.startswith("jaxviz.models") or dep in BOTTOM)}
            if bad:
                offending[m] = bad
    assert not offending, f"jaxviz.models imports from layers above it: {offending}"
    for m in BOTTOM:
        assert m in MODULES and not imports_of(m), f"{m} is the bottom layer; it imports {imports_of(m)}"


def test_cycle_detection_on_a_known_cycle(tmp_path, monkeypatch):
    # The checker itself: a function-level import that closes a cycle is found.
    a = tmp_path / "jaxviz" / "a.py"
    b = tmp_path / "jaxviz" / "b.py"
    a.parent.mkdir()
    a.write_text("from jaxviz import b\n")
    b.write_text("def f():\n    from jaxviz.a import x\n")
    monkeypatch.setitem(MODULES, "jaxviz.a", a)
    monkeypatch.setitem(MODULES, "jaxviz.b", b)
    assert imports_of("jaxviz.a") == {"jaxviz.b": [1]} and imports_of("jaxviz.b") == {"jaxviz.a": [2]}
    try:
        test_the_import_graph_has_no_cycle()
    except AssertionError as e:
        assert "jaxviz.a" in str(e) and "jaxviz.b" in str(e)
    else:
        raise AssertionError("the cycle jaxviz.a <-> jaxviz.b was not found")


def test_every_module_imports_in_a_fresh_interpreter():
    # Whatever module a user imports first, the package initialises (forwards and backwards: the
    # modules that `jaxviz/__init__` does not import are imported after it, in both orders).
    names = sorted(m for m in MODULES if not m.endswith("__main__"))
    script = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    for order in (names, names[::-1]):
        proc = subprocess.run([sys.executable, "-c", script, *order], capture_output=True, text=True, env=env,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
