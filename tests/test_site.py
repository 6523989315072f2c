"""The documentation site: it builds with ``mkdocs build --strict``, offline, every internal link
and anchor resolves, and the API reference has an entry for every name ``ntkdyn`` exports.

The site is built once per test session (and once across pytest-xdist workers, under a file lock)
into a temporary folder; the browser tests (tests/test_browser.py) load the same build.
"""

from __future__ import annotations

import fcntl
import importlib
import importlib.util
import inspect
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS_TOOLS = ("mkdocs", "material", "mkdocstrings_handlers.python", "mkdocs_jupyter")
EXTERNAL = ("http:", "https:", "//", "mailto:", "data:", "javascript:", "blob:")


def docs_tools_missing() -> str | None:
    """Why the site cannot be built here (a missing package of the ``docs`` extra), or None."""
    for name in DOCS_TOOLS:
        if importlib.util.find_spec(name.split(".")[0]) is None:
            return f"{name} is not installed (pip install -e '.[docs]')"
    return None


def build_site(tmp_path_factory) -> Path:
    """Build the site once for every worker of the session; return its folder."""
    reason = docs_tools_missing()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of one session
    site, lock = root / "site", root / "site.lock"
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if not (site / "index.html").is_file():
            env = dict(os.environ, NO_MKDOCS_2_WARNING="1", JAX_PLATFORMS="cpu")
            env.pop("JAX_ENABLE_X64", None)
            done = subprocess.run(
                [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
            )
            assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stderr[-4000:]}"
    return site


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    return build_site(tmp_path_factory)


class _Page(HTMLParser):
    """The ids, links (href/src) and external resources (<script>/<link>/...) of one page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[tuple[str, str]] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("name"):
            self.ids.add(attrs["name"])
        for key in ("href", "src"):
            value = attrs.get(key)
            if value is None:
                continue
            self.links.append((tag, value))
            if tag in ("script", "link", "img", "iframe", "source") and value.startswith(EXTERNAL):
                if not value.startswith("data:"):
                    self.external.append(f"<{tag} {key}={value!r}>")


def _pages(site: Path) -> dict[Path, _Page]:
    parsed = {}
    for path in sorted(site.rglob("*.html")):
        page = _Page()
        page.feed(path.read_text(encoding="utf-8", errors="replace"))
        parsed[path] = page
    return parsed


@pytest.fixture(scope="module")
def pages(site):
    return _pages(site)


@pytest.mark.e2e
def test_every_internal_link_and_anchor_resolves(site, pages):
    broken = []
    for path, page in pages.items():
        for tag, link in page.links:
            if not link or link.startswith(EXTERNAL):
                continue
            parts = urlsplit(link)
            base = site if parts.path.startswith("/") else path.parent  # 404.html: from the root
            target = path if not parts.path else (base / unquote(parts.path).lstrip("/")).resolve()
            if target.is_dir():
                target = target / "index.html"
            where = f"{path.relative_to(site)}: <{tag}> {link!r}"
            if not target.is_file():
                broken.append(f"{where}: no file {target}")
            elif parts.fragment and target.suffix == ".html" and target in pages:
                if unquote(parts.fragment) not in pages[target].ids:
                    broken.append(f"{where}: no anchor #{parts.fragment}")
    assert not broken, f"{len(broken)} broken internal links:\n" + "\n".join(broken[:40])


@pytest.mark.e2e
def test_the_site_needs_no_network(site, pages):
    external = [f"{p.relative_to(site)}: {e}" for p, page in pages.items() for e in page.external]
    assert not external, "resources from other hosts:\n" + "\n".join(external[:20])
    for path in pages:
        text = path.read_text(encoding="utf-8", errors="replace")
        for host in ("fonts.googleapis", "fonts.gstatic", "cdnjs.", "cdn.jsdelivr", "unpkg.com"):
            assert host not in text, f"{path.relative_to(site)} refers to {host}"


def _documented_ids(pages, site) -> set[str]:
    return {i for path, page in pages.items() if path.parent == site / "api" for i in page.ids}


def _exported(package) -> list[tuple[str, object]]:
    names = getattr(package, "__all__", None)
    if names is None:
        names = [n for n, o in vars(package).items() if not n.startswith("_")]
    return [(n, getattr(package, n)) for n in names if not inspect.ismodule(getattr(package, n))]


@pytest.mark.e2e
def test_the_api_reference_covers_every_exported_name(site, pages):
    import pkgutil

    import ntkdyn

    ids = _documented_ids(pages, site)
    packages = [ntkdyn] + [
        importlib.import_module(m.name)
        for m in pkgutil.walk_packages(ntkdyn.__path__, "ntkdyn.")
        if m.ispkg and not any(p.startswith("_") for p in m.name.split("."))
    ]
    missing = []
    for package in packages:
        for name, obj in _exported(package):
            defined = inspect.isfunction(obj) or inspect.isclass(obj)
            if defined and getattr(obj, "__name__", None) == name:
                # documented where it is defined (a function or class of ours)
                if (
                    str(obj.__module__).startswith("ntkdyn")
                    and obj.__module__.split(".")[-1][0] != "_"
                ):
                    ok = f"{obj.__module__}.{name}" in ids
                else:
                    continue  # a name re-exported from another library
            else:  # a constant or an alias: an entry in some module
                ok = any(i.endswith(f".{name}") for i in ids)
            if not ok:
                missing.append(f"{package.__name__}.{name}")
    assert not missing, f"names without an API entry: {missing}"
    # the index links every name of ntkdyn.__all__
    index = (site / "api" / "index.html").read_text()
    assert all(f"<code>{name}</code>" in index for name in ntkdyn.__all__)


@pytest.mark.e2e
def test_the_site_holds_every_part(site):
    for notebook in sorted((REPO / "notebooks").glob("*.ipynb")):
        html = (site / "notebooks" / f"{notebook.stem}.html").read_text()
        assert "jp-OutputArea" in html or "output_area" in html, f"{notebook.name}: no outputs"
    for result in sorted((REPO / "docs" / "results").glob("*.md")):
        name = "index.html" if result.name == "README.md" else f"{result.stem}.html"
        assert (site / "results" / name).is_file(), result.name
    benchmarks = (site / "benchmarks.html").read_text()
    first = (REPO / "benchmarks" / "RESULTS.md").read_text().splitlines()[0].lstrip("# ").strip()
    assert first in benchmarks
    home = (site / "index.html").read_text()
    for figure in sorted((REPO / "docs" / "figures").glob("*.png")):
        assert f"figures/{figure.name}" in home, f"the gallery misses {figure.name}"
    assert 'id="slider-data"' in (site / "theory.html").read_text()
    assert 'src="theory.html"' in (site / "slider.html").read_text()
    assert (site / "reliability.html").is_file() == (REPO / "docs" / "reliability.md").is_file()


def test_the_navigation_drops_a_missing_page():
    spec = importlib.util.spec_from_file_location("site_hooks", REPO / "docs" / "hooks" / "site.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    nav = [{"Home": "index.md"}, {"Reliability": "reliability.md"}, {"More": ["reliability.md"]}]
    assert hooks.drop_from_nav(nav, "reliability.md") == [{"Home": "index.md"}, {"More": []}]
