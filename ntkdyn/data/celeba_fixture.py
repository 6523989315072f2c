"""A small synthetic stand-in for CelebA, written in exactly the official file formats.

Writes ``img_align_celeba/NNNNNN.jpg`` (178 × 218 RGB JPEGs, like the aligned release),
``list_attr_celeba.txt`` (count line, the 40 attribute names, ``file`` + 40 values in {−1, 1}) and
``list_eval_partition.txt`` (``file`` + 0/1/2), or the ``.csv`` exports — so the loader cannot tell it
from the real thing.

Each image is a cartoon face. Two cues are planted:

* the *target* (``Blond_Hair`` by default): the hair colour, on a dark-to-blond scale drawn from
  two overlapping normal distributions (2 standard deviations apart) — informative, not perfect;
* the *spurious* attribute (``Male``): a large dark-blue lower half (beard and shirt) instead of a
  light-pink one — a larger, higher-contrast and noise-free cue, hence learned first.

Trained on ~1 % blond men, a classifier that minimises the average loss leans on the spurious cue
and misclassifies most blond men; one that equalises the group losses (Group DRO) relies on the
hair and does far better on them.

Group proportions follow CelebA's training split (Pezeshki et al. 2021, Sec. 5; Sagawa et al. 2020):
non-blond women 44 %, non-blond men 41 %, blond women 14 %, blond men ≈ 1 %. Validation and test
over-represent the rare group (by default 10 %) so that worst-group accuracy is measurable on a few
hundred images; the published protocol's proportions can be requested instead.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ntkdyn.data.celeba import CELEBA_ATTRIBUTES

__all__ = [
    "TRAIN_GROUP_FRACTIONS",
    "EVAL_GROUP_FRACTIONS",
    "draw_face",
    "group_labels",
    "write_celeba_fixture",
]

#: Group fractions (g = 2·blond + male) of CelebA's training split.
TRAIN_GROUP_FRACTIONS = (0.44, 0.41, 0.14, 0.01)
#: Default fixture validation/test fractions: the rare group over-represented to be measurable.
EVAL_GROUP_FRACTIONS = (0.35, 0.35, 0.20, 0.10)

_WIDTH, _HEIGHT = 178, 218
#: Half the separation, in standard deviations, of the blond and dark hair-colour distributions.
HAIR_SHIFT = 1.0


def group_labels(n: int, fractions: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """A shuffled (n,) array of group ids 0..3 in the given proportions, every group present.

    Args:
        n: number of examples.
        fractions: 4 non-negative group fractions (normalised here).
        rng: the generator that shuffles.

    Returns:
        (n,) int group ids g = 2·target + spurious.
    """
    fr = np.asarray(fractions, float)
    counts = np.floor(fr / fr.sum() * n).astype(int)
    counts[np.argsort(-(fr / fr.sum() * n - counts))[: n - counts.sum()]] += 1
    counts = np.maximum(counts, (fr > 0).astype(int))  # every group present
    counts[np.argmax(counts)] -= counts.sum() - n
    labels = np.repeat(np.arange(4), counts)
    return rng.permutation(labels)


def draw_face(blond: int, male: int, rng: np.random.Generator) -> Image.Image:
    """One 178 × 218 cartoon face with the planted cues and nuisance variation.

    Args:
        blond: the target (1: hair towards blond, 0: towards dark; the two overlap).
        male: the spurious attribute (1: dark-blue lower half, 0: light pink).
        rng: the generator of every random choice (same state → same picture).

    Returns:
        An RGB PIL image.
    """
    bg = rng.integers(90, 200, size=3)
    img = Image.new("RGB", (_WIDTH, _HEIGHT), tuple(int(v) for v in bg))
    draw = ImageDraw.Draw(img)
    cx = 89 + int(rng.integers(-8, 9))
    cy = 120 + int(rng.integers(-8, 9))
    # lower half: spurious cue (shirt + beard area), large and contrasted
    lower = (30, 40, 110) if male else (235, 185, 200)
    lower = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in lower)
    draw.rectangle([0, cy + 30, _WIDTH, _HEIGHT], fill=lower)
    # hair: target cue, a band around the top of the head whose colour lies on a dark-to-blond
    # scale; the two classes overlap (d' = 2·HAIR_SHIFT), so the cue is informative but not perfect
    t = float(np.clip(0.5 + (HAIR_SHIFT * (2 * blond - 1) + rng.standard_normal()) / 5.0, 0.0, 1.0))
    hair = (
        (1 - t) * np.array((60.0, 45.0, 30.0))
        + t * np.array((225.0, 200.0, 110.0))
        + rng.integers(-12, 13, size=3)
    )
    hair = tuple(int(v) for v in np.clip(hair, 0, 255))
    draw.ellipse([cx - 52, cy - 82, cx + 52, cy + 10], fill=hair)
    # face (skin tone varies) on top of the hair
    skin = tuple(
        int(v) for v in np.clip(np.array((225, 185, 150)) + rng.integers(-40, 20, size=3), 0, 255)
    )
    draw.ellipse([cx - 42, cy - 62, cx + 42, cy + 48], fill=skin)
    for ex in (cx - 17, cx + 17):  # eyes
        draw.ellipse([ex - 6, cy - 22, ex + 6, cy - 14], fill=(40, 30, 30))
    draw.arc([cx - 16, cy + 8, cx + 16, cy + 26], 20, 160, fill=(150, 60, 60), width=3)
    arr = np.asarray(img, np.float32) + 8.0 * rng.standard_normal(
        (_HEIGHT, _WIDTH, 3), dtype=np.float32
    )
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def write_celeba_fixture(
    out_dir: str | os.PathLike,
    *,
    seed: int,
    n_train: int = 600,
    n_val: int = 160,
    n_test: int = 160,
    train_fractions: Sequence[float] = TRAIN_GROUP_FRACTIONS,
    eval_fractions: Sequence[float] = EVAL_GROUP_FRACTIONS,
    target: str = "Blond_Hair",
    spurious: str = "Male",
    csv: bool = False,
    jpeg_quality: int = 90,
) -> Path:
    """Write a CelebA-format fixture with planted target and spurious cues.

    Args:
        out_dir: folder to create (``img_align_celeba/`` and the two metadata files go in it).
        seed: randomness of labels, other attributes and drawings (same seed → same bytes).
        n_train, n_val, n_test: images per split (partition 0, 1, 2; files numbered in that order).
        train_fractions: group fractions (g = 2·target + spurious) of the training split.
        eval_fractions: group fractions of validation and test.
        target: attribute carried by the hair colour.
        spurious: attribute carried by the lower half of the image.
        csv: write ``list_attr_celeba.csv`` / ``list_eval_partition.csv`` instead of the ``.txt`` files.
        jpeg_quality: JPEG quality.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ValueError: unknown attribute names, non-positive sizes or bad fractions.
    """
    for role, attr in (("target", target), ("spurious", spurious)):
        if attr not in CELEBA_ATTRIBUTES:
            raise ValueError(
                f"{role}: unknown attribute {attr!r}; choose one of {', '.join(CELEBA_ATTRIBUTES)}"
            )
    if target == spurious:
        raise ValueError(f"spurious: must differ from target, both are {target!r}")
    if min(n_train, n_val, n_test) < 4:
        raise ValueError(
            f"n_train, n_val, n_test: need >= 4 images each (one per group), got {n_train}, {n_val}, {n_test}"
        )
    for name, fr in (("train_fractions", train_fractions), ("eval_fractions", eval_fractions)):
        if len(fr) != 4 or min(fr) < 0 or sum(fr) <= 0:
            raise ValueError(f"{name}: expected 4 non-negative group fractions, got {tuple(fr)}")
    out = Path(out_dir)
    img_dir = out / "img_align_celeba"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    groups = np.concatenate(
        [
            group_labels(n_train, train_fractions, rng),
            group_labels(n_val, eval_fractions, rng),
            group_labels(n_test, eval_fractions, rng),
        ]
    )
    partition = np.repeat([0, 1, 2], [n_train, n_val, n_test])
    n = len(groups)
    # other attributes: independent ±1 with a fixed per-attribute rate
    rates = np.random.default_rng(seed + 1).uniform(0.05, 0.6, size=len(CELEBA_ATTRIBUTES))
    values = np.where(rng.random((n, len(CELEBA_ATTRIBUTES))) < rates, 1, -1)
    ti, si = CELEBA_ATTRIBUTES.index(target), CELEBA_ATTRIBUTES.index(spurious)
    values[:, ti] = np.where(groups // 2 == 1, 1, -1)
    values[:, si] = np.where(groups % 2 == 1, 1, -1)
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    for i, name in enumerate(names):
        img = draw_face(int(groups[i] // 2), int(groups[i] % 2), rng)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=jpeg_quality)
        (img_dir / name).write_bytes(buf.getvalue())
    if csv:
        rows = ["image_id," + ",".join(CELEBA_ATTRIBUTES)]
        rows += [
            name + "," + ",".join(str(v) for v in row)
            for name, row in zip(names, values, strict=True)
        ]
        (out / "list_attr_celeba.csv").write_text("\n".join(rows) + "\n")
        parts = ["image_id,partition"] + [
            f"{name},{p}" for name, p in zip(names, partition, strict=True)
        ]
        (out / "list_eval_partition.csv").write_text("\n".join(parts) + "\n")
    else:
        # the official file: count, names (with a trailing space), then right-aligned values
        lines = [str(n), " ".join(CELEBA_ATTRIBUTES) + " "]
        lines += [
            name + " " + " ".join(f"{v:>2}" for v in row)
            for name, row in zip(names, values, strict=True)
        ]
        (out / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
        (out / "list_eval_partition.txt").write_text(
            "".join(f"{name} {p}\n" for name, p in zip(names, partition, strict=True))
        )
    return out
