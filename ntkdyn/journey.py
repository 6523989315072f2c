"""The journey on a dataset with groups: which tangent directions carry each group, what the theory
predicts for them, and their measured responses over real training.

For a network with batch norm trained by minibatches (the CelebA ResNet), on a sample X of the
training split that keeps every example of the rarest group:

1. **Spectrum at θ₀.** The network with its batch statistics frozen at θ₀, measured exactly on X
   (:func:`ntkdyn.freeze_batch_stats`), is a per-example function f₀(x; θ); its label-signed
   tangent features YΦ = U S Vᵀ (:func:`ntkdyn.feature_spectrum`) give the k leading directions.
2. **What each direction carries** (:func:`direction_table`): u_j's alignment with the label
   (u_jᵀ1/√n, since Y y = 1), with the spurious attribute (u_jᵀ Y a±/√n), with each group's
   indicator (u_jᵀ1_g/√n_g), and the share of each group's margin energy it holds,
   (u_jᵀ 1_g)²/n_g: the fraction of the group's uniform margin vector Y·(1 on g) that lies along
   u_j (a random unit vector holds 1/n of it; the shares over a complete basis sum to 1).
3. **The prediction** (:func:`ntkdyn.analysis.starvation_summary`): the fixed point and
   M[j, i] = ∂z_j*/∂s_i under cross-entropy and under SD on that spectrum.
4. **Measured responses.** After each epoch, z(t) = U_kᵀ Y (f(X; θ_t) − f(X; θ₀)) and each group's
   mean margin y±·f(x; θ_t) over X, with f evaluated the same way at every t: batch statistics
   measured on X at θ_t (one forward pass of the whole sample in training mode, which is exactly
   :func:`ntkdyn.freeze_batch_stats`' function on X). The gap to the linearization is the norm of
   the part of Y(f_t − f₀) outside span(U_k) relative to its norm (``outside``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from jaxtyping import Float, Int

__all__ = [
    "GroupJourney",
    "carriers",
    "direction_table",
    "journey_results",
    "sample_journey",
    "theory_lams",
]


def direction_table(
    U: Float[np.ndarray, "n k"],
    y: Int[np.ndarray, " n"],
    attribute: Int[np.ndarray, " n"],
    group: Int[np.ndarray, " n"],
    group_names: Sequence[str],
) -> dict[str, Any]:
    """What each direction u_j of YΦ carries: label, attribute, groups (module docstring, step 2).

    Args:
        U: (n, k) left singular vectors of YΦ (orthonormal columns).
        y: (n,) labels in {0, 1}.
        attribute: (n,) spurious attribute in {0, 1}.
        group: (n,) group ids in [0, len(group_names)).
        group_names: the groups.

    Returns:
        ``{"label": (k,), "attribute": (k,), "group_cosine": {g: (k,)}, "group_share": {g: (k,)},
        "group_count": {g: n_g}}`` as lists (groups absent from the sample are left out).

    Raises:
        ValueError: shapes that do not match.
    """
    U = np.asarray(U, np.float64)
    y, attribute, group = (np.asarray(v) for v in (y, attribute, group))
    n = U.shape[0]
    if U.ndim != 2 or any(v.shape != (n,) for v in (y, attribute, group)):
        raise ValueError(
            f"U, y, attribute, group: expected (n, k) and three (n,) arrays, got {U.shape}, "
            f"{y.shape}, {attribute.shape}, {group.shape}"
        )
    ys, a = 2.0 * y - 1.0, 2.0 * attribute - 1.0
    out: dict[str, Any] = {
        "label": (U.sum(0) / np.sqrt(n)).tolist(),
        "attribute": (U.T @ (ys * a) / np.sqrt(n)).tolist(),
        "group_cosine": {},
        "group_share": {},
        "group_count": {},
    }
    for g, name in enumerate(group_names):
        sel = group == g
        if not sel.any():
            continue
        proj = U[sel].sum(0)
        out["group_cosine"][name] = (proj / np.sqrt(sel.sum())).tolist()
        out["group_share"][name] = (proj**2 / sel.sum()).tolist()
        out["group_count"][name] = int(sel.sum())
    return out


def carriers(share: Sequence[float], fraction: float = 0.5) -> list[int]:
    """The directions that carry a group: the fewest, by decreasing share, holding ``fraction`` of
    the group's margin energy in the k leading directions (1-based indices, in that order)."""
    share = np.asarray(share, np.float64)
    if share.ndim != 1 or not len(share) or not 0 < fraction <= 1:
        raise ValueError("share, fraction: need a non-empty 1-D share and 0 < fraction <= 1")
    order = np.argsort(-share, kind="stable")
    total = share.sum()
    if total <= 0:
        return []
    need = int(np.searchsorted(np.cumsum(share[order]) / total, fraction - 1e-12)) + 1
    return [int(j) + 1 for j in order[:need]]


