"""Group robustness on an image folder: ERM, class-conditional SD and Group DRO, worst-group accuracy.

The protocol of ``ntkdyn celeba`` (Pezeshki et al. 2021, Sec. 5; each setting is explained in
:mod:`ntkdyn.experiments.celeba`, its CelebA preset) on any dataset whose examples carry a target y
and a spurious attribute a in {0, 1}, groups g = 2y + a: by default a folder with ``metadata.csv``
(``filename, split, y, a``; split 0/1/2 = train/val/test), the format SubpopBench exports
Waterbirds, MetaShift and CelebA in (:func:`ntkdyn.data.metadata.load_metadata_folder`). ERM and SD
report the epoch of best validation average accuracy, Group DRO (group-balanced sampling) that of
best validation worst-group accuracy; every method is reported under both rules.

Commands::

    ntkdyn groups --data-dir /data/waterbirds --pretrained resnet50-11ad3fa6.pth --out runs/wb
    ntkdyn groups --quick --out /tmp/groups      # a synthetic metadata folder, CPU, < 1 min
    ntkdyn groups --data-dir ../shared/data/celebahq-30k --preset real-10k --target Blond_Hair \\
        --spurious Male --seeds 1 --out runs/hq30k  # real faces, from scratch, on a CPU

A new benchmark is a loader and a line of :data:`BENCHMARKS` (``--loader``). Checkpoints,
``--resume``, several processes and the outputs are those of ``ntkdyn celeba``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import shutil
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ntkdyn.train.groups import DRO, SD, Recipe
from ntkdyn.train.groups import GroupBenchmark as Benchmark

HELP = __doc__.split("\n\n")[0] + "\n\nSee the module docstring for the protocol and commands."
METHODS = ("erm", "sd", "groupdro")
SELECTIONS = ("val_avg", "val_worst")
ARCHS = ("resnet10", "resnet18", "resnet50")
OPTIMIZERS = ("adam", "sgd")
COUNTS = ("width", "image_size", "batch_size", "eval_batch_size", "epochs", "seeds",
          "checkpoint_every", "log_every", "workers", "responses_n")  # settings that count: at least one  # fmt: skip
#: Settings a resumed run may change (they do not change the numbers).
RESUMABLE = ("devices", "processes", "workers", "prefetch", "cache_images")


def _metadata():
    return importlib.import_module("ntkdyn.data.metadata")


#: A folder with metadata.csv (filename, split, y, a).
METADATA = Benchmark(
    "Group robustness on an image folder (Pezeshki et al. 2021, Sec. 5 protocol)",
    lambda d, c: _metadata().load_metadata_folder(d, target_name=c.target, attribute_name=c.spurious),
    lambda d, c, sizes: _metadata().write_metadata_fixture(d, seed=c.seed, sizes=sizes),
    marker="metadata.csv",
    figure="groups",
)  # fmt: skip
#: ``--loader`` name → ``module:attribute`` of its :class:`Benchmark` (imported when chosen).
BENCHMARKS = {
    "metadata": "ntkdyn.experiments.groups:METADATA",
    "celeba": "ntkdyn.experiments.celeba:CELEBA",
}


def benchmark(name: str) -> Benchmark:
    """The :class:`Benchmark` registered as ``name`` in :data:`BENCHMARKS`."""
    module, _, attr = BENCHMARKS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of a run; the defaults are the published protocols (checked on construction).

    ``optimizer`` … ``epochs`` are ERM's and SD's (Pezeshki et al.), ``dro`` Group DRO's (Sagawa
    et al.); weight decay is decoupled for Adam, coupled (PyTorch's ``SGD``) for SGD.

    Attributes:
        data_dir: the dataset's folder.
        loader: the dataset format, a name of BENCHMARKS (metadata: a folder with metadata.csv).
        methods: methods to run, among erm, sd, groupdro.
        arch: network, resnet10, resnet18 or resnet50.
        width: first-stage channels (64 standard).
        pretrained: ImageNet weights, a torchvision .pth or timm .safetensors file.
        image_size: input side length in pixels.
        crop: centre-crop side in image pixels (None: the shorter image side).
        batch_size: global batch size.
        eval_batch_size: evaluation batch size.
        optimizer: ERM and SD optimizer, adam or sgd.
        lr: ERM and SD learning rate.
        momentum: ERM and SD SGD momentum.
        weight_decay: ERM and SD weight decay.
        epochs: ERM and SD epochs.
        sd: SD's penalty (flags --sd.coef, --sd.target).
        dro: Group DRO's optimisation and group weights (flags --dro.lr, --dro.step-size, ...).
        balanced: group-balanced sampling with replacement for every method (None: Group DRO only).
        selection: headline epoch selection for every method, val_avg or val_worst (None: val_worst
            for Group DRO, val_avg for the others).
        seeds: number of seeds.
        seed: base seed (seed k uses seed + k).
        target: name of the target y in group names and reports.
        spurious: name of the spurious attribute a.
        bf16: compute in bfloat16 (GPUs); parameters stay float32.
        cache_images: decode every image once and keep it in memory (8-bit).
        checkpoint_every: steps between checkpoints (and one per epoch).
        log_every: steps between training-metric records and progress lines.
        workers: image-decoding threads.
        prefetch: batches decoded ahead.
        fixture: the data is the synthetic fixture (set by --quick without --data-dir).
        responses: k directions at θ₀ whose z(t) is measured per epoch (0: off; ntkdyn.journey).
        responses_n: training images of the stratified sample they are measured on.
    """

    data_dir: str | None = None
    loader: str = "metadata"
    methods: tuple[str, ...] = METHODS
    arch: str = "resnet50"
    width: int = 64
    pretrained: str | None = None
    image_size: int = 224
    crop: int | None = None
    batch_size: int = 128
    eval_batch_size: int = 256
    optimizer: str = "adam"
    lr: float = 1e-5
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: int = 3
    sd: SD = SD()
    dro: DRO = DRO()
    balanced: bool | None = None
    selection: str | None = None
    seeds: int = 5
    seed: int = 0
    target: str = "y"
    spurious: str = "a"
    bf16: bool = False
    cache_images: bool = False
    checkpoint_every: int = 500
    log_every: int = 50
    workers: int = 8
    prefetch: int = 2
    fixture: bool = False
    responses: int = 0
    responses_n: int = 1000

    def __post_init__(self):
        from ntkdyn.settings import ConfigError, check, integer, number, one_of, optional

        if not self.methods or any(m not in METHODS for m in self.methods):
            raise ConfigError(
                "methods", f"expected some of {', '.join(METHODS)}, got {self.methods!r}"
            )
        rate, decay = number(0, low_open=True), number(0)
        check(
            self,
            {
                **dict.fromkeys(COUNTS, integer(1)),
                "seed": integer(),
                "responses": integer(0),
                "prefetch": integer(0),
                "crop": optional(integer(1)),
                "lr": rate,
                "weight_decay": decay,
                "momentum": number(0, 1, high_open=True),
                "optimizer": one_of(*OPTIMIZERS),
                "arch": one_of(*ARCHS),
                "loader": one_of(*BENCHMARKS),
                "selection": optional(one_of(*SELECTIONS)),
            },
        )
        if self.responses > self.responses_n:
            raise ConfigError("responses", f"must be <= --responses-n ({self.responses_n})")
        if self.spurious == self.target:
            raise ConfigError("spurious", f"must differ from --target, got {self.spurious!r}")
        bench = benchmark(self.loader)
        if bench.check is not None:
            bench.check(self)

    def recipe(self, method: str) -> Recipe:
        """How ``method`` is optimised, sampled and selected under these settings."""
        dro = method == "groupdro"
        fields = [
            getattr(self.dro if dro else self, k)
            for k in ("optimizer", "lr", "momentum", "weight_decay", "epochs")
        ]
        if method == "sd" and self.sd.optimizer is not None:
            fields[0] = self.sd.optimizer
        return Recipe(
            *fields,
            balanced=dro if self.balanced is None else self.balanced,
            selection=self.selection or ("val_worst" if dro else "val_avg"),
        )  # fmt: skip

    def objective(self, method: str, train_counts: np.ndarray):
        """The training objective of ``method`` (:func:`ntkdyn.train.groups.group_objective`)."""
        from ntkdyn.train.groups import group_objective

        return group_objective(method, train_counts, sd=self.sd, dro=self.dro)


