"""The ``ntkdyn`` command line: one subcommand per job.

Each subcommand lives in its own module, which provides

* ``HELP``: its description (shown by ``ntkdyn NAME --help``),
* ``configure(parser)``: adds its arguments (cheap: no JAX work),
* ``run(args) -> int``: does the work and returns the exit status,
* optionally ``X64 = True``: the command needs float64, so the CLI turns on ``jax_enable_x64``
  before anything else touches JAX (library code never flips it).

Bad arguments end in one readable line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ntkdyn.settings import ConfigError

# name -> (module implementing it, one-line summary); modules are imported lazily, only the one
# that runs, so ``ntkdyn --help`` stays fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "theory": ("ntkdyn.experiments.theory", "Paper's theory figures and the starvation verdict."),
    "simulate": ("ntkdyn.commands.simulate", "Integrate one feature system of your choice."),
    "starvation": (
        "ntkdyn.commands.starvation",
        "Fixed points and dz2*/ds1 of the two-feature system.",
    ),
    "spectrum": (
        "ntkdyn.commands.spectrum",
        "NTK spectrum of a model on a dataset, with predicted starvation.",
    ),
    "moons": ("ntkdyn.experiments.moons", "Two-moons toy: ERM vs SD boundaries and regularizers."),
    "cmnist": ("ntkdyn.experiments.colored_mnist", "Colored MNIST: ERM, IRM, V-REx, SD, oracle."),
    "celeba": ("ntkdyn.experiments.celeba", "CelebA blond hair vs gender: ERM, SD, Group DRO."),
}


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        raise CLIError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def _load(name: str):
    return importlib.import_module(COMMANDS[name][0])


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``only`` set, import just that subcommand's module."""
    parser = _Parser(
        prog="ntkdyn",
        description="Gradient starvation and Spectral Decoupling: theory, tangent features and experiments.",
    )
    from ntkdyn import __version__

    parser.add_argument("--version", action="version", version=f"ntkdyn {__version__}")
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
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ntkdyn`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if a in COMMANDS), None)
    try:
        try:
            parser = build_parser(only=chosen)
        except ModuleNotFoundError as exc:
            raise CLIError(f"ntkdyn: error: command {chosen!r} is unavailable ({exc})") from exc
        args, extra = parser.parse_known_args(argv)
        if extra:  # blame the subcommand the user typed, not the top level
            prog = f"ntkdyn {args.command}" if args.command else "ntkdyn"
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
        return int(module.run(args) or 0)
    except CLIError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except ConfigError as exc:  # a setting: name the flag the user typed
        print(f"ntkdyn {chosen or ''}: error: {exc.for_cli()}".replace("  ", " "), file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print(f"ntkdyn {chosen or ''}: error: {exc}".replace("  ", " "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ntkdyn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
