"""Every third-party module the package imports is a declared dependency (or a guarded optional)."""

import ast
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# import name -> distribution name, where they differ
DIST = {"PIL": "pillow"}
# imported only inside a function, behind a clear error for users without the extra
OPTIONAL = {"torch": "bench", "neural_tangents": None}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_third_party_imports_are_declared():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=\[ ;]", d)[0].lower() for d in meta["dependencies"]}
    files = [*(REPO / "ntkdyn").rglob("*.py"), *(REPO / "experiments").rglob("*.py")]
    used = set().union(*(_imports(f) for f in files))
    third = {m for m in used if m not in sys.stdlib_module_names and m not in ("ntkdyn",)}
    missing = sorted(
        m for m in third if DIST.get(m, m).lower() not in declared and m not in OPTIONAL
    )
    assert not missing, f"imported but not declared in pyproject dependencies: {missing}"
