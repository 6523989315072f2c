"""Experiment settings as frozen dataclasses, and the command line built from them.

Every experiment keeps its protocol in one frozen dataclass: the published values are the field
defaults, ``quick()`` returns the smoke-test variant, and validation happens in the dataclass
(``__post_init__``), before anything is written. This module turns such a dataclass into
command-line flags and back:

* :func:`add_arguments` adds one flag per field (``max_images`` → ``--max-images``), with the type
  taken from the default and the help from the dataclass docstring's ``Attributes:`` section;
* :func:`from_arguments` applies only the flags the user gave on top of a base config (the
  published one, or ``quick()`` with ``--quick``);
* :func:`check` validates a config against declarative rules (:func:`integer`, :func:`number`,
  :func:`one_of`, :func:`optional`, :func:`pair`, :func:`each`), one per field, from ``__post_init__``;
* :class:`RestartSettings` is the shared base of the protocols over seeds (seeds, first
  seed, root seed, seed layout, CPU matrix library);
* :class:`ConfigError` is the validation error: in Python it reads ``first_seed: …``; the command
  line prints it with the flag the user typed, ``--first-seed: …``.

Example:
    >>> import argparse, dataclasses
    >>> @dataclasses.dataclass(frozen=True)
    ... class Config:
    ...     '''Settings.
    ...
    ...     Attributes:
    ...         steps: number of training steps.
    ...     '''
    ...     steps: int = 1000
    >>> parser = argparse.ArgumentParser()
    >>> add_arguments(parser, Config())
    >>> from_arguments(Config(), parser.parse_args(["--steps", "5"]))
    Config(steps=5)
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import math
import numbers
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ntkdyn.errors import InputError

__all__ = [
    "ConfigError",
    "RestartSettings",
    "Rule",
    "add_arguments",
    "check",
    "each",
    "field_help",
    "flag_name",
    "from_arguments",
    "integer",
    "number",
    "one_of",
    "optional",
    "pair",
]


def flag_name(field: str) -> str:
    """The command-line flag of a config field: ``max_images`` → ``--max-images``."""
    return "--" + field.replace("_", "-")


class ConfigError(InputError):
    """An invalid setting: names the field (Python) or its flag (command line).

    Attributes:
        field: the dataclass field at fault.
        message: what was wrong and what to do.
    """

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")

    def for_cli(self) -> str:
        """The error as the command line prints it, naming the flag."""
        return f"{flag_name(self.field)}: {self.message}"


class Rule(typing.NamedTuple):
    """One declarative check of a setting: a predicate and what it expects, in words.

    Build rules with :func:`integer`, :func:`number`, :func:`one_of`, :func:`optional`,
    :func:`pair` and :func:`each`; :func:`check` applies a mapping field → rule and raises :class:`ConfigError`
    ``"<field>: expected <expects>, got <value>"`` for the first field that fails.

    Attributes:
        test: ``test(value) -> bool``.
        expects: what a valid value is, e.g. ``"an integer >= 1"``.
    """

    test: Callable[[Any], bool]
    expects: str


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def integer(low: int | None = None, high: int | None = None) -> Rule:
    """An integer in [low, high] (either bound optional)."""
    bounds = [f">= {low}"] * (low is not None) + [f"<= {high}"] * (high is not None)
    return Rule(
        lambda v: _is_int(v) and (low is None or v >= low) and (high is None or v <= high),
        "an integer" + (" " + " and ".join(bounds) if bounds else ""),
    )


def number(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Rule:
    """A finite number above ``low`` and below ``high`` (closed unless ``*_open``)."""

    def test(v: Any) -> bool:
        if not _is_number(v):
            return False
        if low is not None and (v <= low if low_open else v < low):
            return False
        return high is None or (v < high if high_open else v <= high)

    if low is not None and high is not None:
        text = f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
        text = f"a finite number {'>' if low_open else '>='} {low}"
    elif high is not None:
        text = f"a finite number {'<' if high_open else '<='} {high}"
    else:
        text = "a finite number"
    return Rule(test, text)


def one_of(*options: Any) -> Rule:
    """One of ``options``."""
    return Rule(lambda v: v in options, "one of " + ", ".join(str(o) for o in options))


def optional(rule: Rule) -> Rule:
    """``None`` or a value ``rule`` accepts."""
    return Rule(lambda v: v is None or rule.test(v), f"{rule.expects}, or none")


def pair(rule: Rule) -> Rule:
    """Two values, each accepted by ``rule`` (e.g. one per class)."""

    def test(v: Any) -> bool:
        return isinstance(v, (tuple, list)) and len(v) == 2 and all(rule.test(x) for x in v)

    return Rule(test, f"two values, each {rule.expects}")


def each(rule: Rule) -> Rule:
    """One or more values, each accepted by ``rule``."""

    def test(v: Any) -> bool:
        return isinstance(v, (tuple, list)) and len(v) > 0 and all(rule.test(x) for x in v)

    return Rule(test, f"one or more values, each {rule.expects}")


def check(config: Any, rules: Mapping[str, Rule]) -> None:
    """Apply ``rules`` (field → :class:`Rule`) to ``config``, in order.

    Raises:
        ConfigError: naming the first field whose value its rule rejects.
    """
    for name, rule in rules.items():
        value = getattr(config, name)
        if not rule.test(value):
            raise ConfigError(name, f"expected {rule.expects}, got {value!r}")


def field_help(cls: type) -> dict[str, str]:
    """Each field's description from the ``Attributes:`` section of ``cls``'s docstring."""
    doc = typing.cast(str, cls.__doc__ or "")
    lines = doc.splitlines()
    out: dict[str, str] = {}
    inside, current, indent = False, None, None
    for line in lines:
        stripped = line.strip()
        if stripped == "Attributes:":
            inside, current = True, None
            continue
        if not inside:
            continue
        if not stripped:
            continue
        lead = len(line) - len(line.lstrip())
        match = re.match(r"^(\w+)(?: \([^)]*\))?: (.*)$", stripped)
        if match and (indent is None or lead == indent):
            indent = lead
            current = match.group(1)
            out[current] = match.group(2)
        elif current is not None and indent is not None and lead > indent:
            out[current] += " " + stripped
        else:
            break
    return out


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(the non-None type of an annotation, whether None is allowed)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        return (args[0] if len(args) == 1 else str), optional
    return tp, False


def _parser_for(tp: Any, optional: bool):
    def parse(text: str):
        if optional and text.lower() in ("none", "null", ""):
            return None
        return tp(text)

    parse.__name__ = getattr(tp, "__name__", "value")
    return parse


def _convert(tp: Any, value: Any, name: str) -> Any:
    if tp is int:
        try:
            as_float = float(value)
            whole = math.isfinite(as_float) and as_float == int(as_float)
        except (TypeError, ValueError):
            whole = False
        if not whole:
            raise ConfigError(name, f"expected an integer in this position, got {value}")
        return int(as_float)
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(name, f"expected a number in this position, got {value}") from None
    return tp(value) if tp is str else value


def add_arguments(
    parser: argparse.ArgumentParser,
    defaults: Any,
    *,
    skip: Iterable[str] = (),
    help: dict[str, str] | None = None,  # noqa: A002 - argparse's own word
    quick: Any = None,
    prefix: str = "",
) -> None:
    """Add one flag per field of the dataclass instance ``defaults``.

    A field holding a dataclass (``sd: SDSettings``) or a mapping of names to dataclasses (one
    entry per method) gets dotted flags, one per inner field: ``--sd.coef``, ``--irm.penalty-weight``
    (destination ``"sd.coef"``); :func:`from_arguments` puts the values back in place. Each flag's
    help shows one default: the published value, and the ``quick`` one where it differs
    (``(default: 10; --quick: 5)``).

    Flags default to "not given" (``argparse.SUPPRESS``), so :func:`from_arguments` can tell the
    user's choices from the base config's values; the help text shows the published default.
    bool fields become ``--name``/``--no-name``; tuple fields take several values; enum fields
    take a member's value; ``T | None`` fields also accept ``none``.

    Args:
        parser: the parser (or argument group) to extend.
        defaults: a dataclass instance whose values are shown as the defaults.
        skip: fields that get no flag (set by the command itself).
        help: help texts that replace the docstring's.
        quick: the ``--quick`` variant of ``defaults`` (its differing values are shown), or None.
        prefix: dotted prefix of the flags (used for nested settings, e.g. ``"sd."``).

    Raises:
        TypeError: if ``defaults`` is not a dataclass instance.
    """
    if not dataclasses.is_dataclass(defaults) or isinstance(defaults, type):
        raise TypeError(f"defaults: expected a dataclass instance, got {defaults!r}")
    texts: dict[str, str] = {}
    for cls in reversed(type(defaults).__mro__):  # a subclass's docstring adds to its bases'
        if dataclasses.is_dataclass(cls):
            texts.update(field_help(cls))
    texts.update(help or {})
    hints = typing.get_type_hints(type(defaults))
    skip = set(skip)
    for field in dataclasses.fields(defaults):
        if field.name in skip or not field.init:
            continue
        value = getattr(defaults, field.name)
        fast = None if quick is None else getattr(quick, field.name, None)
        inner = _nested(value)
        if inner is not None:
            for key, sub in inner.items():
                sub_quick = None if fast is None else _nested(fast).get(key)
                name = f"{prefix}{field.name}." if key is None else f"{prefix}{key}."
                add_arguments(parser, sub, quick=sub_quick, prefix=name)
            continue
        tp, optional = _base_type(hints.get(field.name, type(value)))
        text = texts.get(field.name, "")
        dest = prefix + field.name
        kw: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": dest}
        flag = flag_name(dest)
        default_text = _default_text(value, fast, quick is not None)
        if tp is bool:
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                help=f"{text} ({default_text})",
                **kw,
            )
            continue
        origin = typing.get_origin(tp)
        if origin in (tuple, list) or isinstance(value, (tuple, list)):
            args = typing.get_args(tp)
            fixed = bool(args) and Ellipsis not in args and len(args) > 1
            item = args[0] if args and args[0] is not Ellipsis else str
            item, _ = _base_type(item)
            if fixed:  # e.g. (start, stop, num): one value per position, converted by position
                kw.update(nargs=len(args), type=float if float in args else str)
            else:
                kw.update(nargs="+", type=item if item in (int, float, str) else str)
        elif isinstance(tp, type) and issubclass(tp, enum.Enum):
            kw.update(type=tp, choices=list(tp), metavar="{" + ",".join(m.value for m in tp) + "}")
        elif tp in (int, float, str):
            kw.update(type=_parser_for(tp, optional))
        else:
            kw.update(type=str)
        metavar = kw.pop("metavar", None) or field.name.upper()
        parser.add_argument(flag, metavar=metavar, help=f"{text} ({default_text})", **kw)


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, (tuple, list)):
        return " ".join(str(v) for v in value) if value else "none"
    return str(value)


def _default_text(value: Any, quick_value: Any, has_quick: bool) -> str:
    """One default in the help: ``default: V`` or ``default: V; --quick: Q`` when they differ."""
    text = f"default: {_shown(value)}"
    if has_quick and quick_value != value:
        text += f"; --quick: {_shown(quick_value)}"
    return text.replace("%", "%%")


def _nested(value: Any) -> dict[str | None, Any] | None:
    """Inner settings of a field: ``{None: dc}`` for a dataclass, ``{key: dc}`` for a mapping."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {None: value}
    if (
        isinstance(value, Mapping)
        and value
        and all(dataclasses.is_dataclass(v) and not isinstance(v, type) for v in value.values())
    ):
        return dict(value)
    return None


