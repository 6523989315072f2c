"""Fully connected networks (Flax NNX) and the pure ``(apply_fn, params)`` view of any NNX module.

The theory sees a network only as a pure function ``apply_fn(params, x)`` over a params PyTree
(Pezeshki et al. 2021, Sec. 2: the tangent features Φ = ∇_θ f(X; θ₀)). This module provides

* :class:`MLP`: x ↦ W_L φ(… φ(W_1 x + b_1) …) + b_L with optional batch norm and dropout (NNX
  train/eval modes via ``model.train()`` / ``model.eval()``);
* :func:`pure`: any NNX module → ``(apply_fn, params)`` in eval mode, ``params`` the
  :class:`flax.nnx.Param` state and everything else (batch statistics, RNG counters) closed over;
* :class:`DenseApply`: the pure forward pass of a dense network whose layers can be read from the
  params; it implements the :class:`ntkdyn.tangent.DenseStructure` protocol (``activation`` and
  ``layers(params)``), which the structured empirical NTK (:class:`ntkdyn.NTKMethod`) needs;
* :func:`mlp_apply` and :func:`init_mlp_uniform`: the :class:`MLP` forward pass in training or
  evaluation mode as a pure function of ``params``, explicit batch-norm statistics and a dropout
  key (for loops that train the params PyTree themselves, e.g. ``jax.lax.scan`` over steps), and
  PyTorch's default initialisation in the same layout;
* :func:`init_mlp`: key → ``(apply_fn, params)``, cheap and functional, so seeds are batched with
  ``jax.vmap``::

      apply_fn, _ = init_mlp(keys[0], 2, [500])
      params = jax.vmap(lambda k: init_mlp(k, 2, [500])[1])(keys)   # stacked over seeds
      logits = jax.vmap(apply_fn, in_axes=(0, None))(params, x)      # (seeds, n, 1)

  To train a stateful model, split once (``graphdef, params, rest = nnx.split(model, nnx.Param,
  ...)``), update ``params`` functionally and ``nnx.update(model, params)`` at the end.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = [
    "MLP",
    "DenseApply",
    "ModuleApply",
    "pure",
    "init_mlp",
    "init_mlp_seeds",
    "init_mlp_stacked",
    "init_mlp_uniform",
    "mlp_apply",
    "mlp_logits",
    "shallow_relu",
    "he_normal",
    "xavier_uniform",
]

Initializer = Callable[..., Array]

_he_normal = nnx.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")
_xavier_uniform = nnx.initializers.xavier_uniform()


def he_normal(key: PRNGKeyArray, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
    """He (Kaiming) initializer: truncated normal with Var(W) = 2 / fan_in (fan_in = shape[-2]).

    Args:
        key: PRNG key.
        shape: kernel shape (..., fan_in, fan_out).
        dtype: output dtype.

    Returns:
        The initial kernel.
    """
    return _he_normal(key, shape, dtype)


def xavier_uniform(key: PRNGKeyArray, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
    """Xavier (Glorot) uniform initializer, U(±√(6 / (fan_in + fan_out))) (the Colored MNIST setting).

    Args:
        key: PRNG key.
        shape: kernel shape (..., fan_in, fan_out).
        dtype: output dtype.

    Returns:
        The initial kernel.
    """
    return _xavier_uniform(key, shape, dtype)


def _flatten_input(x: Array, in_features: int) -> Array:
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(
            f"x: expected a batch of inputs shaped (n, ...) with {in_features} features per example, "
            f"got shape {x.shape}; add a leading batch axis (x[None]) for a single example"
        )
    flat = x.reshape(x.shape[0], -1)
    if flat.shape[1] != in_features:
        raise ValueError(
            f"x: each example has {flat.shape[1]} features (shape {x.shape}) but the network expects "
            f"in_features={in_features}"
        )
    return flat


def _check_widths(in_features: int, hidden: Sequence[int], out_features: int) -> list[int]:
    """The hidden widths as ints, after checking every layer width is >= 1 (names the argument)."""
    hidden = [int(h) for h in hidden]
    if int(in_features) < 1:
        raise ValueError(f"in_features: must be >= 1, got {in_features}")
    if any(h < 1 for h in hidden):
        raise ValueError(f"hidden: every width must be >= 1, got {hidden}")
    if int(out_features) < 1:
        raise ValueError(f"out_features: must be >= 1, got {out_features}")
    return hidden


class MLP(nnx.Module):
    """A fully connected network in_features → hidden[0] → … → hidden[-1] → out_features.

    Each hidden layer is Linear → (BatchNorm) → activation → (Dropout); the last layer is linear.
    Dropout and batch norm follow NNX modes: ``model.train()`` (stochastic dropout, batch statistics)
    and ``model.eval()`` (identity dropout, running statistics).

    Args:
        in_features: number of input features (trailing input dims are flattened).
        hidden: widths of the hidden layers (may be empty: a linear model).
        out_features: number of outputs (1 for a binary logit).
        rngs: :class:`flax.nnx.Rngs` with a ``params`` stream (and ``dropout`` if dropout is used;
            ``nnx.Rngs(key)`` provides both).
        activation: elementwise nonlinearity φ (default ReLU).
        kernel_init: weight initializer (default LeCun normal, Var(W) = 1/fan_in, Flax's default;
            pass :data:`he_normal` or :data:`xavier_uniform` for the other common choices).
        bias_init: bias initializer (default zeros).
        dropout_rate: dropout probability after each hidden activation (0 disables it).
        batch_norm: add batch normalisation before each hidden activation.
        dtype: parameter dtype (default float32).

    Raises:
        ValueError: naming ``in_features``, ``hidden``, ``out_features`` or ``dropout_rate`` when
            out of range.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int = 1,
        *,
        rngs: nnx.Rngs,
        activation: Callable[[Array], Array] = jax.nn.relu,
        kernel_init: Initializer | None = None,
        bias_init: Initializer = nnx.initializers.zeros_init(),
        dropout_rate: float = 0.0,
        batch_norm: bool = False,
        dtype: Any = jnp.float32,
    ):
        hidden = _check_widths(in_features, hidden, out_features)
        if not 0.0 <= float(dropout_rate) < 1.0:
            raise ValueError(f"dropout_rate: must be in [0, 1), got {dropout_rate}")
        kernel_init = nnx.initializers.lecun_normal() if kernel_init is None else kernel_init
        dims = [int(in_features), *hidden, int(out_features)]
        self.in_features = dims[0]
        self.out_features = dims[-1]
        self.activation = activation
        self.linears = nnx.List(
            [
                nnx.Linear(
                    a, b, kernel_init=kernel_init, bias_init=bias_init, param_dtype=dtype, rngs=rngs
                )
                for a, b in zip(dims[:-1], dims[1:], strict=True)
            ]
        )
        self.norms = (
            nnx.List([nnx.BatchNorm(h, param_dtype=dtype, rngs=rngs) for h in hidden])
            if batch_norm
            else None
        )
        self.dropout = nnx.Dropout(float(dropout_rate), rngs=rngs) if dropout_rate > 0 else None

    def __call__(self, x: Float[Array, "n ..."]) -> Float[Array, "n out"]:
        """Forward pass; ``x`` is (n, ...) with in_features values per example; returns (n, out)."""
        h = _flatten_input(x, self.in_features)
        for i, linear in enumerate(self.linears[:-1]):
            h = linear(h)
            if self.norms is not None:
                h = self.norms[i](h)
            h = self.activation(h)
            if self.dropout is not None:
                h = self.dropout(h)
        return self.linears[-1](h)


