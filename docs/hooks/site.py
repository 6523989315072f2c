"""MkDocs hooks of the documentation site: the parts generated from the repository at build time.

* the notebooks of ``notebooks/`` join the site as they are stored (outputs included, never run);
* ``theory.html``, the interactive s₁ slider, is computed with the paper's settings
  (:class:`ntkdyn.experiments.theory.Config`) by :mod:`ntkdyn.slider`, as ``ntkdyn theory`` does;
* the home page's gallery lists every ``docs/figures/*.png``;
* the API reference pages render every public module of ``ntkdyn`` (found by walking the
  package, so a new module appears without editing the site), and the index links every name of
  ``ntkdyn.__all__`` to its entry: a name without one fails the strict build;
* the "Reliability" page stays in the navigation only while ``docs/reliability.md`` exists.
"""

from __future__ import annotations

import html
import importlib
import inspect
import json
import pkgutil
import re
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

REPO = Path(__file__).resolve().parents[2]

#: API pages: page → (title, introduction, module prefixes). A module goes to the first page with a
#: matching prefix; modules that match none go to the index page.
API_PAGES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "theory": (
        "Theory",
        "Feature systems (U, s, λ), their flows, fixed points and the starvation matrix.",
        (
            "ntkdyn.systems",
            "ntkdyn.dynamics",
            "ntkdyn.fixed_points",
            "ntkdyn.analytic",
            "ntkdyn.slider",
        ),
    ),
    "objectives": (
        "Objectives, losses and metrics",
        "A base loss and penalties that compose; the one conversion to the theory's λ.",
        ("ntkdyn.objectives", "ntkdyn.losses", "ntkdyn.metrics", "ntkdyn.boundary"),
    ),
    "tangent": (
        "Tangent features",
        "Φ, the empirical NTK, the spectrum of YΦ, feature responses; the linearized model.",
        ("ntkdyn.tangent", "ntkdyn.linalg", "ntkdyn.linearized"),
    ),
    "analysis": (
        "The journey",
        "Spectrum → feature system → prediction, measured beside real training.",
        ("ntkdyn.analysis", "ntkdyn.journey"),
    ),
    "models": (
        "Models",
        "The model registry, the paper's networks, frozen batch statistics.",
        ("ntkdyn.models",),
    ),
    "data": ("Data", "The dataset registry and the paper's datasets.", ("ntkdyn.data",)),
    "train": (
        "Training",
        "The training loops, their hooks, restarts, checkpoints.",
        ("ntkdyn.train", "ntkdyn.xla"),
    ),
    "runs": (
        "Run files and reports",
        "The one writer of run folders, tables and reports.",
        ("ntkdyn.runs",),
    ),
    "plots": ("Plots", "Figures from arrays.", ("ntkdyn.plots",)),
    "settings": (
        "Settings and errors",
        "Nested settings with dotted flags; the user's errors.",
        ("ntkdyn.settings", "ntkdyn.errors"),
    ),
    "commands": (
        "Commands and extras",
        "The command line and optional cross-checks.",
        ("ntkdyn.cli", "ntkdyn.commands", "ntkdyn.contrib"),
    ),
}