class GroupJourney:
    """The spectrum of a batch-norm network at θ₀ on a sample, and the responses measured later.

    Args:
        module: the Flax Linen network (``module.apply(variables, x, train=...)``).
        variables: its variables at θ₀, ``{"params", "batch_stats"}``.
        x: (n, ...) the sample's inputs (float).
        y: (n,) labels in {0, 1}.
        attribute: (n,) spurious attribute in {0, 1}.
        group: (n,) group ids.
        group_names: the groups.
        k: directions whose responses are measured (the k leading of the dense spectrum).
        batch_size: examples per block of the tangent Gram matrix and the statistics.
    """

    def __init__(
        self,
        module: Any,
        variables: Mapping[str, Any],
        x: Any,
        y: Any,
        attribute: Any,
        group: Any,
        group_names: Sequence[str],
        *,
        k: int,
        batch_size: int = 250,
    ):
        import time

        import jax
        import jax.numpy as jnp

        from ntkdyn.models.frozen import freeze_batch_stats
        from ntkdyn.tangent.spectrum import Dense, feature_spectrum

        self.module, self.x = module, jnp.asarray(x)
        self.y, self.attribute, self.group = (np.asarray(v) for v in (y, attribute, group))
        self.group_names = list(group_names)
        n = len(self.y)
        if not 1 <= k <= n:
            raise ValueError(f"k: expected 1 <= k <= n = {n} (the sample), got {k}")
        start = time.perf_counter()
        apply0, params0, _ = freeze_batch_stats(module, variables, self.x, batch_size=batch_size)
        solver = Dense(batch_size=batch_size, cache_features=True)
        self.spectrum = feature_spectrum(apply0, params0, self.x, self.y, solver=solver)
        if self.spectrum.s.shape[0] < k:
            raise ValueError(f"k: the sample's spectrum has {self.spectrum.s.shape[0]} directions")
        self.k, self.seconds = k, time.perf_counter() - start
        # U comes back in the default float dtype (float32 unless x64 is on): orthonormalise the
        # k leading columns again in float64 (signs kept) for the theory's checks.
        q, r = np.linalg.qr(np.asarray(self.spectrum.U, np.float64)[:, :k])
        self.U = q * np.sign(np.diag(r))
        self._forward = jax.jit(
            lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"])[0]
        )
        self.signed = 2.0 * self.y - 1.0
        self.f0 = self.outputs(variables)

    def outputs(self, variables: Mapping[str, Any]) -> np.ndarray:
        """f(X; θ) with the batch statistics measured on X at θ (one training-mode pass)."""
        v = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
        return np.asarray(self._forward(v, self.x), np.float64).reshape(-1)

    def measure(self, state: Any) -> dict[str, Any]:
        """The responses at a training state (``params`` and ``batch_stats`` attributes).

        Returns:
            ``{"journey": {"z": (k,), "outside": float, "margin": {group: mean y±·f}}}``.
        """
        f = self.outputs({"params": state.params, "batch_stats": state.batch_stats})
        r = self.signed * (f - self.f0)
        z = self.U.T @ r
        rest = np.linalg.norm(r - self.U @ z) / max(np.linalg.norm(r), 1e-300)
        margin = {
            name: float(np.mean(self.signed[self.group == g] * f[self.group == g]))
            for g, name in enumerate(self.group_names)
            if (self.group == g).any()
        }
        return {"journey": {"z": z.tolist(), "outside": float(rest), "margin": margin}}

    def describe(self, lams: Mapping[str, tuple[Any, float]]) -> dict[str, Any]:
        """The spectrum, the direction table and the prediction under each (field, λ) of ``lams``.

        Args:
            lams: name (e.g. ``"ce"``, ``"sd"``) → ``(field, λ)`` (:func:`ntkdyn.theory_lam`).

        Returns:
            JSON-ready: ``n``, ``k``, ``s`` (every direction), ``seconds``, ``directions``
            (:func:`direction_table` of the k leading), ``carriers`` (group → directions holding
            half its energy among the k), ``prediction`` (name → :func:`starvation_summary`).
        """
        from ntkdyn.analysis import starvation_summary
        from ntkdyn.tangent.spectrum import FeatureSpectrum

        table = direction_table(self.U, self.y, self.attribute, self.group, self.group_names)
        top = FeatureSpectrum(self.U, np.asarray(self.spectrum.s, np.float64)[: self.k])
        prediction = {}
        for name, (field, lam) in lams.items():
            summary = starvation_summary(top, lam, field)
            prediction[name] = {
                key: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v)
                for key, v in summary.items()
            }
        return {
            "n": int(len(self.y)),
            "k": self.k,
            "s": np.asarray(self.spectrum.s, np.float64).tolist(),
            "seconds": self.seconds,
            "solver": self.spectrum.solver,
            "directions": table,
            "carriers": {g: carriers(sh) for g, sh in table["group_share"].items()},
            "prediction": prediction,
        }