def load_data(cfg: Config, devices: int):
    """The dataset of ``cfg`` (a :class:`~ntkdyn.data.images.GroupDataset`), checked against the settings.

    Raises:
        InputError: the loader's complaint about the folder as one line naming ``--data-dir`` (or
            ``--target``/``--spurious``), a group without training examples, a ``--batch-size``
            above the training split or not divisible by the devices, a ``--crop`` too large.
        FileNotFoundError: a missing folder, file or image (naming ``--data-dir``).
    """
    from ntkdyn.errors import InputError
    from ntkdyn.train.groups import check_group_training

    def named(exc: Exception) -> str:
        text, field = str(exc), str(exc).partition(": ")[0]
        keep = field.startswith("--") or field in ("target", "spurious")
        return text if keep else f"--data-dir: {text.removeprefix('data_dir: ')}"

    try:
        data = benchmark(cfg.loader).load(cfg.data_dir, cfg)
    except FileNotFoundError as exc:
        raise FileNotFoundError(named(exc)) from None
    except ValueError as exc:  # the user's data: its message, as one line naming the flag
        raise InputError(named(exc)) from None
    check_group_training(
        data.splits["train"], data.group_names, batch_size=cfg.batch_size, devices=devices,
        crop=cfg.crop,
    )  # fmt: skip
    return data


