"""CelebA blond hair vs gender: ERM, class-conditional Spectral Decoupling and Group DRO, worst-group accuracy.

Pezeshki et al. 2021, Sec. 5 and Table 2. Target ``Blond_Hair``, spurious attribute ``Male``; blond
men are under 1 % of the training split, and ERM fails on them.

Protocol (:class:`Config`, the defaults): official splits; ResNet-50 with ImageNet weights imported
from a local file (``--pretrained``), one logit, logistic loss, batch 128, 5 seeds; centre crop of
side = image width (178 of 178 × 218), resize 224, ImageNet normalisation; evaluation at the end of
every epoch. Methods:

* ``erm`` and ``sd`` as Pezeshki et al. run them: Adam lr 1e-5, no weight decay, 3 epochs, the
  epoch selected by validation average accuracy; ``sd`` = logistic + 0.1·mean_{y=1}(ŷ − 2.5)² +
  0.1·mean_{y=0}(ŷ − 0.44)² (``ClassConditionalSD(coef=(0.1, 0.1), target=(0.44, 2.5))``).
* ``groupdro`` as Sagawa et al. 2020 run it (kohpangwei/group_DRO): group-balanced sampling with
  replacement (``--reweight_groups``), SGD momentum 0.9 with PyTorch's coupled weight decay, lr 1e-5,
  weight decay 0.1 (their strong-ℓ2 CelebA setting), 50 epochs, group-weight step size 0.01,
  adjustment C = 0, the epoch selected by validation worst-group accuracy.

Every method is reported under both selection rules (``by_val_avg``, ``by_val_worst``);
``--selection`` makes one rule the headline for all. ``--balanced`` / ``--no-balanced`` turn
group-balanced sampling on or off for every method.

Commands::

    ntkdyn celeba --data-dir /data/celeba --pretrained resnet50-11ad3fa6.pth --out runs/celeba
    ntkdyn celeba --quick --out /tmp/celeba            # synthetic fixture, small ResNet-18, CPU, < 1 min
    ntkdyn celeba --make-fixture /tmp/celeba_fixture   # write the synthetic fixture only
    ntkdyn celeba --preset real-10k --data-dir ../shared/data/celeba-10k --method erm \\
        --out runs/celeba10k/erm                       # real faces, from scratch, on a CPU

Expected with real CelebA (published, mean ± std over 5 seeds, test accuracy %, average / worst
group): ERM 94.61 ± 0.67 / 40.35 ± 1.68; SD 91.64 ± 0.61 / 83.24 ± 2.01; Group DRO 91.76 ± 0.28 /
87.78 ± 0.96. On the synthetic fixture (``--quick``: 600 training images, 1 % blond men, 32-pixel
images, ResNet-18 of width 8 trained from scratch; ERM and SD with Adam lr 1e-3, Group DRO with
SGD lr 0.05, 4 epochs each) Group DRO's worst-group accuracy is expected above ERM's; the numbers
are not comparable with the published ones. ``--preset real-10k`` (:meth:`Config.real_10k`) is the
from-scratch protocol for the 10,000-image subset; its measured cost and results are in
``docs/results/celeba_10k.md``.

Scale and durability: the batch is sharded over all devices (``jax.sharding``); ``--bf16``
computes in bfloat16 on GPUs. Checkpoints are written every ``--checkpoint-every`` steps and at the
end of each epoch under ``OUT/checkpoints/<method>/seed<k>/``; ``--resume`` continues a killed run
from them and reaches the same final numbers as an uninterrupted run. Every argument is checked
before anything is written; a run that fails before its first checkpoint leaves no output folder.

Several processes (:func:`ntkdyn.train.dataparallel.initialize_multihost`): every process runs the
same command with the same ``--out`` (a shared file system) and feeds its slice of each global
batch; process 0 writes the files. Set, per process, ``JAX_COORDINATOR_ADDRESS=host:port`` (process
0's host and a free port), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (0 … N − 1)::

    # two processes on one machine, one CPU device each (gloo collectives)
    JAX_COORDINATOR_ADDRESS=127.0.0.1:12355 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 \\
        ntkdyn celeba --quick --out /tmp/c2 &
    JAX_COORDINATOR_ADDRESS=127.0.0.1:12355 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=1 \\
        ntkdyn celeba --quick --out /tmp/c2

    # SLURM, one process per GPU (JAX reads SLURM_* itself):
    srun --nodes=2 --ntasks-per-node=4 --gpus-per-task=1 \\
        env NTKDYN_MULTIHOST=1 ntkdyn celeba --data-dir /data/celeba --pretrained r50.pth --out runs/c

How each variable is read: :func:`ntkdyn.train.dataparallel.initialize_multihost`. The global
``--batch-size`` must divide over all devices. The results equal a one-process run on as many
devices (``tests/test_celeba_multiprocess.py``).

Outputs: ``config.json``, ``metrics.jsonl`` (training loss every ``--log-every`` steps and the
evaluations), ``results.json`` (``{"methods": {m: {"avg_acc", "worst_group_acc", "group_acc",
"selection", "by_val_avg", "by_val_worst", "training", ...}}}``, test-split fractions, mean over
seeds), ``summary.md``, ``celeba_group_accuracy.{png,pdf}``, ``celeba_validation.{png,pdf}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

HELP = (
    __doc__.split("\n\n")[0]
    + "\n\nPaper protocol by default; --quick for a CPU smoke test. See the module docstring."
)

METHODS = ("erm", "sd", "groupdro")
PUBLISHED = {  # Pezeshki et al. 2021, Table 2: test accuracy (%), mean ± std over 5 seeds
    "erm": {"avg": (94.61, 0.67), "worst": (40.35, 1.68)},
    "sd": {"avg": (91.64, 0.61), "worst": (83.24, 2.01)},
    "groupdro": {"avg": (91.76, 0.28), "worst": (87.78, 0.96)},
}
SELECTIONS = ("val_avg", "val_worst")
ARCHS = ("resnet10", "resnet18", "resnet50")
OPTIMIZERS = ("adam", "sgd")
PRESETS = ("paper", "quick", "real-10k")
COUNTS = (  # settings that count something and need at least one
    "width", "image_size", "batch_size", "eval_batch_size", "epochs", "dro_epochs", "seeds",
    "checkpoint_every", "log_every", "workers",
)  # fmt: skip


# ---- settings ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of a CelebA run; the defaults are the published protocols (module docstring).

    ``optimizer`` … ``epochs`` are ERM's and SD's (Pezeshki et al.), ``dro_*`` Group DRO's
    (Sagawa et al.). Weight decay is decoupled (AdamW) for Adam and coupled (gradient + wd·θ, as
    PyTorch's ``SGD(weight_decay=…)``) for SGD. Values are checked on construction
    (:class:`ntkdyn.settings.ConfigError` names the field, the command line its flag).

    Attributes:
        data_dir: CelebA folder (img_align_celeba/, list_attr_celeba.txt|csv, list_eval_partition.txt|csv).
        methods: methods to run, among erm, sd, groupdro.
        arch: network, resnet10, resnet18 or resnet50.
        width: first-stage channels (64 standard).
        pretrained: ImageNet weights, a torchvision .pth or timm .safetensors file.
        image_size: input side length in pixels.
        crop: centre-crop side in image pixels (None: the image width, 178 of 178x218).
        batch_size: global batch size.
        eval_batch_size: evaluation batch size.
        optimizer: ERM and SD optimizer, adam or sgd.
        lr: ERM and SD learning rate.
        momentum: ERM and SD SGD momentum.
        weight_decay: ERM and SD weight decay.
        epochs: ERM and SD epochs.
        dro_optimizer: Group DRO optimizer, adam or sgd.
        dro_lr: Group DRO learning rate.
        dro_momentum: Group DRO SGD momentum.
        dro_weight_decay: Group DRO weight decay.
        dro_epochs: Group DRO epochs.
        dro_step_size: Group DRO step size of the group weights.
        dro_adjustment: Group DRO generalisation adjustment C.
        sd_coef: SD coefficients (class 0, class 1).
        sd_target: SD logit targets (class 0, class 1).
        balanced: group-balanced sampling with replacement for every method (None: Group DRO only).
        selection: headline epoch selection for every method, val_avg or val_worst (None: val_worst
            for Group DRO, val_avg for the others).
        seeds: number of seeds.
        seed: base seed (seed k uses seed + k).
        target: target attribute.
        spurious: spurious attribute.
        bf16: compute in bfloat16 (GPUs); parameters stay float32.
        cache_images: decode every image once and keep it in memory (8-bit).
        checkpoint_every: steps between checkpoints (and one per epoch).
        log_every: steps between training-metric records.
        workers: image-decoding threads.
        prefetch: batches decoded ahead.
        fixture: the data is the synthetic fixture (set by --quick without --data-dir).
    """

    data_dir: str | None = None
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
    dro_optimizer: str = "sgd"
    dro_lr: float = 1e-5
    dro_momentum: float = 0.9
    dro_weight_decay: float = 0.1
    dro_epochs: int = 50
    dro_step_size: float = 0.01
    dro_adjustment: float = 0.0
    sd_coef: tuple[float, float] = (0.1, 0.1)
    sd_target: tuple[float, float] = (0.44, 2.5)
    balanced: bool | None = None
    selection: str | None = None
    seeds: int = 5
    seed: int = 0
    target: str = "Blond_Hair"
    spurious: str = "Male"
    bf16: bool = False
    cache_images: bool = False
    checkpoint_every: int = 500
    log_every: int = 50
    workers: int = 8
    prefetch: int = 2
    fixture: bool = False

    def __post_init__(self):
        from ntkdyn.data.celeba import CELEBA_ATTRIBUTES
        from ntkdyn.settings import (
            ConfigError,
            Rule,
            check,
            integer,
            number,
            one_of,
            optional,
            pair,
        )

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
                "prefetch": integer(0),
                "crop": optional(integer(1)),
                **dict.fromkeys(("lr", "dro_lr", "dro_step_size"), rate),
                **dict.fromkeys(("weight_decay", "dro_weight_decay", "dro_adjustment"), decay),
                **dict.fromkeys(("momentum", "dro_momentum"), number(0, 1, high_open=True)),
                **dict.fromkeys(("optimizer", "dro_optimizer"), one_of(*OPTIMIZERS)),
                "arch": one_of(*ARCHS),
                "selection": optional(one_of(*SELECTIONS)),
                "sd_coef": pair(decay),
                "sd_target": pair(number()),
            },
        )
        if self.spurious == self.target:
            raise ConfigError("spurious", f"must differ from --target, got {self.spurious!r}")
        if self.fixture:
            attribute = Rule(lambda v: v in CELEBA_ATTRIBUTES, "a CelebA attribute name")
            check(self, dict.fromkeys(("target", "spurious"), attribute))

    @classmethod
    def quick(cls, **overrides: Any) -> Config:
        """``--quick``: the synthetic fixture, 32 px, ResNet-18 of width 8, 1 seed, 4 epochs (CPU).

        ERM and SD: Adam lr 1e-3; Group DRO: group-balanced sampling, SGD momentum 0.9, lr 0.05,
        weight decay 1e-4 (from scratch, a larger step than the pretrained protocol's 1e-5).
        """
        settings = dict(
            arch="resnet18",
            width=8,
            image_size=32,
            batch_size=32,
            eval_batch_size=80,
            lr=1e-3,
            epochs=4,
            dro_lr=0.05,
            dro_weight_decay=1e-4,
            dro_epochs=4,
            seeds=1,
            checkpoint_every=10,
            log_every=5,
            fixture=True,
        )
        return cls(**(settings | overrides))

    @classmethod
    def real_10k(cls, **overrides: Any) -> Config:
        """``--preset real-10k``: the 10,000-face subset on a CPU, from scratch.

        Sagawa et al. 2020's from-scratch anchor (ResNet-10 of variable width, SGD momentum 0.9,
        lr 0.01, weight decay 1e-4, batch 128, group-balanced sampling for Group DRO) at 64 px,
        width 16 and 20 epochs instead of 50: what fits the CPU budget of
        ``docs/results/celeba_10k.md`` (about 10 s of one core per epoch, decoded images in memory).
        """
        settings = dict(
            arch="resnet10",
            width=16,
            image_size=64,
            optimizer="sgd",
            lr=0.01,
            weight_decay=1e-4,
            epochs=20,
            dro_lr=0.01,
            dro_weight_decay=1e-4,
            dro_epochs=20,
            cache_images=True,
            checkpoint_every=100,
            log_every=10,
            workers=2,
        )
        return cls(**(settings | overrides))

    def recipe(self, method: str) -> Recipe:
        """How ``method`` is optimised, sampled and selected under these settings."""
        dro = method == "groupdro"
        return Recipe(
            optimizer=self.dro_optimizer if dro else self.optimizer,
            lr=self.dro_lr if dro else self.lr,
            momentum=self.dro_momentum if dro else self.momentum,
            weight_decay=self.dro_weight_decay if dro else self.weight_decay,
            epochs=self.dro_epochs if dro else self.epochs,
            balanced=dro if self.balanced is None else self.balanced,
            selection=self.selection or ("val_worst" if dro else "val_avg"),
        )