@dataclasses.dataclass(frozen=True, eq=False)
class ModuleApply:
    """Pure forward pass of an NNX module: ``apply_fn(params, x) = merge(graphdef, params, rest)(x)``.

    Attributes:
        graphdef: the module's static structure (``nnx.split``).
        rest: non-parameter state (batch statistics, RNG state), closed over and never updated.
    """

    graphdef: Any
    rest: Any

    def __call__(self, params, x):
        return nnx.merge(self.graphdef, params, self.rest)(x)


def _linear_layers(params) -> list[tuple[Array, Array | None]]:
    """(kernel, bias) of each layer of a dense params PyTree, in order.

    Recognises the :class:`MLP` Param state (``params['linears'][i]['kernel'|'bias']``), a sequence of
    ``{'kernel': W, 'bias': b}`` dicts, or a sequence of ``(W, b)`` pairs (b may be ``None``);
    kernels are (fan_in, fan_out).
    """
    if isinstance(params, nnx.State) or (isinstance(params, dict) and "linears" in params):
        layers = params["linears"]
        layers = (
            [layers[i] for i in sorted(layers.keys())]
            if not isinstance(layers, (list, tuple))
            else layers
        )
    else:
        layers = params
    if not isinstance(layers, (list, tuple)):
        raise ValueError(
            f"params: expected a dense network's layers (MLP params, a list of {{'kernel', 'bias'}} dicts "
            f"or a list of (W, b) pairs), got {type(params).__name__}"
        )
    out = []
    for i, layer in enumerate(layers):
        if isinstance(layer, (tuple, list)):
            W, b = layer
        elif isinstance(layer, (dict, nnx.State)) and "kernel" in layer:
            W, b = layer["kernel"], (layer["bias"] if "bias" in layer else None)
        else:
            raise ValueError(
                f"params: layer {i} is a {type(layer).__name__}, not a {{'kernel', 'bias'}} dict or a (W, b) pair"
            )
        W = W[...] if isinstance(W, nnx.Variable) else jnp.asarray(W)
        if b is not None:
            b = b[...] if isinstance(b, nnx.Variable) else jnp.asarray(b)
        if W.ndim != 2:
            raise ValueError(
                f"params: layer {i} kernel must be 2-D (fan_in, fan_out), got shape {W.shape}"
            )
        out.append((W, b))
    for i in range(1, len(out)):
        if out[i][0].shape[0] != out[i - 1][0].shape[1]:
            raise ValueError(
                f"params: layer {i} kernel has fan_in {out[i][0].shape[0]} but layer {i - 1} has fan_out "
                f"{out[i - 1][0].shape[1]}"
            )
    return out