def sample_journey(
    module: Any,
    variables: Mapping[str, Any],
    split: Any,
    group_names: Sequence[str],
    *,
    k: int,
    n: int,
    seed: int,
    image_size: int,
    crop: int | None = None,
    images: Any = None,
) -> tuple[GroupJourney, str]:
    """A :class:`GroupJourney` on a stratified sample of an image split (every example of the
    rarest group kept; :func:`ntkdyn.data.dataset.stratified_sample`).

    Args:
        module, variables: the network and its variables at θ₀.
        split: the training :class:`ntkdyn.data.images.ImageSplit`.
        group_names: the groups.
        k: directions measured.
        n: sample size (the whole split if larger).
        seed: the sample's seed.
        image_size, crop: decoding (:func:`ntkdyn.data.images.load_image`).
        images: the split's decoded 8-bit images, if cached.

    Returns:
        ``(journey, note)``: the note says how the sample was drawn.
    """
    from ntkdyn.data.dataset import stratified_sample
    from ntkdyn.data.images import decode_image, normalize_images

    n = min(n, len(split))
    index, note = stratified_sample(split.group, n, seed=seed, names=group_names)
    if images is not None:
        raw = np.asarray(images)[index]
    else:
        raw = np.stack([decode_image(split.paths[i], image_size, crop=crop) for i in index])
    journey = GroupJourney(
        module, variables, normalize_images(raw), split.y[index], split.a[index],
        split.group[index], group_names, k=min(k, n),
    )  # fmt: skip
    return journey, f"{n} of the {len(split)} training images, {note}"


def theory_lams(
    recipes: Mapping[str, Any], sd_coef: Sequence[float], n: int
) -> dict[str, tuple[Any, float]]:
    """Each method's theory (field, λ) through :func:`ntkdyn.objectives.theory_lam`, on n examples.

    ERM and Group DRO are cross-entropy with their optimizer's weight decay when it is coupled
    (SGD; Adam's decoupled decay is not the theory's λ and counts as 0, which leaves CE without a
    fixed point); Group DRO's reweighting of the groups is outside the theory, which sees CE;
    class-conditional SD is read as SD with the mean of its two coefficients (its per-class
    targets are outside the theory, which pulls every logit to 0).

    Args:
        recipes: method → :class:`ntkdyn.train.groups.Recipe` (``optimizer``, ``weight_decay``).
        sd_coef: SD's per-class coefficients.
        n: examples of the spectrum's sample (the theory's sums run over them).

    Returns:
        method → ``(field, λ)``.
    """
    from ntkdyn.objectives import ERM, SpectralDecoupling, theory_lam

    out = {}
    for method, recipe in recipes.items():
        if method == "sd":
            out[method] = theory_lam(
                SpectralDecoupling(coef=float(np.mean(sd_coef))), num_examples=n
            )
        else:
            wd = recipe.weight_decay if recipe.optimizer == "sgd" else 0.0
            out[method] = theory_lam(ERM(), num_examples=n, weight_decay=wd)
    return out


def journey_results(
    journeys: Mapping[int, tuple[GroupJourney, str]],
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    recipes: Mapping[str, Any],
    sd_coef: Sequence[float],
) -> dict[str, Any]:
    """results.json's ``journey``: the sample, per seed :meth:`GroupJourney.describe`, and per
    method and seed the measurements of every epoch.

    Args:
        journeys: seed index → ``(journey, note)`` (:func:`sample_journey`).
        runs: method → per seed ``{"epochs": [{"journey": ...}, ...]}``.
        recipes, sd_coef: each method's recipe and SD's coefficients (:func:`theory_lams`).
    """
    first = next(iter(journeys.values()))
    lams = theory_lams(recipes, sd_coef, len(first[0].y))
    return {
        "sample": first[1],
        "seeds": [j.describe(lams) for j, _ in journeys.values()],
        "epochs": {m: [[e["journey"] for e in r["epochs"]] for r in rs] for m, rs in runs.items()},
    }