class Recipe(NamedTuple):
    """One method's optimisation: optimizer, schedule, sampling and epoch selection."""

    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    epochs: int
    balanced: bool
    selection: str


def check_paths(cfg: Config) -> None:
    """Check the files a run needs exist (no data is read).

    Raises:
        ValueError: ``--data-dir`` missing for a run on real data.
        FileNotFoundError: ``--pretrained`` or ``--data-dir`` does not exist.
    """
    if not cfg.fixture:
        if cfg.data_dir is None:
            raise ValueError(
                "--data-dir: required (the CelebA folder); or use --quick for the synthetic fixture"
            )
        if not Path(cfg.data_dir).is_dir():
            raise FileNotFoundError(
                f"--data-dir: {cfg.data_dir} is not a directory; pass the folder of your CelebA copy"
            )
    if cfg.pretrained and not Path(cfg.pretrained).is_file():
        raise FileNotFoundError(
            f"--pretrained: {cfg.pretrained} not found; pass a local .pth or .safetensors file"
        )


def check_against_data(cfg: Config, n_train: int, devices: int, first_image: str | None) -> None:
    """Check the settings that depend on the data and the devices, before anything is written.

    Args:
        cfg: the settings.
        n_train: training-split size.
        devices: devices of the run (all processes).
        first_image: one image of the data set (its size bounds ``--crop``), or None.

    Raises:
        ValueError: naming the flag to change.
    """
    from PIL import Image

    from ntkdyn.data.celeba import centre_crop_box

    if cfg.batch_size > n_train:
        raise ValueError(
            f"--batch-size: {cfg.batch_size} exceeds the {n_train} training images; lower it"
        )
    if cfg.batch_size % devices:
        raise ValueError(
            f"--batch-size: {cfg.batch_size} is not divisible by the {devices} devices; "
            f"choose a multiple of {devices}"
        )
    if first_image is not None and cfg.crop is not None:
        with Image.open(first_image) as img:
            centre_crop_box(*img.size, cfg.crop)