@dataclasses.dataclass(frozen=True)
class DenseApply:
    """Pure forward pass of a dense network f(x) = W_Lᵀ φ(… φ(W_1ᵀ x + b_1) …) + b_L.

    ``apply_fn(params, x)`` with ``params`` the :class:`MLP` Param state, a list of
    ``{'kernel': W, 'bias': b}`` dicts or a list of ``(W, b)`` pairs (kernels (fan_in, fan_out),
    biases optional). Trailing input dims are flattened. It implements the
    :class:`ntkdyn.tangent.DenseStructure` protocol (``activation`` and ``layers(params)``), the
    form the structured empirical NTK (``NTKMethod.STRUCTURED``) needs: the layers and φ
    explicitly. The protocol is structural, so this module imports nothing from the tangent side.

    Two instances with the same activation compare equal (and hash alike), so jitted code keyed on
    ``apply_fn`` is compiled once, not once per instance.

    Attributes:
        activation: the elementwise nonlinearity φ applied after every layer but the last.
    """

    activation: Callable[[Array], Array] = jax.nn.relu

    def layers(self, params) -> list[tuple[Array, Array | None]]:
        """The (kernel, bias) pairs of ``params`` in order (bias ``None`` when absent).

        Raises:
            ValueError: naming ``params`` if it is not a dense network's layers.
        """
        return _linear_layers(params)

    def __call__(self, params, x: Float[Array, "n ..."]) -> Float[Array, "n out"]:
        layers = self.layers(params)
        h = _flatten_input(x, layers[0][0].shape[0])
        for i, (W, b) in enumerate(layers):
            h = h @ W
            if b is not None:
                h = h + b
            if i < len(layers) - 1:
                h = self.activation(h)
        return h