def _public_modules() -> list[tuple[str, bool]]:
    """(name, is_package) of every module of ``ntkdyn`` without a private part, sorted."""
    import ntkdyn

    found = [("ntkdyn", True)]
    for info in pkgutil.walk_packages(ntkdyn.__path__, "ntkdyn."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            found.append((info.name, info.ispkg))
    return sorted(found)


def _page_of(module: str) -> str:
    for page, (_, _, prefixes) in API_PAGES.items():
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return page
    return "index"


def _module_block(module: str, is_package: bool) -> str:
    # A package's __init__ mostly re-exports: its docstring and what it defines itself; its modules
    # are documented on their own.
    if not is_package:
        return f"::: {module}\n"
    mod = importlib.import_module(module)
    own = [
        name
        for name, obj in vars(mod).items()
        if not name.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and obj.__module__ == module
    ]
    return f"::: {module}\n    options:\n      members: {json.dumps(own) if own else 'false'}\n"


def _home(name: str) -> str:
    """The module whose page documents ``ntkdyn.<name>`` (where it is defined, not re-exported)."""
    import ntkdyn

    obj = getattr(ntkdyn, name)
    module = getattr(obj, "__module__", None)
    defined = inspect.isfunction(obj) or inspect.isclass(obj)
    if defined and obj.__name__ == name and str(module).startswith("ntkdyn."):
        return module
    for candidate, is_package in _public_modules():  # a constant or an alias: who exports it
        if not is_package and name in getattr(importlib.import_module(candidate), "__all__", ()):
            return candidate
    raise RuntimeError(f"ntkdyn.{name}: no module of ntkdyn defines or exports it")


def _summary(name: str) -> str:
    import ntkdyn

    obj = getattr(ntkdyn, name)
    doc = inspect.getdoc(obj) if inspect.isfunction(obj) or inspect.isclass(obj) else None
    line = (doc or "").strip().split("\n")[0]
    return html.escape(line).replace("|", "\\|")


def _api_pages() -> dict[str, str]:
    """The Markdown of every API page, ``api/<page>.md``."""
    import ntkdyn

    blocks: dict[str, list[str]] = {page: [] for page in [*API_PAGES, "index"]}
    for module, is_package in _public_modules():
        if module != "ntkdyn":
            blocks[_page_of(module)].append(_module_block(module, is_package))
    pages = {}
    for page, (title, intro, _) in API_PAGES.items():
        pages[page] = f"# {title}\n\n{intro}\n\n" + "\n".join(blocks[page])
    rows = "\n".join(
        f"| [`{name}`][{_home(name)}.{name}] | `{_home(name)}` | {_summary(name)} |"
        for name in ntkdyn.__all__
    )
    others = "\n".join(blocks["index"])
    pages["index"] = "\n".join(
        [
            "# API reference",
            "",
            "Generated from the docstrings. Every name below is importable as `ntkdyn.<name>`; "
            "its entry is on the page of the module that defines it.",
            "",
            _module_block("ntkdyn", True),
            "## Every name of `ntkdyn`",
            "",
            "| name | module | summary |",
            "|---|---|---|",
            rows,
            "",
            *(["## Other modules", "", others] if others else []),
        ]
    )
    return pages


def _slider_html() -> str:
    """The slider page at the paper's settings (the same page ``ntkdyn theory`` writes)."""
    import jax
    import numpy as np
    from ntkdyn.experiments.theory import Config

    from ntkdyn.slider import slider_data, slider_page

    jax.config.update("jax_enable_x64", True)  # the theory's numbers, in float64
    c = Config()
    data = slider_data(
        np.linspace(*c.slider_grid[:2], int(c.slider_grid[2])),
        s2=c.s2,
        delta=c.delta,
        lam_ce=c.lam_ce,
        lam_sd=c.lam_sd,
        eta=c.eta,
        num_steps=c.steps,
        save_every=c.save_every,
    )
    return slider_page(data)


def drop_from_nav(nav: list, target: str) -> list:
    """``nav`` without the entries that point at ``target``."""
    out = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if value == target:
            continue
        if isinstance(item, dict) and isinstance(value, list):
            item = {next(iter(item)): drop_from_nav(value, target)}
        out.append(item)
    return out


def on_config(config):
    if not (Path(config.docs_dir) / "reliability.md").is_file():
        config.nav = drop_from_nav(config.nav, "reliability.md")
    return config


@event_priority(50)  # before mkdocs-jupyter's on_files, which turns .ipynb files into pages
def on_files(files, config):
    for notebook in sorted((REPO / "notebooks").glob("*.ipynb")):
        files.append(
            File(
                f"notebooks/{notebook.name}",
                src_dir=str(REPO),
                dest_dir=config.site_dir,
                use_directory_urls=config.use_directory_urls,
            )
        )
    for page, text in _api_pages().items():
        files.append(File.generated(config, f"api/{page}.md", content=text))
    files.append(File.generated(config, "theory.html", content=_slider_html()))
    return files


DIR_LINK = re.compile(r"\]\(((?![a-z]+:)[^)#\s]*/)\)")


def _dir_links(markdown: str, page) -> str:
    """Links to a run folder (``runs/x/``), which a code host lists, go to its ``summary.md``."""
    base = Path(page.file.abs_src_path).parent

    def fix(match: re.Match) -> str:
        folder = match.group(1)
        for name in ("summary.md", "README.md", "index.md"):
            if (base / folder / name).is_file():
                return f"]({folder}{name})"
        return match.group(0)

    return DIR_LINK.sub(fix, markdown)


def on_page_markdown(markdown, page, config, files):
    if page.file.abs_src_path:
        markdown = _dir_links(markdown, page)
    if page.file.src_uri != "index.md":
        return markdown
    figures = sorted((Path(config.docs_dir) / "figures").glob("*.png"))
    cards = "\n".join(
        f'<figure markdown="span">\n[![{f.stem}](figures/{f.name}){{ loading=lazy }}]'
        f"(figures/{f.name})\n<figcaption>{f.stem.replace('_', ' ')}</figcaption>\n</figure>"
        for f in figures
    )
    return markdown.replace("<!-- gallery -->", f'<div class="gallery" markdown>\n{cards}\n</div>')


# The notebook template loads MathJax and, for Mermaid diagrams, a module from a CDN; the site stays
# offline, so both are dropped: the notebooks write formulas in Unicode (tests/test_notebooks.py
# checks they hold no TeX) and hold no diagram.
EMPTY_SCRIPT = re.compile(r'<script[^>]*\ssrc=""[^>]*>\s*</script>')
CDN_MODULE = re.compile(
    r"<script[^>]*>(?:(?!</script>).)*cdnjs\.(?:(?!</script>).)*</script>", re.S
)


def on_post_page(output, page, config):
    if not page.file.src_uri.endswith(".ipynb"):
        return output
    return CDN_MODULE.sub("", EMPTY_SCRIPT.sub("", output))
