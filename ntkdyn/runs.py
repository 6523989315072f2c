"""Run directories: the one place that writes files, and the reports written into them.

Every command writes one directory (a fixed layout): the resolved config (``config.json``), metrics over
time (``metrics.jsonl``), final results (``results.json``), figures (PNG and PDF) and a short
Markdown summary (``summary.md``). Every file is written atomically — to a temporary file in the
same directory, then ``os.replace`` — so an interrupted run never leaves a half-written file.
Same seed, same numbers: JSON is written with sorted keys and a fixed float representation.

Reports over restarts (seeds) share a few helpers: :func:`mean_std` and :func:`pool_mean_std`
(mean ± std of per-restart values, and of groups known only by count, mean and std),
:func:`restart_summary` (a tree of per-restart arrays as means and stds), :func:`format_mean_std`,
:func:`markdown_table`, :func:`versus_published_table` and :func:`restarts_label` for the
summaries; :func:`sweep_selection` picks a hyperparameter grid's point by validation and
:func:`svd_report` records a truncated SVD's convergence. :func:`merge_runs` joins runs
of one protocol over disjoint restart ranges into one run directory, as if one run had trained all
the restarts. :class:`StepProgress` reports long compiled work as whole lines (done/total, elapsed).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "RunDir",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "to_jsonable",
    "progress",
    "StepProgress",
    "mean_std",
    "pool_mean_std",
    "format_mean_std",
    "markdown_table",
    "restart_summary",
    "versus_published_table",
    "restarts_label",
    "sweep_selection",
    "svd_report",
    "seed_records",
    "check_same_config",
    "CallCounter",
    "RunPart",
    "MergedRun",
    "merge_runs",
]


def to_jsonable(obj: Any) -> Any:
    """Convert arrays, scalars, dataclasses, enums and paths into plain JSON values.

    Non-finite floats become ``None`` (JSON has no NaN); arrays become nested lists.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if hasattr(obj, "__array__"):  # numpy and jax arrays
        arr = np.asarray(obj)
        if arr.ndim == 0:
            return to_jsonable(arr.item())
        return [to_jsonable(v) for v in arr.tolist()]
    if obj is None or isinstance(obj, str):
        return obj
    raise TypeError(f"to_jsonable: cannot convert object of type {type(obj).__name__}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same directory + rename).

    Args:
        path: destination; parent directories are created.
        data: the bytes.

    Returns:
        ``path`` as a :class:`~pathlib.Path`. On any failure the previous file (if any) is untouched
        and no temporary file is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; results get the usual mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically.

    Args:
        path: destination.
        text: the text.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` (converted by :func:`to_jsonable`) as indented, key-sorted JSON, atomically.

    Args:
        path: destination.
        obj: any value :func:`to_jsonable` accepts (arrays, dataclasses, mappings, scalars).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=True, allow_nan=False)
    return atomic_write_text(path, text + "\n")


class RunDir:
    """A results directory with atomic writers for configs, metrics, results, figures and summaries.

    Args:
        path: the directory; created (with parents) if missing.

    Raises:
        ValueError: if ``path`` exists and is not a directory.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(
                f"out: {str(self.path)!r} exists and is not a directory; pass a directory path"
            )
        self.path.mkdir(parents=True, exist_ok=True)

    def file(self, name: str) -> Path:
        """Path of ``name`` inside the run directory."""
        return self.path / name

    def write_config(self, config: Any) -> Path:
        """Write the resolved configuration to ``config.json``."""
        return atomic_write_json(self.file("config.json"), config)

    def write_results(self, results: Any, name: str = "results.json") -> Path:
        """Write the final results to ``results.json`` (or ``name``)."""
        return atomic_write_json(self.file(name), results)

    def write_json(self, name: str, obj: Any) -> Path:
        """Write any JSON file in the run directory."""
        return atomic_write_json(self.file(name), obj)

    def write_text(self, name: str, text: str) -> Path:
        """Write a text file (e.g. ``summary.md``) in the run directory."""
        return atomic_write_text(self.file(name), text)

    def write_metrics(
        self, records: Iterable[Mapping[str, Any]], name: str = "metrics.jsonl"
    ) -> Path:
        """Write metrics over time as JSON lines (one record per line), atomically."""
        lines = [json.dumps(to_jsonable(r), sort_keys=True, allow_nan=False) for r in records]
        return atomic_write_text(self.file(name), "".join(line + "\n" for line in lines))

    def write_npz(self, name: str, **arrays: Any) -> Path:
        """Write arrays to a compressed ``.npz`` file, atomically."""
        import io

        buf = io.BytesIO()
        np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
        return atomic_write_bytes(self.file(name), buf.getvalue())

    def save_figure(
        self, fig: Any, stem: str, *, formats: tuple[str, ...] = ("png", "pdf"), dpi: int = 150
    ) -> list[Path]:
        """Save a matplotlib figure as ``stem.png`` and ``stem.pdf`` (atomically) and close it.

        PDF metadata carries no creation date, so the same figure gives the same bytes.
        """
        import io

        import matplotlib.pyplot as plt

        paths = []
        for fmt in formats:
            buf = io.BytesIO()
            metadata = (
                {"CreationDate": None}
                if fmt == "pdf"
                else ({"Software": None} if fmt == "png" else None)
            )
            fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight", metadata=metadata)
            paths.append(atomic_write_bytes(self.file(f"{stem}.{fmt}"), buf.getvalue()))
        plt.close(fig)
        return paths


def progress(
    iterable: Iterable[Any],
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    scale: float = 1.0,
    stream: Any = None,
    enabled: bool | None = None,
) -> Iterator[Any]:
    """Yield from ``iterable`` while drawing a one-line progress bar with a rate on stderr.

    Args:
        iterable: what to iterate over.
        total: number of items (taken from ``len(iterable)`` when possible).
        desc: a label in front of the bar.
        unit: the unit of the rate (e.g. ``"img"``); ``scale`` items of that unit per element.
        scale: units per element (e.g. the batch size when iterating over batches).
        stream: where to draw (default ``sys.stderr``).
        enabled: force on/off; by default on when the stream is a terminal.
    """
    stream = sys.stderr if stream is None else stream
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if enabled is None:
        enabled = hasattr(stream, "isatty") and stream.isatty()
    if not enabled:
        yield from iterable
        return
    start = time.perf_counter()
    last = 0.0
    count = 0
    for item in iterable:
        yield item
        count += 1
        now = time.perf_counter()
        if now - last > 0.2 or (total is not None and count == total):
            last = now
            rate = count * scale / max(now - start, 1e-9)
            if total:
                frac = count / total
                bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
                stream.write(f"\r{desc} [{bar}] {count}/{total} {rate:,.1f} {unit}/s")
            else:
                stream.write(f"\r{desc} {count} {rate:,.1f} {unit}/s")
            stream.flush()
    stream.write("\n")
    stream.flush()


class StepProgress:
    """Progress of long compiled work as whole lines: ``desc: done/total unit (p %), t s``.

    Each report is a complete line (never a carriage-return bar), so log lines printed between
    reports never run into it. :meth:`advance` may be called from any thread (e.g. a
    ``jax.debug.callback`` fired inside a compiled loop); a line is printed at most every
    ``every`` seconds, and :meth:`close` prints the final one.

    Args:
        desc: label in front of each line (e.g. ``"cmnist sd"``).
        total: the amount of work (≥ 1), in ``unit``.
        unit: what is counted (e.g. ``"restart-steps"``).
        stream: where to write (default ``sys.stderr``).
        enabled: force on/off; by default on when the stream is a terminal.
        every: the least number of seconds between two lines.

    Raises:
        ValueError: if ``total`` < 1 or ``every`` < 0.
    """

    def __init__(
        self,
        desc: str,
        total: int,
        *,
        unit: str = "steps",
        stream: Any = None,
        enabled: bool | None = None,
        every: float = 5.0,
    ):
        if not isinstance(total, (int, np.integer)) or total < 1:
            raise ValueError(f"total: expected an integer >= 1, got {total!r}")
        if every < 0:
            raise ValueError(f"every: expected seconds >= 0, got {every!r}")
        self.desc, self.total, self.unit, self.every = desc, int(total), unit, float(every)
        self.stream = sys.stderr if stream is None else stream
        if enabled is None:
            enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.enabled = bool(enabled)
        self.done = 0
        self.start = time.perf_counter()
        self._last = self.start
        self._lock = threading.Lock()

    def _line(self, done: int, now: float) -> str:
        pct = 100.0 * done / self.total
        return (
            f"{self.desc}: {done:,}/{self.total:,} {self.unit} ({pct:.0f} %), "
            f"{now - self.start:.1f} s\n"
        )

    def advance(self, amount: int = 1, *_: Any) -> None:
        """Count ``amount`` units done; print a line if ``every`` seconds passed since the last."""
        with self._lock:
            self.done = min(self.done + int(amount), self.total)
            now = time.perf_counter()
            if not self.enabled or now - self._last < self.every or self.done >= self.total:
                return
            self._last = now
            self.stream.write(self._line(self.done, now))
            self.stream.flush()

    def close(self, message: str = "") -> float:
        """Print the final line (all work done, with ``message`` appended); returns the seconds."""
        now = time.perf_counter()
        with self._lock:
            self.done = self.total
            if self.enabled:
                line = self._line(self.total, now)
                self.stream.write(line[:-1] + (f"; {message}" if message else "") + "\n")
                self.stream.flush()
        return now - self.start


# ------------------------------------------------------------------------------------- reporting


def mean_std(values: Iterable[float], *, ddof: int = 0) -> tuple[float, float]:
    """Mean and standard deviation of per-restart values: (x̄, √(Σ(x − x̄)²/(n − ddof))).

    Args:
        values: one value per restart (seed), at least one.
        ddof: 0 for the population std (what Colored MNIST and two-moons report), 1 for the
            sample std; with a single value the std is 0.

    Returns:
        ``(mean, std)`` as Python floats.

    Raises:
        ValueError: if ``values`` is empty.
    """
    arr = np.asarray(list(values) if not hasattr(values, "__array__") else values, np.float64)
    if arr.size == 0:
        raise ValueError("values: expected at least one value, got none")
    std = float(arr.std(ddof=ddof)) if arr.size > ddof else 0.0
    return float(arr.mean()), std


def pool_mean_std(parts: Iterable[tuple[int, float, float]]) -> tuple[float, float]:
    """Mean and population std of the union of groups known by (count, mean, std) only.

    μ = Σ n_g μ_g / N and σ² = Σ n_g (σ_g² + μ_g²) / N − μ², with N = Σ n_g: exact for population
    stds (ddof 0), so pooled results equal those of one run over all the restarts.

    Args:
        parts: ``(n_g, mean_g, std_g)`` per group, n_g ≥ 1.

    Returns:
        ``(mean, std)`` of the union.

    Raises:
        ValueError: if there is no group or a count is below 1.
    """
    parts = list(parts)
    if not parts or any(n < 1 for n, _, _ in parts):
        raise ValueError(f"parts: expected groups with counts >= 1, got {parts!r}")
    total = sum(n for n, _, _ in parts)
    mean = sum(n * m for n, m, _ in parts) / total
    second = sum(n * (sd**2 + m**2) for n, m, sd in parts) / total
    return mean, math.sqrt(max(second - mean**2, 0.0))


def format_mean_std(
    mean: float | None, std: float | None = None, *, scale: float = 100.0, digits: int = 1
) -> str:
    """``"70.1 ± 0.6"``: mean (and std) times ``scale`` (percent by default); ``"—"`` if missing.

    Args:
        mean: the value; ``None`` or NaN give ``"—"``.
        std: its standard deviation, or ``None`` to print the mean alone.
        scale: factor applied to both (100: fractions as percent; 1: as they are).
        digits: decimals.
    """
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    text = f"{scale * mean:.{digits}f}"
    return text + (f" ± {scale * std:.{digits}f}" if std is not None else "")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A Markdown table as lines: the header, the rule and one line per row.

    Args:
        header: column titles.
        rows: cells (converted with ``str``), as many per row as there are titles.

    Raises:
        ValueError: naming the row whose cell count differs from the header's.
    """
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for i, row in enumerate(rows):
        cells = [str(c) for c in row]
        if len(cells) != len(header):
            raise ValueError(
                f"rows: row {i} has {len(cells)} cells, the header {len(header)}; "
                "give every row one cell per column"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def restart_summary(
    values: Mapping[str, Any], *, keep: Sequence[str] = (), ddof: int = 0
) -> dict[str, Any]:
    """Mean ± std over restarts of a tree of per-restart arrays, as a run's results report them.

    A top-level array ``KEY`` (one value per restart) becomes ``KEY_mean`` and ``KEY_std`` (and
    stays as the list ``KEY`` when named in ``keep``); inside a nested mapping a leaf ``STAT``
    becomes ``STAT`` (the mean) and ``STAT_std``, e.g. ``{"probe": {"digit_gray": {"acc": (R,)}}}``
    → ``{"probe": {"digit_gray": {"acc": mean, "acc_std": std}}}``.

    Args:
        values: arrays of shape (R,) at the leaves, R ≥ 1 restarts.
        keep: top-level keys also kept as per-restart lists.
        ddof: as :func:`mean_std`.

    Returns:
        The summary (Python floats and lists).

    Raises:
        ValueError: from :func:`mean_std` for an empty leaf.
    """

    def nested(tree):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            if isinstance(v, Mapping):
                out[k] = nested(v)
            else:
                out[k], out[f"{k}_std"] = mean_std(np.asarray(v), ddof=ddof)
        return out

    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, Mapping):
            out[k] = nested(v)
            continue
        out[f"{k}_mean"], out[f"{k}_std"] = mean_std(np.asarray(v), ddof=ddof)
        if k in keep:
            out[k] = np.asarray(v, np.float64).tolist()
    return out


def versus_published_table(
    ours: Mapping[str, Mapping[str, Any]],
    published: Mapping[str, Mapping[str, Any]],
    columns: Sequence[tuple[str, str, str]],
    *,
    labels: Mapping[str, str] | None = None,
    scale: float = 100.0,
) -> list[str]:
    """A Markdown table of our mean ± std beside the published one, one row per method.

    Args:
        ours: method → results holding ``KEY_mean`` and ``KEY_std``.
        published: method → ``{PUB_KEY: (mean, std)}``; a missing method or key prints ``—``.
        columns: ``(KEY, PUB_KEY, title)`` per quantity, e.g. ``("train_acc", "train", "train
            acc")``; each gives a "title (ours)" and a "title (published)" column.
        labels: method → row label (default the method's key).
        scale: as :func:`format_mean_std` (100: fractions as percent).

    Returns:
        The table's lines (:func:`markdown_table`).
    """
    labels = labels or {}
    header = ["method"] + [f"{t} (ours)" for _, _, t in columns]
    header += [f"{t} (published)" for _, _, t in columns]
    rows = []
    for m, r in ours.items():
        pub = published.get(m, {})
        rows.append(
            [labels.get(m, m)]
            + [
                format_mean_std(r.get(f"{k}_mean"), r.get(f"{k}_std"), scale=scale)
                for k, _, _ in columns
            ]
            + [format_mean_std(*pub[k], scale=scale) if k in pub else "—" for _, k, _ in columns]
        )
    return markdown_table(header, rows)


def restarts_label(first: int, count: int) -> str:
    """``"10"`` for restarts 0–9 of a protocol, ``"5 (restarts 5–9)"`` for a later range."""
    return str(count) if first == 0 else f"{count} (restarts {first}–{first + count - 1})"


def sweep_selection(
    points: Sequence[Mapping[str, Any]],
    grid: Sequence[Mapping[str, float]],
    *,
    select: str = "val_acc_mean",
    compare: str = "test_acc_mean",
    shown: Sequence[str] = ("train_acc_mean", "test_acc_mean"),
) -> dict[str, Any]:
    """The results of a hyperparameter sweep: the point best by ``select`` (training-domain
    validation), with the point best by ``compare`` (test-domain selection) beside it.

    Ties go to the earlier grid point.

    Args:
        points: per grid point, its hyperparameters and results summary (:func:`restart_summary`).
        grid: the hyperparameters of each point, in the order of ``points``.
        select: the results key the choice maximises.
        compare: the key of the alternative choice reported beside it.
        shown: the keys of ``points`` copied into that alternative.

    Returns:
        The chosen point's results (without its hyperparameters), ``selected`` (its
        hyperparameters), ``test_domain_choice`` (the other choice's hyperparameters and ``shown``
        results) and ``sweep`` (every point).

    Raises:
        ValueError: if ``points`` and ``grid`` differ in length or are empty.
    """
    if not points or len(points) != len(grid):
        raise ValueError(
            f"points: expected one summary per grid point ({len(grid)}), got {len(points)}"
        )

    def best(key):
        return max(range(len(points)), key=lambda g: (points[g][key], -g))

    chosen, other = best(select), best(compare)
    return {
        **{k: v for k, v in points[chosen].items() if k not in grid[chosen]},
        "selected": dict(grid[chosen]),
        "test_domain_choice": {**grid[other], **{k: points[other][k] for k in shown}},
        "sweep": list(points),
    }


def svd_report(report: Any, **extra: Any) -> dict[str, Any]:
    """A truncated SVD's result as a results.json record: s, residuals and convergence.

    Args:
        report: an :class:`ntkdyn.TruncatedSVD` (``U``, ``s``, ``residuals``, ``iterations``,
            ``converged``, ``matvecs``).
        extra: more entries (e.g. ``method``, ``seconds``).

    Returns:
        ``n`` and ``k`` (the shape of U), ``s``, ``residuals``, ``converged``, ``iterations``,
        ``matvecs`` and ``extra``.
    """
    n, k = np.shape(report.U)
    return {
        "n": int(n),
        "k": int(k),
        "s": np.asarray(report.s, np.float64),
        "residuals": np.asarray(report.residuals, np.float64),
        "converged": bool(report.converged),
        "iterations": int(report.iterations),
        "matvecs": int(report.matvecs),
        **extra,
    }


# --------------------------------------------------------------------------------------- merging


class RunPart(NamedTuple):
    """One run joined by :func:`merge_runs`: its directory, files and restart range.

    Attributes:
        path: the run directory.
        config: its config.json.
        results: its results.json.
        first: the first restart it trained.
        count: how many restarts it trained.
    """

    path: Path
    config: dict[str, Any]
    results: dict[str, Any]
    first: int
    count: int


class MergedRun(NamedTuple):
    """What :func:`merge_runs` wrote.

    Attributes:
        run_dir: the merged :class:`RunDir` (add figures and a summary to it).
        config: the merged config.json.
        results: the merged results.json.
        parts: the joined runs in restart order.
    """

    run_dir: RunDir
    config: dict[str, Any]
    results: dict[str, Any]
    parts: list[RunPart]


def _lookup(tree: Mapping[str, Any], path: str) -> Any:
    for part in path.split("/"):
        if not isinstance(tree, Mapping):
            return None
        tree = tree.get(part)
    return tree


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _merge_tree(nodes: list[Any], counts: list[int], concat: frozenset[str]) -> Any:
    """Merge one results subtree of every run (the rules of :func:`merge_runs`)."""
    first = nodes[0]
    if not all(isinstance(n, Mapping) for n in nodes):
        return first
    out: dict[str, Any] = {}
    for key in first:
        if key in out:  # the *_mean/*_std partner of a key merged before
            continue
        if key in concat and all(isinstance(n.get(key), list) for n in nodes):
            out[key] = [v for n in nodes for v in n[key]]
            if f"{key}_mean" in first and f"{key}_std" in first and out[key]:
                out[f"{key}_mean"], out[f"{key}_std"] = mean_std(out[key])
            continue
        base = key[: -len("_mean")] if key.endswith("_mean") else key
        std_key = f"{base}_std"
        pairs = [(n.get(key), n.get(std_key)) for n in nodes]
        if (
            key != std_key
            and base not in concat
            and all(_number(m) and _number(s) for m, s in pairs)
        ):
            out[key], out[std_key] = pool_mean_std(
                (c, m, s) for c, (m, s) in zip(counts, pairs, strict=True)
            )
            continue
        out[key] = _merge_tree([n.get(key) for n in nodes], counts, concat)
    return out


def _merge_records(parts: list[RunPart], record_keys: Sequence[str]) -> list[dict[str, Any]]:
    sums: dict[tuple, dict[str, float]] = {}
    weights: dict[tuple, int] = {}
    for part in parts:
        path = part.path / "metrics.jsonl"
        for line in path.read_text().splitlines() if path.is_file() else []:
            rec = json.loads(line)
            key = tuple(rec.get(k) for k in record_keys)
            acc = sums.setdefault(key, {})
            for k, v in rec.items():
                if k not in record_keys and isinstance(v, (int, float)) and v is not None:
                    acc[k] = acc.get(k, 0.0) + part.count * v
            weights[key] = weights.get(key, 0) + part.count
    return [
        {
            **dict(zip(record_keys, key, strict=True)),
            **{k: v / weights[key] for k, v in acc.items()},
        }
        for key, acc in sums.items()
    ]


def merge_runs(
    run_dirs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    concat: Sequence[str],
    match: Sequence[str] = (),
    record_keys: Sequence[str] = ("step",),
    copy: Sequence[str] = (),
    check: Callable[[Path, dict[str, Any]], None] | None = None,
    first_key: str = "first_restart",
    count_key: str = "restarts",
    command: str = "ntkdyn",
) -> MergedRun:
    """Join runs of one protocol over disjoint, contiguous restart ranges into one run directory.

    A protocol of R restarts may be trained as several runs, each over restarts
    ``first … first + count − 1`` (``config.json``'s ``first_key`` and ``count_key``) with the keys
    those restarts get in one long run. Merging gives the numbers of that long run:

    * a list under a key in ``concat`` (one value per restart) is concatenated in restart order,
      and its sibling ``KEY_mean``/``KEY_std`` recomputed (population std);
    * any other scalar ``X`` (or ``X_mean``) with a sibling ``X_std`` is pooled exactly from each
      run's count, mean and std (:func:`pool_mean_std`);
    * everything else is taken from the run whose restarts come first;
    * ``metrics.jsonl`` records that share the values of ``record_keys`` are averaged, weighted by
      restart count.

    Every check runs before anything is written, so a refused merge leaves no output directory.

    Args:
        run_dirs: two or more finished run directories (each with config.json and results.json).
        out: the merged run directory (not one of ``run_dirs``).
        concat: results keys holding one value per restart.
        match: config.json entries (``/``-separated paths, e.g. ``"seed"``, ``"data/source"``) the
            runs must share to be parts of one protocol.
        record_keys: the fields that identify a metrics.jsonl record (e.g. ``("method", "step")``).
        copy: files copied from the first run (e.g. a figure of one restart).
        check: ``check(path, config)`` raising ``ValueError`` for a run that cannot be merged.
        first_key, count_key: the config.json entries of the restart range.
        command: the command named in errors (``"ntkdyn cmnist"``).

    Returns:
        :class:`MergedRun`; config.json records the total restarts and ``merged_from``.

    Raises:
        ValueError: beginning ``merge:``, when fewer than two runs are given, ``out`` is one of
            them, a run lacks config.json/results.json or fails ``check``, the runs differ in a
            ``match`` entry, or their restart ranges overlap or leave a gap.
    """
    dirs = [Path(d) for d in run_dirs]
    if len(dirs) < 2:
        raise ValueError(f"merge: expected two or more run directories, got {len(dirs)}")
    if any(Path(out).resolve() == d.resolve() for d in dirs):
        raise ValueError(
            f"merge: --out {out} is one of the runs being merged; choose a new directory"
        )
    parts = []
    for d in dirs:
        try:
            cfg = json.loads((d / "config.json").read_text())
            res = json.loads((d / "results.json").read_text())
        except FileNotFoundError as exc:
            raise ValueError(
                f"merge: {d} is not a finished `{command}` run (missing {Path(exc.filename).name})"
            ) from exc
        except json.JSONDecodeError as exc:
            raise ValueError(f"merge: {d}: unreadable run file ({exc})") from exc
        if check is not None:
            check(d, cfg)
        parts.append(RunPart(d, cfg, res, int(cfg.get(first_key, 0)), int(cfg[count_key])))
    parts.sort(key=lambda p: p.first)
    p0 = parts[0]
    for p in parts[1:]:
        for key in match:
            a, b = _lookup(p.config, key), _lookup(p0.config, key)
            if a != b:
                raise ValueError(
                    f"merge: {p.path} and {p0.path} differ in {key} ({a!r} vs {b!r}); "
                    "merge only runs of one protocol"
                )
    for a, b in zip(parts, parts[1:], strict=False):
        if b.first != a.first + a.count:
            end = a.first + a.count
            what = "overlap" if b.first < end else f"leave restarts {end}–{b.first - 1} out"
            raise ValueError(
                f"merge: {a.path} (restarts {a.first}–{end - 1}) and {b.path} (restarts "
                f"{b.first}–{b.first + b.count - 1}) {what}; merge runs whose restart ranges "
                "follow each other"
            )
    counts = [p.count for p in parts]
    # Settings that may differ between the parts (e.g. the compiler options of each machine).
    differing = sorted(
        k
        for k in p0.config
        if k not in (first_key, count_key, "out")
        and any(p.config.get(k) != p0.config.get(k) for p in parts)
    )
    results = _merge_tree([p.results for p in parts], counts, frozenset(concat))
    records = _merge_records(parts, tuple(record_keys))
    config = {
        **p0.config,
        count_key: sum(counts),
        first_key: p0.first,
        "out": str(out),
        "merged_from": [
            {
                "dir": str(p.path),
                first_key: p.first,
                count_key: p.count,
                **{k: p.config.get(k) for k in differing},
            }
            for p in parts
        ],
    }
    run_dir = RunDir(out)
    run_dir.write_config(config)
    run_dir.write_metrics(records)
    run_dir.write_results(results)
    for name in copy:
        if (p0.path / name).is_file():
            shutil.copyfile(p0.path / name, run_dir.file(name))
    return MergedRun(run_dir, config, results, parts)


# ------------------------------------------------------------------------------- run bookkeeping


def seed_records(
    history: Mapping[str, Any], steps: Sequence[int], *, step_key: str = "step", **tags: Any
) -> list[dict[str, Any]]:
    """Metrics records of seeds trained together: per logged step, the mean and std over seeds.

    For every history ``KEY`` of shape (S, R) (S seeds, R records), record r holds ``KEY`` =
    mean_s KEY[s, r] and ``KEY_std`` = √(mean_s (KEY[s, r] − KEY)²), computed in the history's
    dtype; histories of another rank (e.g. recorded outputs (S, R, n)) are left out.

    Args:
        history: name → (S, R) array (as :func:`ntkdyn.train.fullbatch.train_fullbatch` returns).
        steps: the R logged steps.
        step_key: the records' name for the step (e.g. ``"epoch"``).
        **tags: fields every record carries (e.g. ``config="sd"``).

    Returns:
        R records, ready for :meth:`RunDir.write_metrics`.

    Raises:
        ValueError: naming ``history`` when a (S, R) entry's R differs from ``len(steps)``.
    """
    arrays = {k: np.asarray(v) for k, v in history.items()}
    for k, v in arrays.items():
        if v.ndim == 2 and v.shape[1] != len(steps):
            raise ValueError(
                f"history: {k!r} has {v.shape[1]} records, steps {len(steps)}; pass the steps "
                "the history was logged at"
            )
    records = []
    for r, step in enumerate(steps):
        rec = {**tags, step_key: int(step)}
        for key, hist in arrays.items():
            if hist.ndim == 2:
                rec[key] = float(hist[:, r].mean())
                rec[f"{key}_std"] = float(hist[:, r].std())
        records.append(rec)
    return records


def check_same_config(
    path: str | os.PathLike,
    config: Any,
    *,
    ignore: Iterable[str] = (),
    flag: str = "--resume",
) -> None:
    """Check a run continued in place has the settings it was started with.

    Compares the top-level fields of ``config`` (as :func:`to_jsonable` writes them) with the
    ``config.json`` at ``path``; nothing to compare when that file does not exist.

    Args:
        path: the run's ``config.json``.
        config: the settings of the continuing run.
        ignore: fields that may change between the two (devices, worker counts, ...).
        flag: the option named in the error.

    Raises:
        ValueError: naming ``flag``, the run's folder and the fields that differ.
    """
    path = Path(path)
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    skip = set(ignore)
    diff = [k for k, v in to_jsonable(config).items() if k not in skip and old.get(k) != v]
    if diff:
        raise ValueError(
            f"{flag}: settings differ from the run in {path.parent} ({', '.join(diff)}); "
            "use the same arguments"
        )


class CallCounter:
    """Advances a :class:`StepProgress` by ``amount`` once every ``calls`` calls (thread-safe).

    For work counted from inside a compiled loop by ``jax.debug.callback``, fired once per
    (padded) seed and record: with ``calls`` = the number of seeds and ``amount`` = the steps per
    record, the progress counts steps of the whole batch of seeds.

    Args:
        progress: the progress to advance.
        calls: calls per advance, ≥ 1.
        amount: units per advance.

    Raises:
        ValueError: if ``calls`` < 1.
    """

    def __init__(self, progress: StepProgress, calls: int, amount: int):
        if calls < 1:
            raise ValueError(f"calls: expected an integer >= 1, got {calls!r}")
        self.progress, self.calls, self.amount = progress, int(calls), int(amount)
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, *_: Any) -> None:
        """Count one call (arguments, e.g. a callback's anchor, are ignored)."""
        with self._lock:
            self.count += 1
            if self.count % self.calls == 0:
                self.progress.advance(self.amount)
