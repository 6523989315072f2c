"""Run directories: the one place that writes files, and the reports written into them.

Modules: :mod:`~ntkdyn.runs.files` (atomic files, :class:`RunDir`), :mod:`~ntkdyn.runs.progress`,
:mod:`~ntkdyn.runs.report` (summaries over restarts) and :mod:`~ntkdyn.runs.merge`; every name is
imported here.

Every command writes one directory (a fixed layout): the resolved config (``config.json``), metrics over
time (``metrics.jsonl``), final results (``results.json``), figures (PNG and PDF) and a short
Markdown summary (``summary.md``). Every file is written atomically — to a temporary file in the
same directory, then ``os.replace`` — so an interrupted run never leaves a half-written file.
Same seed, same numbers: JSON is written with sorted keys and a fixed float representation.
One writer per directory: :class:`RunDir` holds the directory's ``.lock``
(:func:`acquire_run_lock`), so a second process on the same directory is refused; the command line
releases it when the command ends (:func:`command_scope`).

Reports over restarts (seeds) share a few helpers: :func:`mean_std` and :func:`pool_mean_std`
(mean ± std of per-restart values, and of groups known only by count, mean and std),
:func:`restart_summary` (a tree of per-restart arrays as means and stds), :func:`format_mean_std`,
:func:`markdown_table`, :func:`versus_published_table` and :func:`restarts_label` for the
summaries; :func:`sweep_selection` picks a hyperparameter grid's point by validation and
:func:`svd_report` records a truncated SVD's convergence. :func:`merge_runs` joins runs
of one protocol over disjoint restart ranges into one run directory, as if one run had trained all
the restarts. :mod:`~ntkdyn.runs.resume` holds what resumable commands share: :func:`start_run`
(the folder's checks), :func:`interruptible` (Ctrl-C and SIGTERM stop at the next checkpoint and
print how to continue), :func:`stop_requested`. :class:`StepProgress` reports long compiled work as whole lines (done/total, elapsed).
"""

from ntkdyn.runs.files import (
    LOCK_NAME,
    RunDir,
    acquire_run_lock,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_writable,
    command_scope,
    release_run_lock,
    release_run_locks,
    to_jsonable,
)
from ntkdyn.runs.merge import MergedRun, RunPart, check_same_config, merge_runs, seed_records
from ntkdyn.runs.progress import CallCounter, StepProgress, progress
from ntkdyn.runs.report import (
    format_mean_std,
    group_accuracy_table,
    group_headlines,
    group_summary_markdown,
    markdown_table,
    mean_std,
    pool_mean_std,
    restart_summary,
    restarts_label,
    svd_report,
    sweep_selection,
    versus_published_table,
)
from ntkdyn.runs.resume import (
    add_resume_flags,
    deferring,
    interruptible,
    resume_command,
    start_run,
    stop_requested,
)

__all__ = [
    "RunDir",
    "LOCK_NAME",
    "acquire_run_lock",
    "release_run_lock",
    "release_run_locks",
    "command_scope",
    "check_writable",
    "group_accuracy_table",
    "group_headlines",
    "group_summary_markdown",
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
    "add_resume_flags",
    "deferring",
    "interruptible",
    "resume_command",
    "start_run",
    "stop_requested",
]
