"""The code's shape: no import cycles (module-level or deferred), imports only at module top
inside graphcore, and no module past ~650 lines."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = {"graphcore": "graphcore", "models": "graphcore_models", "tools": "graphcore_tools"}   # folder: import name


def _modules():
    mods = {}
    for folder, pkg in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            name = ".".join((pkg, *path.relative_to(ROOT / folder).with_suffix("").parts))
            mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(mods):
    """{module: {(imported module, at module top)}} for imports of the project's own modules."""
    out = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        is_pkg = path.name == "__init__.py"
        top = set(map(id, tree.body))
        for stmt in tree.body:          # a guarded import at module level (try/except) is at the top too
            if isinstance(stmt, ast.Try):
                top.update(map(id, stmt.body))
        edges = out.setdefault(name, set())
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                if t in mods and t != name:
                    edges.add((t, id(node) in top))
    return out


def _cycles(graph):
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v, counter=[0]):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))
    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    mods = _modules()
    edges = _imports(mods)
    # a package's __init__ re-exports its modules; edges *to* a package are to its public API
    graph = {m: {t for t, _ in ts if t not in PACKAGES.values()} for m, ts in edges.items()}
    assert not _cycles(graph), f"import cycles: {_cycles(graph)}"


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_graphcore_imports_at_module_top():
    """Deferred imports hide cycles; inside graphcore every import of its own modules is at the top
    (graphcore.testing may import lazily what needs hypothesis; the package __init__'s __getattr__
    imports graphcore.testing on demand)."""
    edges = _imports(_modules())
    deferred = sorted((m, t) for m, ts in edges.items() if m.startswith("graphcore.")
                      for t, top in ts if not top and m != "graphcore")
    assert not deferred, f"imports inside functions: {deferred}"


def test_no_module_is_too_long():
    long = {str(p.relative_to(ROOT)): n for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 650}
    assert not long, f"modules over 650 lines (split them by concern): {long}"


def test_every_package_is_installed_under_its_own_name():
    """pyproject.toml lists the packages (models/ and tools/ install as graphcore_models and
    graphcore_tools, so that no `models` or `tools` lands in site-packages): a new subpackage
    must be listed, or an install would lack it."""
    tomllib = pytest.importorskip("tomllib")     # Python 3.11+
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert conf["package-dir"] == {v: k for k, v in PACKAGES.items()}
    found = {".".join((pkg, *p.parent.relative_to(ROOT / folder).parts)) for folder, pkg in PACKAGES.items()
             for p in (ROOT / folder).rglob("__init__.py")}
    assert set(conf["packages"]) == found


def test_kernel_cache_folder_follows_every_source(tmp_path):
    """numba checks only a kernel's own file: the cache folder is named after all of graphcore's
    sources, so editing a helper another module's kernels inline gives them a fresh cache."""
    import shutil
    import subprocess
    import sys
    pkg = tmp_path / "graphcore"
    shutil.copytree(ROOT / "graphcore", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    code = "import importlib.util as u, sys; s = u.spec_from_file_location('c', sys.argv[1]); " \
           "m = u.module_from_spec(s); s.loader.exec_module(m); print(m.cache_dir())"

    def folder():
        r = subprocess.run([sys.executable, "-c", code, str(pkg / "_cache.py")], capture_output=True, text=True,
                           timeout=120, env={"GRAPHCORE_CACHE_DIR": str(tmp_path / "c"), "PATH": ""})
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()
    before = folder()
    assert before.startswith(str(tmp_path / "c" / "numba-")) and folder() == before
    with open(pkg / "ops" / "common.py", "a") as f:
        f.write("\n# an edit to a helper module\n")
    assert folder() != before
