"""The ``ntkdyn`` command line: one subcommand per job, and its error policy.

Each subcommand lives in its own module, which provides

* ``HELP``: its description (shown by ``ntkdyn NAME --help``),
* ``configure(parser)``: adds its arguments (cheap: no JAX work),
* an entry ``ENTRY(args) -> int`` that does the work and returns the exit status; :data:`COMMANDS`
  names it as ``"module:function"`` (``run`` when no function is named). Experiments name their
  ``cli``: their ``run`` is the Python API, ``run(config) -> Results``;
* optionally ``X64 = True``: the command needs float64, so the CLI turns on ``jax_enable_x64``
  before anything else touches JAX (library code never flips it).

Error policy — whose fault is it?

* **The user's input** (exit status 2, one line on stderr, no traceback): an unknown or malformed
  flag (argparse), a :class:`ntkdyn.errors.InputError` — which validation of settings, files and
  data raises, :class:`ntkdyn.settings.ConfigError` included — and ``FileNotFoundError``,
  ``NotADirectoryError``, ``IsADirectoryError``, ``FileExistsError`` or ``PermissionError``
  (paths the user gave). A message that names a setting by its field (``data_dir: …``) is
  printed with the flag as the user typed it (``--data-dir: …``).
* **A fault of ntkdyn or of the numerics** (exit status 1): anything else — a plain ``ValueError``
  from deep inside the library, a :class:`ntkdyn.dynamics.SolverError`, a numpy or JAX error. The
  line says it is an internal error, with the exception's type and message, and how to see more.
* ``--debug`` (a top-level flag, accepted anywhere on the line) or ``NTKDYN_DEBUG=1`` prints the
  full traceback of either kind instead of the one line; the exit status stays the same.
* Ctrl-C: exit status 130.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from ntkdyn.errors import InputError
from ntkdyn.settings import ConfigError

# name -> ("module[:entry]", one-line summary); modules are imported lazily, only the one that
# runs, so ``ntkdyn --help`` stays fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "theory": (
        "ntkdyn.experiments.theory:cli",
        "Paper's theory figures and the starvation verdict.",
    ),
    "simulate": ("ntkdyn.commands.simulate", "Integrate one feature system of your choice."),
    "starvation": (
        "ntkdyn.commands.starvation",
        "Fixed points and dz2*/ds1 of the two-feature system.",
    ),
    "spectrum": (
        "ntkdyn.commands.spectrum",
        "NTK spectrum of a model on a dataset, with predicted starvation.",
    ),
    "moons": (
        "ntkdyn.experiments.moons:cli",
        "Two-moons toy: ERM vs SD boundaries and regularizers.",
    ),
    "cmnist": (
        "ntkdyn.experiments.colored_mnist:cli",
        "Colored MNIST: ERM, IRM, V-REx, SD, oracle.",
    ),
    "celeba": ("ntkdyn.experiments.celeba", "CelebA blond hair vs gender: ERM, SD, Group DRO."),
    "groups": (
        "ntkdyn.experiments.groups:main",
        "Group robustness on an image folder (metadata.csv): ERM, SD, Group DRO.",
    ),
}

DEBUG_FLAG = "--debug"
DEBUG_ENV = "NTKDYN_DEBUG"
# OSErrors about a path the user named: the user's to fix.
PATH_ERRORS = (
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    FileExistsError,
    PermissionError,
)


class CLIError(InputError):
    """A user-facing error of the command line itself, already formatted: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        raise CLIError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def _entry(name: str) -> tuple[str, str]:
    target = COMMANDS[name][0]
    module, _, function = target.partition(":")
    return module, function or "run"