def pure(module: nnx.Module) -> tuple[Callable, Any]:
    """The pure eval-mode view ``(apply_fn, params)`` of an NNX module.

    ``params`` is the module's :class:`flax.nnx.Param` state; everything else (batch statistics,
    dropout RNG state) is closed over and frozen. ``apply_fn(params, x)`` is a pure function usable
    with ``jit``, ``vmap`` and ``grad``; the module itself is not modified (a copy is put in eval
    mode). An :class:`MLP` without batch norm gets a :class:`DenseApply` (the same function, in the
    form the structured NTK recognises); any other module gets a :class:`ModuleApply`.

    Args:
        module: any Flax NNX module.

    Returns:
        ``(apply_fn, params)``.

    Raises:
        ValueError: naming ``module`` if it is not an NNX module.
    """
    if not isinstance(module, nnx.Module):
        raise ValueError(f"module: expected a flax.nnx.Module, got {type(module).__name__}")
    m = nnx.clone(module)
    m.eval()
    graphdef, params, rest = nnx.split(m, nnx.Param, ...)
    if isinstance(m, MLP) and m.norms is None:
        return DenseApply(m.activation), params
    return ModuleApply(graphdef, rest), params


def init_mlp(
    key: PRNGKeyArray,
    in_features: int,
    hidden: Sequence[int],
    out_features: int = 1,
    **kwargs,
) -> tuple[Callable, Any]:
    """Initialise an :class:`MLP` from a key and return its pure view ``(apply_fn, params)``.

    Functional and cheap, so ``jax.vmap(lambda k: init_mlp(k, ...)[1])(keys)`` stacks the params of
    many seeds (``apply_fn`` does not depend on the key).

    Args:
        key: PRNG key for the weights (and the dropout stream).
        in_features, hidden, out_features: the architecture (see :class:`MLP`).
        **kwargs: further :class:`MLP` keyword arguments (activation, kernel_init, dropout_rate, ...).

    Returns:
        ``(apply_fn, params)`` as from :func:`pure`.
    """
    return pure(MLP(in_features, hidden, out_features, rngs=nnx.Rngs(key), **kwargs))


# --------------------------------------------------------------------------------------------------
# The MLP as a pure function of params, batch-norm statistics and a dropout key


def init_mlp_stacked(
    keys: Array,
    in_features: int,
    hidden: Sequence[int],
    kernel_init: Initializer,
    out_features: int = 1,
) -> tuple[Callable, Any]:
    """``(apply_fn, params)``: :func:`init_mlp` once per key, the parameters stacked (axis S).

    Args:
        keys: (S,) typed or (S, 2) raw PRNG keys, one per network.
        in_features, hidden, kernel_init, out_features: as :func:`init_mlp` (zero biases).

    Returns:
        The pure ``apply_fn(params, x)`` of one network and the stacked parameters.
    """
    apply_fn, _ = init_mlp(keys[0], in_features, hidden, out_features, kernel_init=kernel_init)
    init = jax.vmap(
        lambda k: init_mlp(k, in_features, hidden, out_features, kernel_init=kernel_init)[1]
    )
    return apply_fn, init(keys)