class Results(NamedTuple):
    """What a run measured, as plain values; :func:`report` writes them.

    ``config`` (config.json: the settings, devices, processes), ``results`` (results.json: per
    method the selected epochs' test metrics over seeds), ``records`` (metrics.jsonl), ``curves``
    (method → validation ``avg``/``worst`` accuracy per epoch), ``counts`` (group counts per split,
    a table), ``group_names``.
    """

    config: dict[str, Any]
    results: dict[str, Any]
    records: list[dict[str, Any]]
    curves: dict[str, dict[str, list[float]]]
    counts: str
    group_names: list[str]


def run(cfg: Config, *, checkpoint_dir: str | Path, resume: bool = False) -> Results:
    """Train every (method, seed) of ``cfg``, evaluate per group, select epochs; write no results.

    Each (method, seed) is :func:`ntkdyn.train.groups.train_on_groups`, checkpointed in
    ``checkpoint_dir/<method>/seed<k>/`` (continued with ``resume``); the methods of a seed start
    from the same weights (and share the spectrum at θ₀). Returns the :class:`Results`."""
    import jax
    import jax.numpy as jnp

    from ntkdyn.data.images import decode_split
    from ntkdyn.journey import journey_results, sample_journey
    from ntkdyn.models.resnet import RESNET_ARCHS
    from ntkdyn.train.dataparallel import data_mesh
    from ntkdyn.train.groups import summarize_methods, train_on_groups, validation_curves

    mesh = data_mesh()
    data = load_data(cfg, mesh.size)
    size, crop, counts = cfg.image_size, cfg.crop, data.splits["train"].group_counts()
    images = {}
    if cfg.cache_images:
        images = {
            name: decode_split(split, image_size=size, crop=crop, workers=cfg.workers)
            for name, split in data.splits.items()
        }
    model = RESNET_ARCHS[cfg.arch](width=cfg.width, dtype=jnp.bfloat16 if cfg.bf16 else jnp.float32)
    common = dict(
        mesh=mesh, batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size, resume=resume,
        checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every, images=images,
        pipeline=dict(image_size=size, crop=crop, workers=cfg.workers, prefetch=cfg.prefetch),
    )  # fmt: skip
    inits: dict[int, Any] = {}  # the methods of a seed start from the same weights
    journeys: dict[int, Any] = {}
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in cfg.methods}
    for method, k in ((m, k) for m in cfg.methods for k in range(cfg.seeds)):
        recipe = cfg.recipe(method)
        if k not in inits:
            inits[k] = initial_variables(cfg, model, k)
        if cfg.responses and k not in journeys:
            journeys[k] = sample_journey(model, inits[k], data.splits["train"], data.group_names,
                k=cfg.responses, n=cfg.responses_n, seed=cfg.seed + k, image_size=size, crop=crop,
                images=images.get("train"))  # fmt: skip
        runs[method].append(
            train_on_groups(
                model.apply, inits[k], recipe.make_optimizer(), cfg.objective(method, counts),
                data.splits, data.group_names, balanced=recipe.balanced, seed=cfg.seed + k,
                epochs=recipe.epochs, checkpoint_dir=Path(checkpoint_dir) / method / f"seed{k}",
                tags={"method": method, "seed": cfg.seed + k}, **common,
                responses=journeys[k][0].measure if k in journeys else None,
            )
        )  # fmt: skip
    recipes = {m: cfg.recipe(m) for m in runs}
    methods = summarize_methods(
        runs,
        {m: r.selection for m, r in recipes.items()},
        data.group_names,
        extra={m: {"training": r._asdict()} for m, r in recipes.items()},
    )
    config = dataclasses.asdict(cfg) | {"devices": mesh.size, "processes": jax.process_count()}
    published = benchmark(cfg.loader).published
    shown = ("arch", "width", "image_size", "epochs", "lr", "batch_size", "fixture")
    results = {
        "methods": methods, "split": "test", "seeds": cfg.seeds, "group_names": data.group_names,
        "target": data.target, "spurious": data.spurious,
        **({"published": dict(published)} if published else {}),
        "config": {k: config[k] for k in shown},
    }  # fmt: skip
    if journeys:
        results["journey"] = journey_results(journeys, runs, recipes, cfg.sd.coef)
    records = [rec for rs in runs.values() for r in rs for rec in r["records"]]
    curves = validation_curves(runs)
    return Results(config, results, records, curves, data.describe(), data.group_names)


