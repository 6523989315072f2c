"""What the layer-wise (structured) empirical NTK needs to know about a network.

:class:`DenseStructure` is a protocol, not a base class: any ``apply_fn`` object with an
``activation`` and a ``layers(params)`` method is recognised by ``NTKMethod.STRUCTURED``, without
this package importing any model class. :class:`ntkdyn.DenseApply` (what :func:`ntkdyn.pure`
returns for an :class:`ntkdyn.MLP` without batch norm) implements it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from jaxtyping import Array

__all__ = ["DenseStructure"]


@runtime_checkable
class DenseStructure(Protocol):
    """A dense network f(x) = h_L, h_l = A_{l−1} W_l + b_l, A_l = φ(h_l), A_0 = x (flattened).

    The structured NTK (``NTKMethod.STRUCTURED``) builds Θ = Σ_l (A_{l−1}A'_{l−1}ᵀ + 1) ⊙ (Δ_l Δ'_lᵀ)
    from the layers and φ, so an ``apply_fn`` that implements this protocol must satisfy
    ``apply_fn(params, x) == h_L`` for the layers it reports: nothing may happen between the layers
    but φ (no batch norm, dropout, skip connections or output scaling).

    Attributes:
        activation: the elementwise nonlinearity φ applied after every layer but the last (its
            derivative is taken by ``jax.jvp``, so it must act on each entry independently).

    The object is passed to ``jax.jit`` as a static argument, so it must be hashable; two objects
    that compare equal share one compilation (a frozen dataclass gives both).
    """

    activation: Callable[[Array], Array]

    def layers(self, params: Any) -> Sequence[tuple[Array, Array | None]]:
        """The (W_l, b_l) of each layer in order: W_l (fan_in, fan_out), b_l (fan_out,) or ``None``.

        Args:
            params: the params PyTree passed to ``apply_fn``.

        Returns:
            The layers, first to last; the first layer's fan_in is the flattened input size.
        """
        ...

    def __call__(self, params: Any, x: Array) -> Array:
        """The network's output on the batch ``x``: (n, K) (K = 1 for a scalar model)."""
        ...
