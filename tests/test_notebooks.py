"""Every notebook in notebooks/ is stored executed (small outputs) and still runs top to bottom.

``python notebooks/execute.py`` re-executes them in place after a change; these tests check that the
stored copies are complete (every code cell ran, no error output, small) and run them again.
"""

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def test_notebooks_exist():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


#: TeX a notebook's text could hold: the offline site loads no MathJax, so it would show raw.
TEX = __import__("re").compile(r"\$[^$\n]+\$|\\\(|\\\[|\\begin\{")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_text_holds_no_tex(path):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    found = [(i, m.group()) for i, c in enumerate(nb.cells) if c.cell_type == "markdown"
             for m in TEX.finditer(c.source)]  # fmt: skip
    assert not found, f"{path.name}: TeX in markdown cells {found}; write formulas in Unicode"


MAX_KB = 400  # a stored notebook, outputs included


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_executed(path):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    unrun = [i for i, c in enumerate(code) if not c.execution_count]
    assert not unrun, f"{path.name}: code cells {unrun} were not run; python notebooks/execute.py"
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), f"{path.name}: cells ran out of order"
    errors = [i for i, c in enumerate(code) for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: cells {errors} stored with an error"
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs), (
        f"{path.name}: no figure stored"
    )
    size = path.stat().st_size / 1024
    assert size < MAX_KB, f"{path.name}: {size:.0f} KB stored, more than {MAX_KB} KB"


@pytest.mark.e2e
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("NTKDYN_NOTEBOOK_OUT", str(tmp_path))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError naming the failing cell