def initial_variables(cfg: Config, model, seed: int) -> dict[str, Any]:
    """Seed ``seed``'s initial variables (random init, then the pretrained weights if given)."""
    import jax

    from ntkdyn.models.pretrained import load_pretrained_resnet
    from ntkdyn.models.resnet import init_resnet

    variables = init_resnet(model, jax.random.PRNGKey(cfg.seed + seed), cfg.image_size)
    if cfg.pretrained:
        variables = load_pretrained_resnet(variables, cfg.pretrained)
    return jax.device_get(variables)


def report(res: Results, run_dir: str | Path) -> None:
    """Write config.json, metrics.jsonl, results.json, summary.md and the figures into ``run_dir``.

    Figures (``<name>`` the benchmark's prefix): ``<name>_group_accuracy``, per-group test accuracy
    under each method's headline rule, and ``<name>_validation``, validation accuracy per epoch.
    """
    from ntkdyn.plots.celeba import plot_group_accuracy, plot_validation_curves
    from ntkdyn.runs import RunDir
    from ntkdyn.runs.report import group_summary_markdown

    cfg, methods, rd = res.config, res.results["methods"], RunDir(run_dir)
    bench = benchmark(cfg["loader"])
    init = f"pretrained {cfg['pretrained']}" if cfg["pretrained"] else "random init"
    setup = [
        f"Data: `{cfg['data_dir']}`; {cfg['arch']} (width {cfg['width']}), {cfg['image_size']} "
        f"px, {init}, batch {cfg['batch_size']}, {cfg['seeds']} seed(s).",
        "",
    ]
    setup += [f"* {m}: {Recipe(**e['training']).describe()}" for m, e in methods.items()]
    text = group_summary_markdown(
        bench.title, setup, methods, res.group_names, res.counts,
        rules=(*SELECTIONS, "val_worst_threshold"),
        published=bench.published, note=bench.fixture_note if cfg["fixture"] else "",
    )  # fmt: skip
    rd.write_config(cfg)
    rd.write_metrics(res.records)
    rd.write_results(res.results)
    rd.write_text("summary.md", text)
    accs = {m: r["group_acc"] for m, r in methods.items()}
    worst = {m: r["worst_group_acc"] for m, r in methods.items()}
    fig = plot_group_accuracy(accs, res.group_names, worst)
    rd.save_figure(fig, f"{bench.figure}_group_accuracy")
    rd.save_figure(plot_validation_curves(res.curves), f"{bench.figure}_validation")