def from_arguments(
    base: Any, args: argparse.Namespace, *, skip: Iterable[str] = (), prefix: str = ""
) -> Any:
    """``base`` with the fields the user gave on the command line replaced.

    Validation runs in the dataclass (``__post_init__``); a :class:`ConfigError` it raises names
    the field, which the command line prints as the flag. Nested settings (see
    :func:`add_arguments`) are rebuilt from their dotted flags; an error inside them names the
    dotted field (``sd.coef``), printed as ``--sd.coef``.

    Args:
        base: the base config (published defaults, or their ``quick()`` variant).
        args: the parsed namespace of a parser extended by :func:`add_arguments`.
        skip: fields to leave alone even if present in ``args``.
        prefix: dotted prefix of the destinations (nested settings).
    """
    skip = set(skip)
    given: dict[str, Any] = {}
    for f in dataclasses.fields(base):
        if not f.init or f.name in skip:
            continue
        value = getattr(base, f.name)
        inner = _nested(value)
        if inner is not None:
            rebuilt = {}
            for key, sub in inner.items():
                name = f"{prefix}{f.name}." if key is None else f"{prefix}{key}."
                try:
                    rebuilt[key] = from_arguments(sub, args, prefix=name)
                except ConfigError as exc:
                    if exc.field.startswith(name):
                        raise
                    raise ConfigError(name + exc.field, exc.message) from None
            if any(rebuilt[k] is not inner[k] for k in rebuilt):
                given[f.name] = rebuilt[None] if None in rebuilt else type(value)(rebuilt)
            continue
        if hasattr(args, prefix + f.name):
            given[f.name] = getattr(args, prefix + f.name)
    if not given:
        return base
    hints = typing.get_type_hints(type(base))
    for name, value in given.items():
        if isinstance(value, list):
            tp, _ = _base_type(hints.get(name, tuple))
            targs = typing.get_args(tp)
            if targs and Ellipsis not in targs and len(targs) == len(value):
                value = [_convert(a, v, name) for a, v in zip(targs, value, strict=True)]
            given[name] = tuple(value)
    return dataclasses.replace(base, **given)


