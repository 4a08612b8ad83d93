"""The package's layers point one way: no module of cmdm/ imports another that (directly or not) imports it back.

Read from the source with `ast` (nothing is imported), counting imports at any depth, inside functions too:
an import deferred into a function body hides a cycle from Python but not from a reader. The last test does
import, in a fresh interpreter: what the sweep's light processes load is a fact of running code."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cmdm"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: the cmdm modules it imports}. `from cmdm.a import b` counts as an import of cmdm.a.b when that
    is a module, else of cmdm.a; a package's __init__ counts only where it is imported itself."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:   # relative: resolve against this module's package
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in files else stem for alias in node.names]
            else:
                continue
            deps.update(t for t in targets if t in files and t != name)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each as a sorted list."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle(tmp_path):
    pkg = tmp_path / "cmdm"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from cmdm.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from cmdm import a\n")   # hidden in a function
    (pkg / "c.py").write_text("import cmdm.a\n")
    assert cycles(import_graph(pkg)) == [["cmdm.a", "cmdm.sub.b"]]


def test_no_import_cycle_in_cmdm():
    found = cycles(import_graph())
    assert not found, "import cycles (each group imports itself back): " + "; ".join(" <-> ".join(g) for g in found)


def test_the_sweeps_light_processes_import_no_torch_and_no_scipy():
    """Ray Train's controller unpickles the trial's report callback (cmdm.tuning.trial) and with it that module's
    imports; torch there costs seconds of every trial's start-up (bench/bench_trial_startup.py, `ctrl init`),
    scipy (the FID's sqrtm, reached through the doctor's metric directions) ~0.2 s in the controller and in Tune's
    trial actor. Likewise each node's preflight task (cmdm.preflight) on a cluster. A fresh interpreter: this
    one has both."""
    import subprocess
    import sys
    code = ("import sys, cmdm.tuning.trial, cmdm.tuning.sweep_file, cmdm.run_files, cmdm.atomic, cmdm.preflight\n"
            "print(sorted(m for m in ('torch', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing the report callback's module (cmdm.tuning.trial) imports {out.strip()}"