# ---- objective and optimizer ---------------------------------------------------------------------


def make_objective(method: str, cfg: Config, train_counts: np.ndarray):
    """The training objective of ``method`` (``ntkdyn.objectives``)."""
    from ntkdyn.objectives import ERM, ClassConditionalSD, GroupDRO

    if method == "erm":
        return ERM()
    if method == "sd":
        return ClassConditionalSD(coef=tuple(cfg.sd_coef), target=tuple(cfg.sd_target))
    return GroupDRO(
        num_groups=4,
        step_size=cfg.dro_step_size,
        adjustment=cfg.dro_adjustment,
        group_counts=tuple(int(c) for c in np.maximum(train_counts, 1)),
    )


def make_optimizer(recipe: Recipe):
    """Adam with decoupled weight decay (AdamW) or SGD with PyTorch's coupled weight decay.

    SGD: g ← ∇L + wd·θ, b ← μ·b + g, θ ← θ − lr·b over every parameter, as
    ``torch.optim.SGD(params, lr, momentum=0.9, weight_decay=wd)`` in Sagawa et al.'s ``train.py``
    (:func:`ntkdyn.train.optimizers.pytorch_optimizer`).
    """
    from ntkdyn.train.optimizers import pytorch_optimizer

    name = "adamw" if recipe.optimizer == "adam" else "sgd"
    return pytorch_optimizer(
        name, recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )


