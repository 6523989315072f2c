"""Which way the imports go (ARCHITECTURE.md): no private name crosses a module, in the package, the
experiments, the benchmarks and the notebooks alike, and the layers import only downwards."""

from __future__ import annotations

import ast
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The one private module whose names other modules may import (shared checks).
SHARED_PRIVATE = "ntkdyn._checks"


def _sources() -> list[tuple[str, str]]:
    """(where, Python source) of every module, benchmark and notebook code cell."""
    out = []
    for root in ("ntkdyn", "experiments", "benchmarks"):
        for f in sorted((REPO / root).rglob("*.py")):
            out.append((str(f.relative_to(REPO)), f.read_text()))
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        for i, cell in enumerate(cells):
            if cell["cell_type"] == "code":
                src = "".join(cell["source"])
                # IPython magics and shell escapes are not Python
                src = "\n".join(
                    ln for ln in src.splitlines() if not ln.lstrip().startswith(("%", "!"))
                )
                out.append((f"{nb.relative_to(REPO)} cell {i}", src))
    return out


def _private_imports(source: str) -> list[str]:
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ntkdyn"):
            if node.module == SHARED_PRIVATE:
                continue
            if any(part.startswith("_") for part in node.module.split(".")):
                bad.append(f"from {node.module} import …")
            private = [
                a.name for a in node.names if a.name.startswith("_") and not a.name.endswith("__")
            ]
            if private:
                bad.append(f"from {node.module} import {private}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if (
                    a.name.startswith("ntkdyn")
                    and a.name != SHARED_PRIVATE
                    and any(part.startswith("_") for part in a.name.split("."))
                ):
                    bad.append(f"import {a.name}")
    return bad


def test_the_private_rule_finds_a_crossing():
    assert _private_imports("from ntkdyn.tangent.spectrum import _signed_jvps") != []
    assert _private_imports("import ntkdyn._secret") != []
    assert _private_imports("from ntkdyn._checks import check_x") == []
    assert _private_imports("from ntkdyn.data import load_dataset\nimport numpy._core") == []


def test_no_private_name_crosses_a_module():
    bad = [f"{where}: {b}" for where, src in _sources() for b in _private_imports(src)]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def _ours(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ntkdyn"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("ntkdyn")}
    return names


def test_nothing_but_the_cli_imports_the_experiments():
    bad = [
        f"{f.relative_to(REPO)}: {m}"
        for f in sorted((REPO / "ntkdyn").rglob("*.py"))
        if f.name != "cli.py"
        for m in _ours(f)
        if m.startswith("ntkdyn.experiments")
    ]
    assert not bad, f"library modules that import an experiment: {bad}"


def _runs_a_command(source: str) -> bool:
    return "main([" in source or "subprocess" in source or "ntkdyn.cli" in source


def test_every_test_that_runs_a_command_is_marked_e2e():
    """The `e2e` marker means "runs an ntkdyn command as a user would" (pyproject.toml)."""
    unmarked = []
    for f in sorted((REPO / "tests").glob("test_*.py")):
        if f.name == "test_layering.py":
            continue
        src = f.read_text()
        for node in ast.parse(src).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                marks = [ast.unparse(d) for d in node.decorator_list]
                runs = _runs_a_command(ast.get_source_segment(src, node) or "")
                if runs and not any("mark.e2e" in m for m in marks):
                    unmarked.append(f"{f.name}::{node.name}")
    assert not unmarked, f"tests that run a command without @pytest.mark.e2e: {unmarked}"
