"""Joining runs of one protocol over disjoint restart ranges into one run directory."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ntkdyn.errors import InputError
from ntkdyn.runs.files import RunDir, to_jsonable
from ntkdyn.runs.report import mean_std, pool_mean_std


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
    renamed: Mapping[str, str] | None = None,
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
        renamed: former config.json keys → their names now (runs recorded before a rename join
            runs recorded after it).
        command: the command named in errors (``"ntkdyn cmnist"``).

    Returns:
        :class:`MergedRun`; config.json records the total restarts and ``merged_from``.

    Raises:
        ntkdyn.errors.InputError: beginning ``merge:`` (the user's runs: exit status 2 on the
            command line), when fewer than two runs are given, ``out`` is one of
            them, a run lacks config.json/results.json or fails ``check``, the runs differ in a
            ``match`` entry, or their restart ranges overlap or leave a gap.
    """
    dirs = [Path(d) for d in run_dirs]
    if len(dirs) < 2:
        raise InputError(f"merge: expected two or more run directories, got {len(dirs)}")
    if any(Path(out).resolve() == d.resolve() for d in dirs):
        raise InputError(
            f"merge: --out {out} is one of the runs being merged; choose a new directory"
        )
    parts = []
    for d in dirs:
        try:
            cfg = json.loads((d / "config.json").read_text())
            res = json.loads((d / "results.json").read_text())
        except FileNotFoundError as exc:
            raise InputError(
                f"merge: {d} is not a finished `{command}` run (missing {Path(exc.filename).name})"
            ) from exc
        except json.JSONDecodeError as exc:
            raise InputError(f"merge: {d}: unreadable run file ({exc})") from exc
        cfg = {(renamed or {}).get(k, k): v for k, v in cfg.items()}
        if check is not None:
            check(d, cfg)
        parts.append(RunPart(d, cfg, res, int(cfg.get(first_key, 0)), int(cfg[count_key])))
    parts.sort(key=lambda p: p.first)
    p0 = parts[0]
    for p in parts[1:]:
        for key in match:
            a, b = _lookup(p.config, key), _lookup(p0.config, key)
            if a != b:
                raise InputError(
                    f"merge: {p.path} and {p0.path} differ in {key} ({a!r} vs {b!r}); "
                    "merge only runs of one protocol"
                )
    for a, b in zip(parts, parts[1:], strict=False):
        if b.first != a.first + a.count:
            end = a.first + a.count
            what = "overlap" if b.first < end else f"leave restarts {end}–{b.first - 1} out"
            raise InputError(
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


def refuse(key: str, why: str) -> Callable[[Path, dict[str, Any]], None]:
    """A :func:`merge_runs` ``check`` refusing runs whose config.json has ``key`` set (truthy).

    Args:
        key: the config.json entry.
        why: the rest of the message, e.g. ``"is a --sweep run; merge published runs only"``.

    Returns:
        ``check(path, config)``, raising :class:`ntkdyn.errors.InputError` ``merge: PATH WHY``.
    """

    def check(path: Path, config: dict[str, Any]) -> None:
        if config.get(key):
            raise InputError(f"merge: {path} {why}")

    return check


def merged_from(parts: Sequence[RunPart], unit: str = "restarts") -> str:
    """The summary's closing line: ``Merged from `a` (restarts 0–4), `b` (restarts 5–9).``"""
    text = ", ".join(f"`{p.path}` ({unit} {p.first}–{p.first + p.count - 1})" for p in parts)
    return f"Merged from {text}."


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
        raise InputError(
            f"{flag}: settings differ from the run in {path.parent} ({', '.join(diff)}); "
            "use the same arguments"
        )
