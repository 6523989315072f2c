"""Settings dataclasses → command-line flags and back; errors that name the flag."""

import argparse
import dataclasses
import enum

import pytest

from ntkdyn.cli import main
from ntkdyn.settings import ConfigError, add_arguments, field_help, flag_name, from_arguments


class Mode(enum.Enum):
    FAST = "fast"
    SLOW = "slow"


@dataclasses.dataclass(frozen=True)
class Config:
    """A protocol.

    Attributes:
        steps: number of steps,
            continued on a second line.
        lr: learning rate.
        max_images: images used (None: all).
        methods: methods to run.
        shard: split seeds over devices.
        mode: how fast.
        grid: (start, stop, num).
        out: set by the command.
    """

    steps: int = 1000
    lr: float = 1e-3
    max_images: int | None = None
    methods: tuple[str, ...] = ("erm", "sd")
    shard: bool = True
    mode: Mode = Mode.FAST
    grid: tuple[float, float, int] = (1.0, 8.0, 71)
    out: str = ""

    def __post_init__(self):
        if self.steps < 1:
            raise ConfigError("steps", f"expected an integer >= 1, got {self.steps}")

    def quick(self):
        return dataclasses.replace(self, steps=10)


def _parse(argv, base=Config()):
    parser = argparse.ArgumentParser()
    add_arguments(parser, Config(), skip=("out",))
    return from_arguments(base, parser.parse_args(argv))


def test_field_help_reads_the_attributes_section():
    h = field_help(Config)
    assert h["steps"] == "number of steps, continued on a second line."
    assert h["max_images"] == "images used (None: all)."
    assert "out" in h and len(h) == 8


def test_only_given_flags_override_the_base():
    assert _parse([]) == Config()
    assert _parse([], Config().quick()).steps == 10
    assert _parse(["--steps", "7"], Config().quick()).steps == 7  # a flag beats --quick
    cfg = _parse(
        ["--lr", "0.5", "--max-images", "30", "--methods", "sd", "--no-shard", "--mode", "slow"]
    )
    assert cfg == Config(lr=0.5, max_images=30, methods=("sd",), shard=False, mode=Mode.SLOW)
    assert _parse(["--max-images", "none"]).max_images is None
    grid = _parse(["--grid", "0.5", "2", "11"]).grid
    assert grid == (0.5, 2.0, 11) and isinstance(grid[2], int)
    with pytest.raises(ConfigError, match="grid: expected an integer"):
        _parse(["--grid", "0.5", "2", "1.5"])


def test_skipped_fields_get_no_flag():
    with pytest.raises(SystemExit):
        _parse(["--out", "x"])


def test_errors_name_the_field_in_python_and_the_flag_on_the_command_line():
    with pytest.raises(ConfigError, match="^steps: expected an integer >= 1, got 0$") as info:
        _parse(["--steps", "0"])
    assert info.value.for_cli() == "--steps: expected an integer >= 1, got 0"
    assert isinstance(info.value, ValueError)
    assert flag_name("max_images") == "--max-images"
    with pytest.raises(TypeError, match="defaults"):
        add_arguments(argparse.ArgumentParser(), Config)


def test_cli_version_and_unknown_flags(capsys):
    from ntkdyn import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"ntkdyn {__version__}"
    assert main(["theory", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ntkdyn theory: error: unrecognized arguments: --bogus")


def test_version_matches_the_package_metadata():
    import tomllib
    from pathlib import Path

    import ntkdyn

    meta = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert ntkdyn.__version__ == meta["project"]["version"]