def configure(parser: argparse.ArgumentParser, base: Config | None = None) -> None:
    """Arguments: one flag per :class:`Config` field, plus ``--method``, ``--preset`` and the run's."""
    from ntkdyn.experiments.celeba import PRESETS

    from ntkdyn.settings import add_arguments

    base = base or Config()
    quick = type(base)(**PRESETS["quick"])  # its defaults are shown beside the published ones
    add_arguments(parser, base, skip=("methods", "crop", "fixture"), quick=quick)
    add = parser.add_argument
    add("--method", dest="methods", action="append", choices=METHODS, default=argparse.SUPPRESS,
        help="method to run (repeatable; default: all three)")  # fmt: skip
    add("--crop", type=_crop, metavar="PIXELS|auto", default=argparse.SUPPRESS,
        help="centre-crop side in image pixels (default: auto, the shorter image side)")  # fmt: skip
    add("--preset", choices=("paper", "quick", "real-10k"), default=None,
        help="defaults: paper (the published protocols), quick (= --quick), real-10k (from "
        "scratch on a CPU; ntkdyn.experiments.celeba.PRESETS); flags override them")  # fmt: skip
    add("--quick", action="store_true",
        help="synthetic fixture unless --data-dir, 32 px, ResNet-18 width 8, 1 seed: a smoke run")  # fmt: skip
    add("--resume", action="store_true", help="continue from the checkpoints in --out")
    add("--out", default=f"runs/{base.loader}", help="output directory")
    add("--make-fixture", metavar="DIR", default=None, help="write the synthetic fixture, exit")
    add("--fixture-size", type=int, nargs=3, metavar=("TRAIN", "VAL", "TEST"),
        default=(600, 160, 160), help="images per split of the synthetic fixture")  # fmt: skip
    from ntkdyn.commands import deprecated_alias  # the 0.2 spellings (CHANGELOG.md)

    for action in list(parser._actions):
        for new in (o for o in action.option_strings if o.startswith(("--sd.", "--dro."))):
            old = new.replace(".", "-", 1)
            deprecated_alias(parser, old, new, action.dest, type=action.type, nargs=action.nargs)


