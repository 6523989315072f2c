"""Packaging: every package of the tree is installed, under the ``ntkdyn`` namespace only."""

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _config():
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_listed():
    listed = set(_config()["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "ntkdyn").rglob("__init__.py")
    }
    on_disk |= {"ntkdyn.experiments"}
    assert listed == on_disk, f"pyproject packages differ from the tree: {sorted(listed ^ on_disk)}"


def test_experiments_install_under_ntkdyn():
    cfg = _config()
    assert all(name == "ntkdyn" or name.startswith("ntkdyn.") for name in cfg["packages"])
    assert cfg["package-dir"] == {"ntkdyn.experiments": "experiments"}
    assert (REPO / "experiments" / "__init__.py").exists()
    import ntkdyn.experiments.theory as theory

    assert Path(theory.__file__).resolve().parent == REPO / "experiments"
