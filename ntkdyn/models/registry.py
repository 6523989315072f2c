"""The model registry: a name or a user's ``module:factory`` → a pure one-logit :class:`Model`.

Registered names (:data:`MODELS`): ``mlp`` (ReLU MLP, zero biases, the :class:`DenseApply` form the
structured and matrix-free tangent code reads), ``cnn`` (the small NNX CNN), ``resnet10``,
``resnet18`` and ``resnet50`` (Linen, batch norm frozen at θ₀ statistics of the training inputs,
:func:`ntkdyn.models.frozen.freeze_batch_stats`). Every factory is called ``factory(key, x,
**options)``: a PRNG key and a batch of inputs, from which it reads the input shape.

A user's network joins as ``"package.module:factory"`` (found on ``sys.path`` / ``PYTHONPATH``),
called ``factory(key, x)``; it may return

* ``(apply_fn, params)`` — a pure function and its params PyTree;
* a Flax NNX module — turned into ``(apply_fn, params)`` by :func:`ntkdyn.models.mlp.pure` (eval
  mode; an NNX batch norm keeps the module's own running averages, which are not measured here —
  the description says so);
* ``(module, variables)`` for a Linen module — its batch statistics, if any, frozen at θ₀ over
  ``stats_x`` (or ``x``) by :func:`~ntkdyn.models.frozen.freeze_batch_stats`.

:func:`check_logits` then makes sure there is one logit per example. The batch-norm traps (the whole
``variables`` given as ``params``; ``train=True``) are explained in :mod:`ntkdyn.models.frozen`.

Example::

    >>> import jax, numpy as np
    >>> from ntkdyn.models.registry import build_model
    >>> x = np.zeros((4, 2), np.float32)
    >>> m = build_model("mlp", jax.random.PRNGKey(1), x, hidden=[8])
    >>> m.apply_fn(m.params, x).shape, m.description
    ((4, 1), 'mlp 2 → 8 → 1 (ReLU, LeCun-normal weights, zero biases)')
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.errors import ModifyScopeVariableError

from ntkdyn.errors import InputError
from ntkdyn.models.cnn import init_cnn
from ntkdyn.models.frozen import check_params, freeze_batch_stats
from ntkdyn.models.mlp import DenseApply, init_mlp, pure, xavier_uniform
from ntkdyn.models.resnet import RESNET_ARCHS, init_resnet

__all__ = [
    "Model",
    "MODELS",
    "DEFAULT_HIDDEN",
    "register_model",
    "build_model",
    "load_factory",
    "as_model",
    "check_logits",
]

#: MLP hidden widths by dataset, as the spectrum command uses them; other data get (300, 300).
DEFAULT_HIDDEN: dict[str, tuple[int, ...]] = {
    "moons": (500,),
    "mnist": (300, 300),
    "cmnist": (300, 300),
}
_FALLBACK_HIDDEN = (300, 300)
_CNN_CHANNELS = (16, 32)
_RESNET_WIDTH = 64
_ACCEPTED = "(apply_fn, params), a Flax NNX module, or (linen_module, variables) for a Linen module"


class Model(NamedTuple):
    """A network as the theory sees it: a pure function, its params, and a line for reports.

    Attributes:
        apply_fn: pure ``(params, x) -> (n,)`` logits (one per example) or ``(n, 1)`` (the
            registered ``mlp`` and ``cnn`` keep their (n, 1) output and their structure, exactly
            the functions the spectrum command used; a factory returning a :class:`Model` is
            taken as it is).
        params: the PyTree differentiated by the tangent features.
        description: for reports, e.g. ``"resnet10 (width 16), batch norm frozen at θ₀
            statistics of 1,000 training images"``.
        frozen_batch_stats: whether batch norm runs on statistics measured at θ₀.
    """

    apply_fn: Callable
    params: Any
    description: str
    frozen_batch_stats: bool


def _in_features(x) -> int:
    return int(math.prod(np.shape(x)[1:]))


def _mlp(
    key,
    x,
    *,
    hidden: Sequence[int] | None = None,
    dataset: str | None = None,
    kernel_init: str | Callable | None = None,
    **_: Any,
) -> Model:
    """ReLU MLP with zero biases: LeCun-normal weights, Xavier-uniform for cmnist (the spectrum's)."""
    widths = [int(h) for h in (hidden if hidden is not None else _default_hidden(dataset))]
    if not widths or any(h < 1 for h in widths):
        raise InputError(f"--hidden: widths must be >= 1, got {widths}")
    if kernel_init is None:
        kernel_init = "xavier_uniform" if dataset == "cmnist" else "lecun_normal"
    inits = {"lecun_normal": None, "xavier_uniform": xavier_uniform}
    if isinstance(kernel_init, str):
        if kernel_init not in inits:
            raise InputError(
                f"kernel_init: expected one of {', '.join(inits)} or an initializer, got "
                f"{kernel_init!r}"
            )
        label = {"lecun_normal": "LeCun-normal", "xavier_uniform": "Xavier-uniform"}[kernel_init]
        init = inits[kernel_init]
    else:
        label, init = getattr(kernel_init, "__name__", "custom"), kernel_init
    d = _in_features(x)
    extra = {} if init is None else {"kernel_init": init}
    apply_fn, params = init_mlp(key, d, widths, **extra)
    arch = " → ".join(str(w) for w in [d, *widths, 1])
    return Model(apply_fn, params, f"mlp {arch} (ReLU, {label} weights, zero biases)", False)


def _default_hidden(dataset: str | None) -> tuple[int, ...]:
    return DEFAULT_HIDDEN.get(dataset, _FALLBACK_HIDDEN) if dataset else _FALLBACK_HIDDEN


def _cnn(key, x, *, hidden: Sequence[int] | None = None, **_: Any) -> Model:
    """The small NNX CNN on single-channel images (n, H, W) or (n, H, W, C)."""
    shape = np.shape(x)
    if len(shape) not in (3, 4):
        raise InputError(
            f"--model: cnn needs images shaped (n, H, W) or (n, H, W, C), got inputs of shape "
            f"{shape}; use --model mlp"
        )
    channels = [int(c) for c in (hidden or _CNN_CHANNELS)]
    in_channels = 1 if len(shape) == 3 else shape[-1]
    apply_fn, params = init_cnn(key, in_channels, channels)
    return Model(apply_fn, params, f"cnn (channels {', '.join(map(str, channels))})", False)


def _resnet(arch: str) -> Callable[..., Model]:
    def factory(key, x, *, width: int | None = None, stats_x=None, **_: Any) -> Model:
        shape = np.shape(x)
        if len(shape) != 4 or shape[-1] != 3 or shape[1] < 32:
            raise InputError(
                f"--model: {arch} needs RGB images shaped (n, H, W, 3) with H >= 32, got inputs "
                f"of shape {shape}"
            )
        w = _RESNET_WIDTH if width is None else int(width)
        if w < 1:
            raise InputError(f"--width: must be >= 1, got {width}")
        module = RESNET_ARCHS[arch](width=w)
        variables = init_resnet(module, key, image_size=shape[1])
        sx = x if stats_x is None else stats_x
        apply, params, _ = freeze_batch_stats(module, variables, sx)

        @jax.jit
        def apply_fn(params, x):
            return apply(params, x)[:, 0]

        return Model(
            apply_fn,
            params,
            f"{arch} (width {w}), batch norm frozen at θ₀ statistics of {len(sx):,} training "
            "images",
            True,
        )

    factory.__name__ = arch
    factory.__doc__ = f"{arch} (torchvision layout, one logit), batch norm frozen at θ₀."
    return factory


#: Model name → factory ``factory(key, x, **options) -> Model``.
MODELS: dict[str, Callable[..., Model]] = {
    "mlp": _mlp,
    "cnn": _cnn,
    **{arch: _resnet(arch) for arch in RESNET_ARCHS},
}


def register_model(name: str, factory: Callable, *, overwrite: bool = False) -> None:
    """Add a factory to :data:`MODELS`, so ``build_model(name, ...)`` (and ``--model name``) finds it.

    Args:
        name: the model's name (no ``:``).
        factory: ``factory(key, x, **options)`` returning a :class:`Model` or any form
            :func:`as_model` accepts.
        overwrite: replace an existing factory of that name.

    Raises:
        ValueError: a bad name, a non-callable factory, or a taken name without ``overwrite``.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"name: expected a plain model name without ':', got {name!r}")
    if not callable(factory):
        raise ValueError(f"factory: expected a callable, got {type(factory).__name__}")
    if name in MODELS and not overwrite and MODELS[name] is not factory:
        raise ValueError(f"name: {name!r} is already registered; pass overwrite=True to replace it")
    MODELS[name] = factory


def load_factory(spec: str) -> Callable:
    """Import ``"package.module:factory"`` from ``sys.path`` (``PYTHONPATH``) and return the factory.

    Args:
        spec: ``module:attribute`` (the attribute may be dotted, ``module:Class.method``).

    Returns:
        The callable.

    Raises:
        InputError: not of the form ``module:attr``; the import fails (the exception is named);
            the attribute is missing; it is not callable.
    """
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise InputError(
            f"--model: expected a registered name ({', '.join(sorted(MODELS))}) or "
            f"'package.module:factory', got {spec!r}"
        )
    mod_name, attr = spec.split(":")
    try:
        obj: Any = importlib.import_module(mod_name)
    except Exception as exc:  # any failure inside the user's module is reported, not hidden
        raise InputError(
            f"--model: cannot import module {mod_name!r} ({type(exc).__name__}: {exc}); is it on "
            "PYTHONPATH?"
        ) from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InputError(
                f"--model: module {mod_name!r} has no attribute {attr!r}; name a factory "
                f"defined there as {mod_name}:<factory>"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise InputError(
            f"--model: {spec} is a {type(obj).__name__}, not a callable; name a factory f(key, x)"
        )
    return obj


def _train_kw(module: nn.Module) -> dict[str, Any]:
    try:
        sig = inspect.signature(module.__call__)
    except (TypeError, ValueError):
        return {}
    return {"train": False} if "train" in sig.parameters else {}


def as_model(obj: Any, key, x, *, name: str, stats_x=None) -> Model:
    """Normalise what a factory returned into a checked one-logit :class:`Model`.

    Accepted: a :class:`Model`; ``(apply_fn, params)``; a Flax NNX module (eval mode,
    :func:`ntkdyn.models.mlp.pure`); ``(linen_module, variables)`` (batch statistics frozen at θ₀
    over ``stats_x`` or ``x`` by :func:`~ntkdyn.models.frozen.freeze_batch_stats`; without batch
    statistics the module is applied with its variables as they are). The result passes
    :func:`check_logits` on ``x``.

    Args:
        obj: the factory's return value.
        key: the factory's key (unused here; kept so the signature mirrors the factory's).
        x: a batch of inputs to check the output on.
        name: the model's name or ``module:factory`` for messages and the description.
        stats_x: inputs whose batch-norm statistics are frozen (``None``: ``x``).

    Returns:
        The :class:`Model`, its ``apply_fn`` giving (n,) logits (or (n, 1) for a dense MLP whose
        structure the tangent code reads, or a :class:`Model` returned as such).

    Raises:
        InputError: any other return value (what was returned and the accepted forms are named),
            a params tree holding ``batch_stats``, or a failed :func:`check_logits`.
    """
    del key
    frozen = False
    if isinstance(obj, Model):
        model = obj
    elif isinstance(obj, nnx.Module):
        apply_fn, params = pure(obj)
        desc = f"{name} (Flax NNX {type(obj).__name__}, eval mode)"
        if any(isinstance(v, nnx.BatchNorm) for _, v in nnx.iter_graph(obj)):
            # pure() closes over the module's own running averages; they are not measured here
            desc += ", batch norm on the module's own running statistics"
        model = Model(apply_fn, params, desc, False)
    elif isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], nn.Module):
        module, variables = obj
        if not isinstance(variables, Mapping) or "params" not in variables:
            raise InputError(
                f"--model: {name} returned a Linen {type(module).__name__} with "
                f"{type(variables).__name__} instead of its variables dict (with 'params'); "
                f"return (module, module.init(key, x))"
            )
        if "batch_stats" in variables:
            sx = x if stats_x is None else stats_x
            apply_fn, params, _ = freeze_batch_stats(module, variables, sx)
            frozen = True
            desc = (
                f"{name} (Flax Linen {type(module).__name__}), batch norm frozen at θ₀ "
                f"statistics of {len(sx):,} training examples"
            )
        else:
            rest = {k: v for k, v in variables.items() if k != "params"}
            kw = _train_kw(module)

            def apply_fn(params, x):
                return module.apply({"params": params, **rest}, x, **kw)

            params = variables["params"]
            desc = f"{name} (Flax Linen {type(module).__name__})"
        model = Model(apply_fn, params, desc, frozen)
    elif isinstance(obj, tuple) and len(obj) == 2 and callable(obj[0]):
        check_params(obj[1])
        model = Model(obj[0], obj[1], name, False)
    else:
        what = type(obj).__name__
        if isinstance(obj, tuple):
            what = f"a tuple of {len(obj)} ({', '.join(type(o).__name__ for o in obj)})"
        raise InputError(f"--model: {name} returned {what}; a factory must return {_ACCEPTED}")
    apply_fn = check_logits(
        model.apply_fn, model.params, x, name=name, squeeze=not isinstance(obj, Model)
    )
    return model._replace(apply_fn=apply_fn)


def check_logits(
    apply_fn: Callable, params: Any, x, *, name: str = "the model", squeeze: bool = True
) -> Callable:
    """Check that ``apply_fn(params, x)`` gives one finite logit per example; return the (n,) view.

    ``(n,)`` passes as is; ``(n, 1)`` is wrapped to ``(n,)`` — except a :class:`DenseApply` (the
    registered MLP), whose structure the tangent code reads and whose (n, 1) output it takes as one
    logit. Only shapes are evaluated (``jax.eval_shape``), so this costs no compute.

    Args:
        apply_fn: ``(params, x) -> logits``.
        params: its params.
        x: a batch of n inputs.
        name: the model's name for messages.
        squeeze: wrap an (n, 1) output to (n,); ``False`` keeps ``apply_fn`` as it is (the
            registered models, whose (n, 1) views the spectrum code reads as they are).

    Returns:
        ``apply_fn``, or a wrapper returning ``(n,)``.

    Raises:
        InputError: params holding ``batch_stats``; ``train=True`` with immutable batch
            statistics (Flax's ``ModifyScopeVariableError``); an output of another shape
            ((n, k > 1): the analysis needs one logit per example).
    """
    check_params(params)
    n = np.shape(x)[0]
    try:
        out = jax.eval_shape(apply_fn, params, jnp.asarray(x))
    except ModifyScopeVariableError as exc:
        raise InputError(
            f"--model: {name} runs batch norm in train mode (train=True), where the batch "
            "statistics are a mutable collection Flax refuses to update here, and where each "
            "logit depends on the whole batch; evaluate with train=False and statistics frozen at "
            "θ₀: ntkdyn.models.frozen.freeze_batch_stats(module, variables, x_train)"
        ) from exc
    shape = getattr(out, "shape", None)
    if shape == (n,):
        return apply_fn
    if shape == (n, 1):
        if not squeeze or isinstance(apply_fn, DenseApply):
            return apply_fn

        def logits(params, x):
            return apply_fn(params, x)[:, 0]

        return logits
    if shape is not None and len(shape) == 2 and shape[0] == n:
        raise InputError(
            f"--model: {name} returns {shape[1]} outputs per example (shape {shape}); the analysis "
            "needs one logit per example (binary): give the network a single output unit"
        )
    raise InputError(
        f"--model: {name} returned output of shape {shape} for {n} inputs; expected (n,) or "
        "(n, 1) logits, one per example"
    )


def build_model(
    spec: str,
    key,
    x,
    *,
    hidden: Sequence[int] | None = None,
    width: int | None = None,
    stats_x=None,
    dataset: str | None = None,
    **options: Any,
) -> Model:
    """Build a registered model or a user's ``module:factory`` on inputs like ``x``.

    For ``mlp`` with ``dataset`` set to moons, mnist or cmnist, the same key gives the same params
    as the spectrum command (hidden default :data:`DEFAULT_HIDDEN`, Xavier-uniform for cmnist);
    deriving the key from a seed (the command uses ``fold_in(PRNGKey(seed), 1)``) is the caller's.

    Args:
        spec: a registered name (:data:`MODELS`) or ``"package.module:factory"``.
        key: PRNG key of the initialisation.
        x: a batch of inputs (shape and dtype are read; the output is checked on it).
        hidden: MLP widths / CNN channels.
        width: ResNet first-stage channels (default 64).
        stats_x: inputs whose batch-norm statistics are frozen at θ₀ (default ``x``).
        dataset: the dataset's name, for the MLP's defaults.
        **options: further factory options (``kernel_init`` for the MLP).

    Returns:
        The checked :class:`Model`.

    Raises:
        InputError: an unknown name, a failing user factory (see :func:`load_factory`,
            :func:`as_model`), or options the model does not take.
    """
    if spec in MODELS:
        opts = dict(options)
        for k, v in (("hidden", hidden), ("width", width), ("dataset", dataset)):
            if v is not None:
                opts[k] = v
        if stats_x is not None:
            opts["stats_x"] = stats_x
        _check_options(spec, opts)
        obj = MODELS[spec](key, x, **opts)
        name = spec
    elif ":" in str(spec):
        given = [k for k, v in (("--hidden", hidden), ("--width", width)) if v is not None]
        if given or options:
            raise InputError(
                f"{(given or list(options))[0]}: a user's factory {spec} is called factory(key, x) "
                "and takes no options; set them inside the factory"
            )
        factory = load_factory(spec)
        obj = factory(key, x)
        name = spec
    else:
        raise InputError(
            f"--model: unknown model {spec!r}; registered: {', '.join(sorted(MODELS))}; or "
            "'package.module:factory' for your own network (on PYTHONPATH)"
        )
    return as_model(obj, key, x, name=name, stats_x=stats_x)


def _check_options(spec: str, opts: Mapping[str, Any]) -> None:
    """Options a built-in factory does not take are an error, not silently dropped."""
    takes = {
        "mlp": {"hidden", "dataset", "kernel_init", "stats_x"},
        "cnn": {"hidden", "dataset", "stats_x"},
    }.get(spec, {"width", "stats_x", "dataset"} if spec in RESNET_ARCHS else None)
    if takes is None:
        return
    extra = sorted(set(opts) - takes)
    if extra:
        flag = "--" + extra[0].replace("_", "-")
        raise InputError(f"{flag}: --model {spec} does not take {extra[0]}; drop it")
