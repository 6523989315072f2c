"""Execute every notebook in place and store it with its outputs, so a reader sees the figures.

Run after changing a notebook or the API it uses::

    python notebooks/execute.py            # all notebooks
    python notebooks/execute.py 01_theory  # one

Figures are stored as PNG at a modest resolution; any single output above ``MAX_OUTPUT_KB`` is
replaced by a note, so the stored notebooks stay small. Run outputs (run directories) go to a
temporary folder, never into the repository. ``tests/test_notebooks.py`` re-executes every notebook
and checks the stored copies are complete and small.
"""

from __future__ import annotations

import base64
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAX_OUTPUT_KB = 120


def _size_kb(output) -> float:
    data = output.get("data", {})
    total = sum(len(v) if isinstance(v, str) else len("".join(v)) for v in data.values())
    total += len("".join(output.get("text", "")))
    return total / 1024


def execute(path: Path) -> None:
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NTKDYN_NOTEBOOK_OUT"] = tmp
        os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        client = nbclient.NotebookClient(
            nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": tmp}}
        )
        client.execute()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.outputs:
            if _size_kb(output) > MAX_OUTPUT_KB:
                output = nbformat.v4.new_output(
                    "stream",
                    name="stdout",
                    text=f"[output of {_size_kb(output):.0f} KB not stored]\n",
                )
            kept.append(output)
        cell.outputs = kept
    nbformat.write(nb, path)
    pngs = sum(
        len(base64.b64decode(o["data"]["image/png"]))
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    )
    print(f"{path.name}: executed, {pngs / 1024:.0f} KB of figures stored", file=sys.stderr)


def main(names: list[str]) -> int:
    paths = sorted(HERE.glob("*.ipynb"))
    if names:
        paths = [p for p in paths if p.stem in names or p.name in names]
    for path in paths:
        execute(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