def _crop(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected pixels or auto, got {text!r}") from None


def resolve(args: argparse.Namespace, config: type[Config] = Config) -> Config:
    """The settings of parsed arguments: a preset's defaults, then the flags given.

    Raises:
        ConfigError: a bad value (the command line names the flag).
        InputError, FileNotFoundError: conflicting presets, a missing path.
    """
    from ntkdyn.experiments.celeba import PRESETS  # the protocol's presets, CelebA's

    from ntkdyn.errors import InputError
    from ntkdyn.settings import from_arguments

    preset = args.preset or ("quick" if args.quick else "paper")
    if args.quick and preset != "quick":
        raise InputError(f"--quick: conflicts with --preset {args.preset}; pass one of them")
    base = config(**PRESETS[preset])
    if hasattr(args, "methods"):
        args.methods = tuple(dict.fromkeys(args.methods))
    fixture = preset == "quick" and getattr(args, "data_dir", None) is None
    cfg = dataclasses.replace(from_arguments(base, args, skip=("fixture",)), fixture=fixture)
    if not cfg.fixture and cfg.data_dir is None:
        raise InputError("--data-dir: required (the dataset's folder); or --quick for a fixture")
    if not cfg.fixture and not Path(cfg.data_dir).is_dir():
        raise FileNotFoundError(f"--data-dir: {cfg.data_dir} is not a directory")
    if cfg.pretrained and not Path(cfg.pretrained).is_file():
        raise FileNotFoundError(
            f"--pretrained: {cfg.pretrained} not found; pass a local .pth or .safetensors file"
        )
    return cfg


def main(args: argparse.Namespace, config: type[Config] = Config) -> int:
    """The command: check everything, :func:`run`, then :func:`report` (process 0 writes); a run
    that fails before its first checkpoint removes the folder it created."""
    import jax

    from ntkdyn.errors import InputError
    from ntkdyn.runs import RunDir, check_same_config
    from ntkdyn.runs.report import group_headlines
    from ntkdyn.runs.resume import interruptible
    from ntkdyn.train.dataparallel import initialize_multihost, lead_first

    sizes = tuple(args.fixture_size)
    if min(sizes) < 4:
        raise InputError(f"--fixture-size: need >= 4 images per split, got {list(sizes)}")
    if args.make_fixture:
        given = {k: getattr(args, k) for k in ("seed", "target", "spurious") if hasattr(args, k)}
        benchmark(config().loader).write_fixture(Path(args.make_fixture), config(**given), sizes)
        print(f"wrote a synthetic fixture to {args.make_fixture}")
        return 0
    cfg, out = resolve(args, config), Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: {out} exists and is not a folder; choose another --out")
    initialize_multihost()
    lead, devices = jax.process_index() == 0, len(jax.devices())
    if cfg.fixture:
        cfg = dataclasses.replace(cfg, data_dir=str(out / "fixture"))
    else:
        load_data(cfg, devices)
    settings = dataclasses.asdict(cfg) | {"devices": devices, "processes": jax.process_count()}
    if args.resume:  # refuse to continue a run of another dataset, protocol or methods
        try:
            check_same_config(out / "config.json", settings, ignore=RESUMABLE)
        except ValueError as exc:
            raise InputError(f"{exc}, or a fresh --out") from None
    elif any((out / "checkpoints").rglob("ckpt_*.npz")):
        raise InputError(f"--out: {out} holds a run's checkpoints; pass --resume or a fresh --out")
    created = not out.exists()
    with interruptible(getattr(args, "command", None) or "groups"):  # Ctrl-C: the resume line
        try:
            bench, folder = benchmark(cfg.loader), Path(cfg.data_dir)
            if cfg.fixture:  # every process reaches the barrier; a missing fixture is written once
                mark, write = folder / bench.marker, bench.write_fixture
                lead_first(lambda: mark.is_file() or write(folder, cfg, sizes), "fx")
            counts = load_data(cfg, devices).describe()
            if lead:
                RunDir(out).write_config(settings)
                print(counts, file=sys.stderr)
            res = run(cfg, checkpoint_dir=out / "checkpoints", resume=bool(args.resume))
        except BaseException:
            if created and lead and not any((out / "checkpoints").rglob("ckpt_*.npz")):
                shutil.rmtree(out, ignore_errors=True)
            raise
    if lead:
        report(res, out)
        print(*group_headlines(res.results["methods"], benchmark(cfg.loader).published), sep="\n")
        print(f"wrote {out}/results.json, summary.md, figures")
    return 0