# ---- training ------------------------------------------------------------------------------------


def initial_variables(cfg: Config, model, seed: int) -> dict[str, Any]:
    """Seed ``seed``'s initial variables (random init, then the pretrained weights if given); shared by the methods."""
    import jax

    from ntkdyn.models.pretrained import load_pretrained_resnet
    from ntkdyn.models.resnet import init_resnet

    variables = init_resnet(model, jax.random.PRNGKey(cfg.seed + seed), cfg.image_size)
    if cfg.pretrained:
        variables = load_pretrained_resnet(variables, cfg.pretrained)
    return jax.device_get(variables)


def train_method(
    cfg: Config, data, method: str, seed: int, out: Path, mesh, resume: bool, *, model, init, images
) -> dict[str, Any]:
    """Train one (method, seed) with its recipe; evaluate val and test after every epoch.

    Returns:
        ``{"epochs": [per-epoch {"val", "test"}], "records": [...], "selected": {rule: {...}}}``.
    """
    import jax

    from ntkdyn.data.celeba import epoch_order, iterate_batches
    from ntkdyn.train.dataparallel import (
        init_train_state,
        make_eval_step,
        make_train_step,
        predict_logits,
        replicate,
        shard_batch,
    )
    from ntkdyn.train.epochs import train_epochs
    from ntkdyn.train.groups import group_balanced_order, group_metrics, select_epoch

    recipe = cfg.recipe(method)
    train = data.splits["train"]
    shard = (jax.process_index(), jax.process_count())
    objective = make_objective(method, cfg, train.group_counts())
    optimizer = make_optimizer(recipe)
    steps = len(train) // cfg.batch_size
    run_seed = cfg.seed + seed
    pipeline = dict(
        image_size=cfg.image_size,
        crop=cfg.crop,
        workers=cfg.workers,
        prefetch=cfg.prefetch,
        shard=shard,
    )

    def batches(epoch: int, start: int):
        if recipe.balanced:
            order = group_balanced_order(train.group, seed=run_seed, epoch=epoch)
        else:
            order = epoch_order(len(train), seed=run_seed, epoch=epoch)
        order = order[start * cfg.batch_size : steps * cfg.batch_size]
        for b in iterate_batches(
            train,
            order,
            batch_size=cfg.batch_size,
            drop_last=True,
            images=images.get("train"),
            **pipeline,
        ):
            yield shard_batch({k: b[k] for k in ("image", "y", "group")}, mesh)

    eval_fn = make_eval_step(model.apply)

    def evaluate(state) -> dict[str, Any]:
        result = {}
        for name in ("val", "test"):
            split = data.splits[name]
            index, logits = predict_logits(
                eval_fn,
                state,
                iterate_batches(
                    split,
                    np.arange(len(split)),
                    batch_size=cfg.eval_batch_size,
                    pad_to_multiple=len(mesh.local_devices),
                    images=images.get(name),
                    **pipeline,
                ),
                mesh,
            )
            pred = (logits > 0).astype(np.int32)
            result[name] = group_metrics(pred, split.y[index], split.group[index], data.group_names)
        return result

    history = train_epochs(
        init_train_state(init(), optimizer, objective),
        make_train_step(model.apply, optimizer, objective),
        batches,
        evaluate,
        epochs=recipe.epochs,
        steps_per_epoch=steps,
        batch_size=cfg.batch_size,
        checkpoint_dir=out / "checkpoints" / method / f"seed{seed}",
        resume=resume,
        checkpoint_every=cfg.checkpoint_every,
        log_every=cfg.log_every,
        place=lambda s: replicate(s, mesh),
        tags={"method": method, "seed": seed},
        desc=f"{method}/seed{seed}",
    )
    selected = {}
    for rule in SELECTIONS:
        best = select_epoch(history["epochs"], rule)
        selected[rule] = {"epoch": best + 1, **history["epochs"][best]}
    return {**history, "selected": selected}


