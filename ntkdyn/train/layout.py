"""Where the seeds of a full-batch run go, and the backend policy: one value, :class:`SeedLayout`.

Training many seeds (restarts) of a small model at once has three choices that belong together:
batch the seeds into every step (``vmap``) or run them one after another (``map``); with ``vmap``,
how many seeds share a step (a *chunk*, the chunks one after another); and which devices the seed
axis is split over. :class:`SeedLayout` carries all three; :meth:`SeedLayout.parse` reads the
command-line form ``AXIS[:CHUNK][@DEVICES]`` (``vmap``, ``vmap:2``, ``map@1``, ``vmap:2@all``).

The backend policy lives here too: :func:`eigen_matmul_options` (from :mod:`ntkdyn.xla`) gives
the XLA CPU option that computes matrix products with Eigen (measured faster for Colored MNIST's
large full-batch steps, ``benchmarks/cmnist.py``), and :func:`cpu_restart_layout` the measured
default layout of those restarts on a CPU.

:func:`restart_keys` gives the keys of restart r, the same whichever run trains it
(:class:`ntkdyn.settings.RestartSettings` holds the settings of such a protocol).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import jax
import numpy as np

from ntkdyn.xla import eigen_matmul_options

__all__ = [
    "restart_keys",
    "SeedAxis",
    "SeedLayout",
    "eigen_matmul_options",
    "cpu_restart_layout",
]


class SeedAxis(enum.Enum):
    """How the seeds of one call are laid out in the compiled program.

    Attributes:
        VMAP: seeds batched into every step (``jax.vmap``). One large step instead of S small
            ones: fastest on accelerators and when a step is matrix-multiply bound.
        MAP: seeds trained one after the other (``jax.lax.map``) in the same compiled call. Each
            seed's working set stays in cache, which on some CPUs beats batching for small models;
            measure (``benchmarks/moons.py --seed-layout``).
    """

    VMAP = "vmap"
    MAP = "map"


@dataclasses.dataclass(frozen=True)
class SeedLayout:
    """The layout of the seed axis of a full-batch run: vmap or map, chunk, devices.

    Results do not depend on the layout (up to float rounding): seed s always draws its step keys
    from ``fold_in(keys[s], t)``.

    Attributes:
        axis: :class:`SeedAxis`.
        chunk: with ``VMAP``, seeds batched into each step, the chunks run one after another
            (``jax.lax.map(..., batch_size=chunk)``); ``None``: all seeds of a device in one step.
            On a CPU a chunk keeps a large step's working set in cache.
        devices: devices the seed axis is split over (a 1-D mesh, ``jax.shard_map``; the seeds
            are padded to a multiple of their number); ``None``: the default device.
    """

    axis: SeedAxis = SeedAxis.VMAP
    chunk: int | None = None
    devices: tuple[Any, ...] | None = None

    def __post_init__(self):
        if not isinstance(self.axis, SeedAxis):
            raise ValueError(f"axis: expected SeedAxis.VMAP or SeedAxis.MAP, got {self.axis!r}")
        if self.chunk is not None and (
            not isinstance(self.chunk, (int, np.integer)) or self.chunk < 1
        ):
            raise ValueError(
                f"chunk: expected an integer >= 1 or None (all seeds at once), got {self.chunk!r}"
            )
        if self.axis is SeedAxis.MAP and self.chunk is not None:
            raise ValueError("chunk: only a vmap layout batches seeds; drop the chunk or use vmap")
        if self.devices is not None:
            devices = tuple(self.devices)
            if not devices:
                raise ValueError(
                    "devices: got an empty sequence; pass e.g. jax.local_devices() or None"
                )
            object.__setattr__(self, "devices", devices)

    @classmethod
    def local(cls, axis: SeedAxis = SeedAxis.VMAP, chunk: int | None = None) -> SeedLayout:
        """``axis``/``chunk`` over all local devices when there are several, else the default one."""
        devices = tuple(jax.local_devices()) if jax.local_device_count() > 1 else None
        return cls(axis, chunk, devices)

    @classmethod
    def parse(cls, spec: str, *, flag: str = "--seed-layout") -> SeedLayout:
        """Read ``AXIS[:CHUNK][@DEVICES]``: AXIS ``vmap`` or ``map``, DEVICES ``all`` or ``1``.

        Without ``@DEVICES`` the seeds go over all local devices (``@all``).

        Args:
            spec: e.g. ``"vmap"``, ``"vmap:2"``, ``"map@1"``, ``"vmap:2@all"``.
            flag: the option name quoted in errors.

        Raises:
            ValueError: naming ``flag``, on anything else.
        """
        text = str(spec).strip().lower()
        hint = "expected AXIS[:CHUNK][@DEVICES], e.g. vmap, vmap:2, map@1, vmap:2@all"
        body, _, where = text.partition("@")
        name, _, chunk_text = body.partition(":")
        try:
            axis = SeedAxis(name)
        except ValueError:
            raise ValueError(f"{flag}: unknown seed axis {name!r} in {spec!r}; {hint}") from None
        chunk = None
        if chunk_text:
            if not chunk_text.isdigit() or int(chunk_text) < 1:
                raise ValueError(f"{flag}: chunk must be an integer >= 1 in {spec!r}; {hint}")
            if axis is SeedAxis.MAP:
                raise ValueError(f"{flag}: only vmap takes a chunk, got {spec!r}; {hint}")
            chunk = int(chunk_text)
        if where not in ("", "all", "1"):
            raise ValueError(f"{flag}: devices must be 'all' or '1' in {spec!r}; {hint}")
        if where == "1":
            return cls(axis, chunk, None)
        return cls.local(axis, chunk)

    def describe(self) -> dict[str, Any]:
        """A JSON-able record of the layout (for config.json)."""
        return {
            "axis": self.axis.value,
            "chunk": self.chunk,
            "devices": len(self.devices) if self.devices else 1,
        }


def cpu_restart_layout(backend: str | None = None) -> SeedLayout:
    """The measured default layout of Colored MNIST restarts: two per step on a CPU, all elsewhere.

    On a 2-core CPU, ten restarts of the large full-batch step batched together run 1–11 % slower
    per restart than two at a time, whose working set stays in cache (``benchmarks/cmnist.py``,
    ``benchmarks/RESULTS.md``); on accelerators one large step is best.
    """
    backend = jax.default_backend() if backend is None else backend
    return SeedLayout.local(SeedAxis.VMAP, 2 if backend == "cpu" else None)


#: The PRNG streams of a restart protocol, in their fixed order.
STREAMS: tuple[str, ...] = ("data", "init", "spectrum")


def restart_keys(seed: int, stream: str, first: int, count: int):
    """PRNG keys of restarts ``first`` … ``first + count − 1`` of ``stream`` (data, init, spectrum).

    Restart r's key is entry r of one split over restarts 0 … r of ``fold_in(PRNGKey(seed), i)``
    (i the stream's index in :data:`STREAMS`), the same in every run that trains it: restarts
    trained in separate runs (``--first-restart``) are those of one longer run.

    Raises:
        ValueError: an unknown ``stream``.
    """
    if stream not in STREAMS:
        raise ValueError(f"stream: expected one of {', '.join(STREAMS)}, got {stream!r}")
    root = jax.random.fold_in(jax.random.PRNGKey(seed), STREAMS.index(stream))
    return jax.random.split(root, first + count)[first:]