def _load(name: str):
    return importlib.import_module(_entry(name)[0])


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``only`` set, import just that subcommand's module."""
    parser = _Parser(
        prog="ntkdyn",
        description="Gradient starvation and Spectral Decoupling: theory, tangent features and experiments.",
    )
    from ntkdyn import __version__

    parser.add_argument("--version", action="version", version=f"ntkdyn {__version__}")
    parser.add_argument(
        DEBUG_FLAG,
        action="store_true",
        help=f"on an error, print the full traceback (anywhere on the line; or {DEBUG_ENV}=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (_, summary) in COMMANDS.items():
        if name != only:
            sub.add_parser(name, help=summary)
            continue
        module = _load(name)
        p = sub.add_parser(
            name,
            help=summary,
            description=module.HELP,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.configure(p)
        p.set_defaults(_module=module, _entry=getattr(module, _entry(name)[1]), _parser=p)
    return parser


def flags_of(parser: argparse.ArgumentParser | None, argv: Sequence[str]) -> dict[str, str]:
    """Each destination of ``parser``'s options → the flag that sets it, as the user typed it.

    The flag typed on ``argv`` wins (an alias stays an alias); else the first long option.
    """
    if parser is None:
        return {}
    typed = {a.split("=", 1)[0] for a in argv if a.startswith("-")}
    out: dict[str, str] = {}
    for action in parser._actions:
        if not action.option_strings or action.dest in (None, argparse.SUPPRESS, "help"):
            continue
        given = [s for s in action.option_strings if s in typed]
        longs = [s for s in action.option_strings if s.startswith("--")]
        if given or action.dest not in out:
            out[action.dest] = (given or longs or list(action.option_strings))[0]
    return out


def user_message(exc: BaseException, flags: dict[str, str]) -> str:
    """The one-line text of a user's error, naming its setting by the flag the user typed.

    ``ConfigError("data_dir", …)`` and ``InputError("data_dir: …")`` both print as
    ``--data-dir: …`` when ``data_dir`` is a destination of the command's flags.
    """
    if isinstance(exc, ConfigError):
        field, message = exc.field, exc.message
    else:
        text = str(exc)
        field, sep, rest = text.partition(": ")
        if not sep or field not in flags:
            return text
        message = rest
    flag = flags.get(field, "--" + field.replace("_", "-"))
    return f"{flag}: {message}"


def _debug(argv: list[str]) -> tuple[bool, list[str]]:
    """Whether --debug is on (flag anywhere before a ``--``, or the environment), and argv without it."""
    cut = argv.index("--") if "--" in argv else len(argv)
    on = DEBUG_FLAG in argv[:cut] or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")
    return on, [a for i, a in enumerate(argv) if not (i < cut and a == DEBUG_FLAG)]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ntkdyn`` console script; see the module docstring for the error policy."""
    debug, argv = _debug(list(sys.argv[1:] if argv is None else argv))
    chosen = next((a for a in argv if a in COMMANDS), None)
    prog = f"ntkdyn {chosen}" if chosen else "ntkdyn"
    args: argparse.Namespace | None = None
    try:
        try:
            parser = build_parser(only=chosen)
        except ModuleNotFoundError as exc:
            raise CLIError(f"ntkdyn: error: command {chosen!r} is unavailable ({exc})") from exc
        args, extra = parser.parse_known_args(argv)
        if extra:  # blame the subcommand the user typed, not the top level
            raise CLIError(
                f"{prog}: error: unrecognized arguments: {' '.join(extra)} (see {prog} --help)"
            )
        if args.command is None:
            parser.print_help()
            return 2
        module = args._module
        if getattr(module, "X64", False):
            import jax

            jax.config.update("jax_enable_x64", True)
        from ntkdyn.runs.files import command_scope  # the command's --out: one writer until it ends

        with command_scope():
            return int(args._entry(args) or 0)
    except KeyboardInterrupt:
        print("ntkdyn: interrupted", file=sys.stderr)
        return 130
    except (InputError, *PATH_ERRORS) as exc:
        if debug:
            traceback.print_exc()
        if isinstance(exc, CLIError):
            print(str(exc), file=sys.stderr)
        else:
            sub = getattr(args, "_parser", None)
            print(f"{prog}: error: {user_message(exc, flags_of(sub, argv))}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a fault of ntkdyn: say so, never as the user's
        if debug:
            traceback.print_exc()
            return 1
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "(no message)"
        print(
            f"{prog}: internal error: {type(exc).__name__}: {first} "
            f"(run again with {DEBUG_FLAG} for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