# ---- aggregation and reports --------------------------------------------------------------------


def aggregate(
    runs: dict[str, list[dict[str, Any]]], cfg: Config, group_names: list[str]
) -> dict[str, Any]:
    """results.json: per method the mean over seeds of the selected epoch's test metrics (fractions).

    The method's headline rule (:meth:`Config.recipe`) fills the top level; ``by_val_avg`` and
    ``by_val_worst`` hold both rules.
    """
    from ntkdyn.train.groups import summarize_selected

    methods = {}
    for method, seed_runs in runs.items():
        recipe = cfg.recipe(method)
        blocks = {
            rule: summarize_selected([r["selected"][rule] for r in seed_runs], rule, group_names)
            for rule in SELECTIONS
        }
        entry = dict(blocks[recipe.selection])
        for rule in SELECTIONS:
            entry[f"by_{rule}"] = blocks[rule]
        entry["training"] = recipe._asdict()
        methods[method] = entry
    return {
        "methods": methods,
        "split": "test",
        "seeds": cfg.seeds,
        "group_names": group_names,
        "target": cfg.target,
        "spurious": cfg.spurious,
        "published": PUBLISHED,
    }


def summary_markdown(results: dict[str, Any], cfg: Config, counts: str) -> str:
    """summary.md: measured numbers beside the published ones."""
    from ntkdyn.runs import format_mean_std, markdown_table

    init = f"pretrained {cfg.pretrained}" if cfg.pretrained else "random init"
    lines = [
        "# CelebA: blond hair vs gender (Pezeshki et al. 2021, Table 2)",
        "",
        f"Data: `{cfg.data_dir}`; {cfg.arch} (width {cfg.width}), {cfg.image_size} px, {init}, "
        f"batch {cfg.batch_size}, {cfg.seeds} seed(s).",
        "",
    ]
    for m in results["methods"]:
        r = cfg.recipe(m)
        lines.append(
            f"* {m}: {r.optimizer} lr {r.lr:g}"
            + (f" momentum {r.momentum:g}" if r.optimizer == "sgd" else "")
            + f", weight decay {r.weight_decay:g}, {r.epochs} epochs, "
            f"{'group-balanced' if r.balanced else 'uniform'} sampling, epoch by {r.selection}"
        )
    lines.append("")
    if cfg.fixture:
        lines += [
            "**These numbers come from the synthetic CelebA-format fixture, not from CelebA: the published CelebA "
            "numbers were not reproducible here, and the two columns are not comparable.**",
            "",
        ]
    names = results["group_names"]
    header = ["method", "test avg acc (%)", "test worst-group acc (%)", *names]
    header += ["published avg", "published worst"]
    for rule in SELECTIONS:
        rows = []
        for m, res in results["methods"].items():
            r, pub = res[f"by_{rule}"], PUBLISHED[m]
            rows.append(
                [
                    m,
                    format_mean_std(r["avg_acc"], r["avg_acc_std"], digits=2),
                    format_mean_std(r["worst_group_acc"], r["worst_group_acc_std"], digits=2),
                    *(
                        format_mean_std(r["group_acc"].get(g)) if g in r["group_acc"] else "–"
                        for g in names
                    ),
                    format_mean_std(*pub["avg"], scale=1.0, digits=2),
                    format_mean_std(*pub["worst"], scale=1.0, digits=2),
                ]
            )
        lines += [f"Epoch selected by {rule}:", "", *markdown_table(header, rows), ""]
    lines += ["Group counts:", "", "```", counts, "```", ""]
    return "\n".join(lines)