@dataclasses.dataclass(frozen=True)
class RestartSettings:
    """The settings of a protocol over seeds (restarts); an experiment's ``Config`` extends it.

    Attributes:
        seeds: independent seeds (environments and initialisations)
        first_seed: index of the first seed, to split a protocol over jobs (join with --merge)
        seed: root PRNG seed
        seed_layout: restarts per step and devices, AXIS[:CHUNK][@DEVICES] (vmap:2, map@1, vmap:2@all);
            auto: two restarts per step on a CPU, all at once elsewhere, over all local devices
        cpu_matmul: library for matrix products on a CPU: eigen (measured faster here) or default
    """

    seeds: int = 10
    first_seed: int = 0
    seed: int = 0
    seed_layout: str = "auto"
    cpu_matmul: str = "eigen"

    def check_restarts(self) -> None:
        """Validate these fields (call from ``__post_init__``).

        Raises:
            ConfigError: naming the field.
        """
        rules = {"seeds": integer(1), "first_seed": integer(0), "seed": integer()}
        check(self, {**rules, "cpu_matmul": one_of("eigen", "default")})
        self.layout()

    def layout(self) -> Any:
        """The :class:`~ntkdyn.train.layout.SeedLayout` of ``seed_layout`` (``auto``:
        :func:`~ntkdyn.train.layout.cpu_restart_layout`)."""
        from ntkdyn.train.layout import SeedLayout, cpu_restart_layout

        if self.seed_layout == "auto":
            return cpu_restart_layout()
        try:
            return SeedLayout.parse(self.seed_layout, flag="seed_layout")
        except ValueError as exc:
            raise ConfigError("seed_layout", str(exc).removeprefix("seed_layout: ")) from None

    def compiler_options(self) -> dict[str, Any]:
        """XLA options of ``cpu_matmul`` (:func:`~ntkdyn.xla.eigen_matmul_options` or none)."""
        from ntkdyn.xla import eigen_matmul_options

        return eigen_matmul_options() if self.cpu_matmul == "eigen" else {}

    def keys(self, stream: str):
        """:func:`~ntkdyn.train.layout.restart_keys` of this protocol's seeds."""
        from ntkdyn.train.layout import restart_keys

        return restart_keys(self.seed, stream, self.first_seed, self.seeds)