def init_mlp_uniform(
    key: PRNGKeyArray,
    in_features: int,
    hidden: Sequence[int],
    out_features: int = 1,
    *,
    batch_norm: bool = False,
    dtype: Any = jnp.float32,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """PyTorch's default ``nn.Linear`` initialisation in the :class:`MLP` layout.

    Every kernel and bias of layer l is U(±1/√fan_inₗ) (``torch.nn.Linear``'s default, the
    initialisation of the two-moons code of Pezeshki et al. 2021). All of them are slices of one
    uniform draw of Σₗ (fan_inₗ + 1)·fan_outₗ numbers (one random-bits kernel to compile, not one
    per array); layer l's block is [kernel; bias], (fan_inₗ + 1, fan_outₗ). Batch norm starts at
    scale 1, bias 0, running mean 0 and running variance 1.

    Args:
        key: PRNG key.
        in_features, hidden, out_features: the architecture (see :class:`MLP`).
        batch_norm: include batch-norm parameters and running statistics for each hidden layer.
        dtype: parameter dtype.

    Returns:
        ``(params, batch_stats)``: ``params`` ``{"linears": {l: {"kernel", "bias"}}}`` (kernels
        (fan_in, fan_out)) plus ``"norms": {l: {"scale", "bias"}}`` with batch norm, the layout of
        the :class:`MLP` Param state; ``batch_stats`` ``{"norms": {l: {"mean", "var"}}}`` (the layout
        of its batch statistics) or ``None`` without batch norm.

    Raises:
        ValueError: naming ``in_features``, ``hidden`` or ``out_features`` when out of range.
    """
    hidden = _check_widths(in_features, hidden, out_features)
    widths = [int(in_features), *hidden, int(out_features)]
    sizes = list(zip(widths[:-1], widths[1:], strict=True))
    u = jax.random.uniform(key, (sum((a + 1) * b for a, b in sizes),), dtype, -1.0, 1.0)
    linears, offset = {}, 0
    for i, (fan_in, fan_out) in enumerate(sizes):
        block = u[offset : offset + (fan_in + 1) * fan_out].reshape(fan_in + 1, fan_out)
        block = block / math.sqrt(fan_in)
        linears[i] = {"kernel": block[:fan_in], "bias": block[fan_in]}
        offset += (fan_in + 1) * fan_out
    params: dict[str, Any] = {"linears": linears}
    if not batch_norm:
        return params, None
    params["norms"] = {
        i: {"scale": jnp.ones((h,), dtype), "bias": jnp.zeros((h,), dtype)}
        for i, h in enumerate(hidden)
    }
    stats = {
        "norms": {
            i: {"mean": jnp.zeros((h,), dtype), "var": jnp.ones((h,), dtype)}
            for i, h in enumerate(hidden)
        }
    }
    return params, stats


def mlp_apply(
    params: Any,
    x: Float[Array, "n ..."],
    *,
    batch_stats: Any = None,
    train: bool = False,
    key: PRNGKeyArray | None = None,
    dropout_rate: float = 0.0,
    activation: Callable[[Array], Array] = jax.nn.relu,
    momentum: float = 0.99,
    epsilon: float = 1e-5,
    unbiased_running_var: bool = False,
) -> tuple[Float[Array, "n out"], Any]:
    """The :class:`MLP` forward pass as a pure function, with explicit batch-norm state.

    Hidden layer l: h ← drop(φ(BN(h Wₗ + bₗ))), the output layer linear. Batch norm, train mode:
    BN(a) = γ·(a − μ_B)/√(σ²_B + ε) + β with the batch mean μ_B and biased variance σ²_B, and the
    running statistics updated as r ← m·r + (1 − m)·s (s = μ_B, and σ²_B, or σ²_B·n/(n − 1) with
    ``unbiased_running_var``); eval mode uses the running statistics (Ioffe & Szegedy 2015). Dropout
    (train mode only) keeps each unit with probability 1 − p and scales it by 1/(1 − p); layer l's
    mask is drawn from ``fold_in(key, l)``. Flax's conventions are the defaults (momentum 0.99,
    biased running variance); PyTorch's ``BatchNorm1d`` is ``momentum=0.9,
    unbiased_running_var=True``. Since φ = ReLU is positively homogeneous and the mask is ≥ 0,
    dropout before or after the activation is the same function.

    Args:
        params: :class:`MLP` Param state or the dicts of :func:`init_mlp_uniform`; with
            ``"norms"`` batch norm is applied.
        x: (n, ...) inputs.
        batch_stats: ``{"norms": {l: {"mean", "var"}}}``; required with batch norm.
        train: training mode (batch statistics, dropout on).
        key: PRNG key of this step's dropout masks; required when ``train`` and ``dropout_rate``
            > 0.
        dropout_rate: dropout probability p after each hidden activation, in [0, 1).
        activation: φ.
        momentum: decay m of the running statistics.
        epsilon: ε of batch norm.
        unbiased_running_var: update the running variance with the unbiased batch variance.

    Returns:
        ``(outputs (n, out), new_batch_stats)``; ``new_batch_stats`` is ``batch_stats`` outside
        train mode.

    Raises:
        ValueError: naming ``dropout_rate``, ``key`` or ``batch_stats`` when missing or out of
            range, or ``params``/``x`` as :class:`DenseApply` does.
    """
    if not 0.0 <= float(dropout_rate) < 1.0:
        raise ValueError(f"dropout_rate: must be in [0, 1), got {dropout_rate}")
    dropping = train and dropout_rate > 0
    if dropping and key is None:
        raise ValueError("key: required for dropout in train mode; pass this step's PRNG key")
    norms = params["norms"] if "norms" in params else None
    if norms is not None and batch_stats is None:
        raise ValueError(
            "batch_stats: params have batch norm ('norms') but no running statistics were given; "
            "pass the batch_stats of init_mlp_uniform or of the previous step"
        )
    layers = _linear_layers({"linears": params["linears"]})
    h = _flatten_input(x, layers[0][0].shape[0])
    new_norms = {}
    for i, (W, b) in enumerate(layers[:-1]):
        h = h @ W if b is None else h @ W + b
        if norms is not None:
            stats = batch_stats["norms"][i]
            if train:
                mean, var = jnp.mean(h, axis=0), jnp.var(h, axis=0)
                n = h.shape[0]
                running_var = var * n / (n - 1) if unbiased_running_var else var
                new_norms[i] = {
                    "mean": momentum * stats["mean"] + (1 - momentum) * mean,
                    "var": momentum * stats["var"] + (1 - momentum) * running_var,
                }
            else:
                mean, var = stats["mean"], stats["var"]
            norm = norms[i]
            h = (h - mean) * jax.lax.rsqrt(var + epsilon) * norm["scale"] + norm["bias"]
        h = activation(h)
        if dropping:
            keep = jax.random.bernoulli(jax.random.fold_in(key, i), 1.0 - dropout_rate, h.shape)
            h = jnp.where(keep, h / (1.0 - dropout_rate), 0.0)
    W, b = layers[-1]
    out = h @ W if b is None else h @ W + b
    new_stats = {"norms": new_norms} if (train and norms is not None) else batch_stats
    return out, new_stats


def mlp_logits(
    params: Any,
    x: Float[Array, "n d"],
    *,
    batch_stats: Any = None,
    train: bool = False,
    key: PRNGKeyArray | None = None,
    dropout_rate: float = 0.0,
    **options: Any,
) -> tuple[Float[Array, " n"], Any]:
    """``(f (n,), new_batch_stats)``: a one-logit :func:`mlp_apply`, the fast path where it exists.

    In train mode a network of one hidden ReLU layer without batch norm or dropout goes through
    :func:`shallow_relu` (the same function, a gradient that needs only the activation pattern);
    everything else through :func:`mlp_apply`.

    Args:
        params, x, batch_stats, train, key, dropout_rate: as :func:`mlp_apply`.
        **options: the rest of :func:`mlp_apply` (e.g. PyTorch's batch norm, ``momentum=0.9,
            unbiased_running_var=True``).

    Returns:
        ``(logits (n,), new_batch_stats)``.

    Raises:
        ValueError: as :func:`mlp_apply` or :func:`shallow_relu`.
    """
    shallow = len(params["linears"]) == 2 and "norms" not in params and not dropout_rate
    if shallow and train:
        hidden, out = params["linears"][0], params["linears"][1]
        f = shallow_relu(hidden["kernel"], hidden["bias"], out["kernel"], out["bias"], x)
        return f, batch_stats
    out, new_stats = mlp_apply(
        params,
        x,
        batch_stats=batch_stats,
        train=train,
        key=key,
        dropout_rate=dropout_rate,
        **options,
    )
    return out[:, 0], new_stats


@functools.cache
def _seeded_init(seeds: int, in_features: int, hidden: tuple[int, ...], batch_norm: bool):
    @jax.jit
    def initial(base):
        seed_keys = jax.vmap(jax.random.fold_in, (None, 0))(base, jnp.arange(seeds))
        init_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(seed_keys)
        train_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(seed_keys)
        params0, stats0 = jax.vmap(
            lambda k: init_mlp_uniform(k, in_features, list(hidden), batch_norm=batch_norm)
        )(init_keys)
        return train_keys, params0, stats0

    return initial


def init_mlp_seeds(
    key: PRNGKeyArray,
    seeds: int,
    in_features: int,
    hidden: Sequence[int],
    *,
    batch_norm: bool = False,
) -> tuple[Array, dict[str, Any], dict[str, Any] | None]:
    """``(train_keys, params0, batch_stats0)`` of ``seeds`` one-logit networks, stacked (axis S).

    Seed s initialises (:func:`init_mlp_uniform`) from ``fold_in(fold_in(key, s), 0)`` and trains
    with ``fold_in(fold_in(key, s), 1)``, so seed s is the same whatever the number of seeds; one
    compiled call per architecture, shared by every caller of that shape.

    Args:
        key: the root PRNG key.
        seeds: S ≥ 1.
        in_features, hidden, batch_norm: as :func:`init_mlp_uniform` (one output).

    Returns:
        ``(train_keys (S,), params0, batch_stats0)``, each stacked over seeds.

    Raises:
        ValueError: naming ``seeds`` when not an integer ≥ 1, or as :func:`init_mlp_uniform`.
    """
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds: expected an integer >= 1, got {seeds!r}")
    hidden = tuple(_check_widths(in_features, hidden, 1))
    return _seeded_init(seeds, int(in_features), hidden, bool(batch_norm))(key)


# --------------------------------------------------------------------------------------------------
# One hidden ReLU layer, scalar output: a gradient that needs only the activation pattern

_FEW_INPUTS = 4  # up to this many input features, x W + b is cheaper as broadcast multiply-adds


def _pattern(W1: Array, b1: Array, x: Array) -> Array:
    """The activation pattern M = 1[x W₁ + b₁ > 0], (n, H), in x's dtype."""
    if x.shape[1] <= _FEW_INPUTS:  # a contraction over 1–4 inputs fuses with the comparison
        pre = b1
        for k in range(x.shape[1]):
            pre = pre + x[:, k : k + 1] * W1[k]
    else:
        pre = x @ W1 + b1
    return (pre > 0).astype(x.dtype)


def _shallow_forward(W1, b1, w2, b2, x):
    m = _pattern(W1, b1, x)
    xe = jnp.concatenate([x, jnp.ones_like(x[:, :1])], axis=1)  # (n, d + 1)
    Wb = jnp.concatenate([W1, b1[None]], axis=0)  # (d + 1, H): [W₁; b₁]
    P = m @ (Wb * w2[:, 0]).T  # (n, d + 1), M Bᵀ with B = [W₁; b₁] ∘ w₂; P[:, :d] = ∂f/∂x
    return jnp.sum(P * xe, axis=1) + b2[0], (Wb, w2, xe, m, P)


@jax.custom_vjp
def _shallow(W1, b1, w2, b2, x):
    return _shallow_forward(W1, b1, w2, b2, x)[0]


def _shallow_bwd(res, g):
    Wb, w2, xe, m, P = res
    A = (g[:, None] * xe).T @ m  # (d + 1, H): Σᵢ gᵢ xᵢₖ Mᵢⱼ and, last row, Σᵢ gᵢ Mᵢⱼ
    a = w2[:, 0]
    dW1, db1 = A[:-1] * a, A[-1] * a
    dw2 = jnp.sum(Wb * A, axis=0)[:, None]  # Σᵢ gᵢ relu(preᵢⱼ)
    dx = g[:, None] * P[:, :-1]
    return dW1, db1, dw2, jnp.sum(g, keepdims=True), dx


_shallow.defvjp(_shallow_forward, _shallow_bwd)


def shallow_relu(
    kernel1: Float[Array, "d H"],
    bias1: Float[Array, " H"],
    kernel2: Float[Array, "H 1"],
    bias2: Float[Array, " 1"],
    x: Float[Array, "n d"],
) -> Float[Array, " n"]:
    """Logits f(x) = relu(x W₁ + b₁) w₂ + b₂ of a one-hidden-layer ReLU network, scalar output.

    The same function as ``DenseApply()([(W₁, b₁), (w₂, b₂)], x)[:, 0]``, with a reverse-mode
    derivative written for full-batch training (the two-moons net of Pezeshki et al. 2021, §3).
    With M = 1[x W₁ + b₁ > 0] the activation pattern and a = w₂, everything is a product with M:

    * forward: f = Σₖ x̃ₖ ∘ (M Bᵀ)ₖ + b₂ with x̃ = [x, 1] and B = [W₁; b₁] ∘ a;
    * backward, for an output cotangent g: A = (g ∘ x̃)ᵀ M gives ∂/∂W₁ = A[:d] ∘ a,
      ∂/∂b₁ = A[d] ∘ a, ∂/∂w₂ = Σₖ [W₁; b₁]ₖ ∘ Aₖ and ∂/∂b₂ = Σᵢ gᵢ; ∂/∂x = g ∘ (M Bᵀ)[:, :d].

    So a training step reads one (n, H) array twice instead of materialising pre-activations,
    activations and the backpropagated (n, H) gradient, and with few input features (d ≤ 4) the
    pattern is computed by broadcast multiply-adds rather than a matrix multiply. Only reverse mode
    is defined (``jax.grad``, ``jax.vjp``); for forward mode (``jax.jvp``, the NTK) use
    :class:`DenseApply`. ReLU′(0) is taken as 0, as in ``jax.nn.relu``.

    Args:
        kernel1: (d, H) first-layer kernel W₁.
        bias1: (H,) first-layer bias b₁.
        kernel2: (H, 1) output kernel w₂.
        bias2: (1,) output bias b₂.
        x: (n, d) inputs.

    Returns:
        (n,) logits.

    Raises:
        ValueError: naming the argument whose shape does not fit.
    """
    arrays = {"kernel1": kernel1, "bias1": bias1, "kernel2": kernel2, "bias2": bias2, "x": x}
    shapes = {k: jnp.shape(v) for k, v in arrays.items()}
    if len(shapes["x"]) != 2:
        raise ValueError(
            f"x: expected (n, d) inputs, got shape {shapes['x']}; flatten or batch with jax.vmap"
        )
    d = shapes["x"][1]
    if len(shapes["kernel1"]) != 2 or shapes["kernel1"][0] != d:
        raise ValueError(
            f"kernel1: expected shape (d, H) with d = {d} (x's features), got {shapes['kernel1']}"
        )
    H = shapes["kernel1"][1]
    expected = {"bias1": (H,), "kernel2": (H, 1), "bias2": (1,)}
    for name, shape in expected.items():
        if shapes[name] != shape:
            raise ValueError(
                f"{name}: expected shape {shape} for a hidden width of {H}, got {shapes[name]}"
            )
    return _shallow(kernel1, bias1, kernel2, bias2, x)