# ---- command line --------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ntkdyn celeba``: one flag per :class:`Config` field, plus the run's own."""
    from ntkdyn.settings import add_arguments

    add_arguments(parser, Config(), skip=("methods", "crop", "fixture"))
    parser.add_argument(
        "--method",
        dest="methods",
        action="append",
        choices=METHODS,
        default=argparse.SUPPRESS,
        help="method to run (repeatable; default: all three)",
    )
    parser.add_argument(
        "--crop",
        type=_crop,
        metavar="PIXELS|auto",
        default=argparse.SUPPRESS,
        help="centre-crop side in image pixels (default: auto, the image width: 178 of 178x218)",
    )
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        default=None,
        help="defaults: paper (the published protocols), quick (= --quick), real-10k "
        "(Config.real_10k: the 10,000-face subset from scratch on a CPU); flags override them",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="synthetic fixture, 32 px, ResNet-18 width 8, 1 seed: a CPU smoke run",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the checkpoints in --out"
    )
    parser.add_argument("--out", default="runs/celeba", help="output directory")
    parser.add_argument(
        "--make-fixture",
        metavar="DIR",
        default=None,
        help="write the synthetic CelebA-format fixture to DIR and exit",
    )
    parser.add_argument(
        "--fixture-size",
        type=int,
        nargs=3,
        metavar=("TRAIN", "VAL", "TEST"),
        default=(600, 160, 160),
        help="images per split of the synthetic fixture",
    )


