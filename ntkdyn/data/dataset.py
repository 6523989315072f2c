"""One shape for in-memory data: inputs, {0, 1} labels, and optional groups, attributes, environments.

Every loader of :mod:`ntkdyn.data.registry` (the paper's datasets, a user's ``.npz``, an image folder
with ``metadata.csv``) returns a :class:`Dataset`; the tangent-feature analysis reads ``x`` and
``signed_y`` from it, and the group tables read ``groups`` and ``group_names``.
:func:`stratified_sample` is the one rule by which a subset of a grouped split is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from jaxtyping import Float, Int

__all__ = ["Dataset", "stratified_sample"]


@dataclass(frozen=True, eq=False)
class Dataset:
    """In-memory examples for the tangent-feature analysis.

    Attributes:
        name: what was asked for, e.g. ``"moons"``, ``"cmnist"``, ``"celeba"``, ``"my.npz"``,
            ``"folder:DIR"``.
        x: (n, ...) float32 inputs (images NHWC, normalised).
        y: (n,) int32 labels in {0, 1}.
        groups: (n,) int group ids, or ``None``.
        group_names: the name of each group id, or ``None``.
        attributes: named per-example attributes, e.g. ``{"Male": a}``.
        environments: (n,) environment ids (Colored MNIST), or ``None``.
        source: one sentence for reports: where the data came from, how many, which split.
    """

    name: str
    x: Float[np.ndarray, "n ..."]
    y: Int[np.ndarray, " n"]
    groups: Int[np.ndarray, " n"] | None = None
    group_names: tuple[str, ...] | None = None
    attributes: dict[str, np.ndarray] = field(default_factory=dict)
    environments: Int[np.ndarray, " n"] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        n = len(self.x)
        if self.y.shape != (n,):
            raise ValueError(
                f"y: expected shape ({n},) to match x {self.x.shape}, got {self.y.shape}"
            )
        if n and not np.isin(self.y, (0, 1)).all():
            raise ValueError(f"y: labels must lie in {{0, 1}}, got {np.unique(self.y)[:5]}")
        for name, arr in (("groups", self.groups), ("environments", self.environments)):
            if arr is not None and np.shape(arr) != (n,):
                raise ValueError(f"{name}: expected shape ({n},), got {np.shape(arr)}")
        for name, arr in self.attributes.items():
            if np.shape(arr) != (n,):
                raise ValueError(
                    f"attributes[{name!r}]: expected shape ({n},), got {np.shape(arr)}"
                )
        if self.groups is not None and self.group_names is not None and n:
            if int(np.max(self.groups)) >= len(self.group_names) or int(np.min(self.groups)) < 0:
                raise ValueError(
                    f"groups: ids must lie in [0, {len(self.group_names)}) (one per group name), "
                    f"got range [{int(np.min(self.groups))}, {int(np.max(self.groups))}]"
                )

    @property
    def signed_y(self):
        """The labels in {−1, +1}, y± = 2y − 1 (:func:`ntkdyn.losses.to_signed`, the one conversion)."""
        from ntkdyn.losses import to_signed

        return to_signed(self.y)

    def __len__(self) -> int:
        return len(self.x)


def stratified_sample(
    groups: Int[np.ndarray, " N"],
    n: int,
    *,
    seed: int,
    names: Sequence[str] | None = None,
) -> tuple[Int[np.ndarray, " n"], str]:
    """Indices of ``n`` of the N examples, stratified by group, keeping every example of the rarest group.

    The rarest group r (fewest examples, present at all) is kept whole when n ≥ N_r; the other
    n − N_r slots are shared among the other groups in proportion to their sizes (largest
    remainder), each group's examples drawn uniformly without replacement. The indices are
    returned sorted, so the subset keeps the original order. Same (groups, n, seed) → same subset.

    Args:
        groups: (N,) group ids.
        n: subset size, 1 ≤ n ≤ N.
        seed: the sample's seed.
        names: group names by id, used in the note (``None``: the ids).

    Returns:
        ``(indices, note)``: the (n,) sorted indices and a phrase for reports (``"stratified by
        group, keeping all 107 of the rarest group (3)"``).

    Raises:
        ValueError: ``n`` outside [1, N].
    """
    groups = np.asarray(groups)
    total = len(groups)
    if not 1 <= n <= total:
        raise ValueError(f"n: must lie in [1, {total}], got {n}")
    if n == total:
        return np.arange(total), "all of them"
    ids, counts = np.unique(groups, return_counts=True)
    rare = int(np.argmin(counts))
    keep = np.zeros(len(ids), int)
    keep[rare] = min(int(counts[rare]), n)
    others = [i for i in range(len(ids)) if i != rare]
    left = n - keep[rare]
    if others and left:
        sizes = counts[others].astype(float)
        share = sizes / sizes.sum() * left
        base = np.minimum(np.floor(share).astype(int), counts[others])
        short = left - base.sum()
        order = np.argsort(-(share - base), kind="stable")
        for j in order:  # largest remainders first, never more than a group holds
            if short == 0:
                break
            if base[j] < counts[others][j]:
                base[j] += 1
                short -= 1
        keep[others] = base
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(groups == g), size=int(k), replace=False)
        for g, k in zip(ids, keep, strict=True)
        if k
    ]
    idx = np.sort(np.concatenate(chosen))
    label = names[int(ids[rare])] if names is not None else str(ids[rare])
    note = (
        f"stratified by group, keeping all {int(counts[rare])} of the rarest group ({label})"
        if keep[rare] == counts[rare]
        else f"stratified by group, {int(keep[rare])} of the {int(counts[rare])} of the rarest "
        f"group ({label})"
    )
    return idx, note