def _crop(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of pixels or auto, got {text!r}"
        ) from None


def resolve(args: argparse.Namespace) -> Config:
    """The :class:`Config` of parsed arguments: a preset's defaults, then the flags given.

    Raises:
        ConfigError: a bad value (the command line names the flag).
        ValueError, FileNotFoundError: conflicting presets, a missing path.
    """
    from ntkdyn.settings import from_arguments

    preset = args.preset or ("quick" if args.quick else "paper")
    if args.quick and preset != "quick":
        raise ValueError(f"--quick: conflicts with --preset {args.preset}; pass one of them")
    base = {"paper": Config, "quick": Config.quick, "real-10k": Config.real_10k}[preset]()
    if hasattr(args, "methods"):
        args.methods = tuple(dict.fromkeys(args.methods))
    fixture = preset == "quick" and getattr(args, "data_dir", None) is None
    cfg = dataclasses.replace(from_arguments(base, args, skip=("fixture",)), fixture=fixture)
    check_paths(cfg)
    return cfg


def run(args: argparse.Namespace) -> int:
    """``ntkdyn celeba``: validate everything, then train the methods and seeds into ``--out``.

    A run that fails before its first checkpoint removes the output folder it created.
    """
    from ntkdyn.data.celeba_fixture import write_celeba_fixture

    if min(args.fixture_size) < 4:
        raise ValueError(
            f"--fixture-size: need >= 4 images per split (one per group), got {list(args.fixture_size)}"
        )
    if args.make_fixture:
        n_train, n_val, n_test = args.fixture_size
        path = write_celeba_fixture(
            args.make_fixture,
            seed=getattr(args, "seed", 0),
            n_train=n_train,
            n_val=n_val,
            n_test=n_test,
            target=getattr(args, "target", "Blond_Hair"),
            spurious=getattr(args, "spurious", "Male"),
        )
        print(f"wrote a synthetic CelebA-format fixture to {path}")
        return 0
    cfg = resolve(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {out} exists and is not a folder; choose another --out")

    import jax

    from ntkdyn.data.celeba import load_celeba
    from ntkdyn.train.dataparallel import initialize_multihost

    initialize_multihost()
    devices = len(jax.devices())
    if cfg.fixture:
        check_against_data(cfg, args.fixture_size[0], devices, None)
    else:
        data = load_celeba(cfg.data_dir, target=cfg.target, spurious=cfg.spurious)
        train = data.splits["train"]
        check_against_data(cfg, len(train), devices, train.paths[0] if len(train) else None)
    created = not out.exists()
    try:
        if cfg.fixture:
            cfg = dataclasses.replace(cfg, data_dir=str(out / "fixture"))
            _write_fixture_once(cfg, args)
        return run_experiment(cfg, out, resume=bool(args.resume))
    except BaseException:
        resumable = any((out / "checkpoints").rglob("ckpt_*.npz"))
        if created and not resumable and jax.process_index() == 0:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _write_fixture_once(cfg: Config, args: argparse.Namespace) -> None:
    """Process 0 writes the fixture; the others wait, then write their own if they cannot see it."""
    import jax

    from ntkdyn.data.celeba_fixture import write_celeba_fixture

    def write() -> None:
        if not (Path(cfg.data_dir) / "list_attr_celeba.txt").is_file():
            n_train, n_val, n_test = args.fixture_size
            write_celeba_fixture(
                cfg.data_dir,
                seed=cfg.seed,
                n_train=n_train,
                n_val=n_val,
                n_test=n_test,
                target=cfg.target,
                spurious=cfg.spurious,
            )

    if jax.process_index() == 0:
        write()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("celeba fixture written")
        write()  # hosts without a shared file system: the same bytes (fixed seed)


def run_experiment(cfg: Config, out: Path, *, resume: bool = False) -> int:
    """Run every (method, seed) of ``cfg`` into ``out`` and write the reports.

    Args:
        cfg: the settings, with ``data_dir`` set.
        out: output folder.
        resume: continue from the checkpoints in ``out``.

    Returns:
        0.
    """
    import jax
    import jax.numpy as jnp

    from ntkdyn.data.celeba import decode_split, load_celeba
    from ntkdyn.models.resnet import RESNET_ARCHS
    from ntkdyn.plots.celeba import plot_group_accuracy, plot_validation_curves
    from ntkdyn.runs import RunDir, check_same_config
    from ntkdyn.train.dataparallel import data_mesh, initialize_multihost

    check_paths(cfg)
    initialize_multihost()
    data = load_celeba(cfg.data_dir, target=cfg.target, spurious=cfg.spurious)
    mesh = data_mesh()
    train = data.splits["train"]
    check_against_data(
        cfg, len(train), len(mesh.devices.flat), train.paths[0] if len(train) else None
    )
    lead = jax.process_index() == 0
    rd = RunDir(out)
    config = dataclasses.asdict(cfg) | {
        "devices": len(mesh.devices.flat),
        "processes": jax.process_count(),
    }
    if resume:
        check_same_config(
            rd.file("config.json"),
            config,
            ignore=("devices", "processes", "workers", "prefetch", "cache_images"),
        )
    counts = data.describe()
    if lead:
        rd.write_config(config)
        print(counts, file=sys.stderr)
    images = {}
    if cfg.cache_images:
        for name, split in data.splits.items():
            images[name] = decode_split(
                split, image_size=cfg.image_size, crop=cfg.crop, workers=cfg.workers
            )
    model = RESNET_ARCHS[cfg.arch](width=cfg.width, dtype=jnp.bfloat16 if cfg.bf16 else jnp.float32)
    inits: dict[int, Any] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    for method in cfg.methods:
        runs[method] = []
        for k in range(cfg.seeds):

            def init(k=k):
                if k not in inits:  # the same initial weights for every method of a seed
                    inits[k] = initial_variables(cfg, model, k)
                return inits[k]

            runs[method].append(
                train_method(
                    cfg, data, method, k, out, mesh, resume, model=model, init=init, images=images
                )
            )
        if lead:
            rd.write_metrics([rec for m in runs.values() for r in m for rec in r["records"]])
    names = data.group_names
    results = aggregate(runs, cfg, names)
    results["config"] = {
        k: config[k]
        for k in ("arch", "width", "image_size", "epochs", "lr", "batch_size", "fixture")
    }
    if not lead:
        return 0
    rd.write_results(results)
    rd.write_text("summary.md", summary_markdown(results, cfg, counts))
    rd.save_figure(
        plot_group_accuracy(
            {m: r["group_acc"] for m, r in results["methods"].items()},
            names,
            {m: r["worst_group_acc"] for m, r in results["methods"].items()},
        ),
        "celeba_group_accuracy",
    )
    curves = {
        m: {
            "avg": np.mean([[e["val"]["avg_acc"] for e in r["epochs"]] for r in rs], 0),
            "worst": np.mean([[e["val"]["worst_group_acc"] for e in r["epochs"]] for r in rs], 0),
        }
        for m, rs in runs.items()
    }
    rd.save_figure(plot_validation_curves(curves), "celeba_validation")
    for m, r in results["methods"].items():
        print(
            f"{m:>9}: test avg {100 * r['avg_acc']:.1f}%  worst-group {100 * r['worst_group_acc']:.1f}%  "
            f"[{r['selection']['rule']}] (published {PUBLISHED[m]['avg'][0]:.1f}% / {PUBLISHED[m]['worst'][0]:.1f}%)"
        )
    print(f"wrote {out}/results.json, summary.md, figures")
    return 0
