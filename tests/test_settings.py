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


@pytest.mark.e2e
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


def test_declarative_rules_accept_reject_and_name_the_field():
    import dataclasses

    import numpy as np

    from ntkdyn.settings import check, each, integer, number, one_of, optional, pair

    cases = [  # (rule, accepted, rejected, expected text)
        (integer(1), [1, 7, np.int64(3)], [0, 1.5, True, "2"], "an integer >= 1"),
        (integer(2, 4), [2, 4], [1, 5], "an integer >= 2 and <= 4"),
        (number(0, low_open=True), [1e-9, 3], [0, -1, float("nan"), float("inf")], "> 0"),
        (number(0), [0, 0.5], [-1e-12, float("nan")], "a finite number >= 0"),
        (number(0, 1, high_open=True), [0, 0.999], [1, -0.1], "a number in [0, 1)"),
        (one_of("a", "b"), ["a"], ["c", None], "one of a, b"),
        (optional(integer(1)), [None, 2], [0], "an integer >= 1, or none"),
        (pair(number(0)), [(0, 1)], [(1,), (1, -1), 3], "two values, each a finite number >= 0"),
        (each(number(0, low_open=True)), [(1,), [2, 3]], [(), (1, 0)], "one or more values"),
    ]
    for rule, good, bad, text in cases:
        assert text in rule.expects
        assert all(rule.test(v) for v in good), (rule.expects, good)
        assert not any(rule.test(v) for v in bad), (rule.expects, bad)

    @dataclasses.dataclass(frozen=True)
    class Config:
        steps: int = 1
        rate: float = 0.1

        def __post_init__(self):
            check(self, {"steps": integer(1), "rate": number(0, low_open=True)})

    assert Config(steps=3).steps == 3
    with pytest.raises(ConfigError, match=r"^rate: expected a finite number > 0, got 0$") as info:
        Config(rate=0)
    assert info.value.for_cli() == "--rate: expected a finite number > 0, got 0"
    with pytest.raises(ConfigError, match="^steps: "):  # fields are checked in order
        Config(steps=0, rate=0)


@dataclasses.dataclass(frozen=True)
class Net:
    """A network.

    Attributes:
        width: hidden width.
        lr: learning rate.
    """

    width: int = 8
    lr: float = 0.1

    def __post_init__(self):
        if self.lr <= 0:
            raise ConfigError("lr", f"expected a number > 0, got {self.lr}")


@dataclasses.dataclass(frozen=True)
class SDNet(Net):
    """SD's network.

    Attributes:
        coef: the SD coefficient.
    """

    coef: float = 0.01


@dataclasses.dataclass(frozen=True)
class Nested:
    """Per-method settings.

    Attributes:
        seed: root seed.
        net: the shared network.
        methods: one entry per method.
    """

    seed: int = 0
    net: Net = Net()
    methods: dict = dataclasses.field(default_factory=lambda: {"erm": Net(), "sd": SDNet()})

    def quick(self):
        return dataclasses.replace(self, seed=1, methods={**self.methods, "sd": SDNet(width=2)})


def _nested_parser():
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser, Nested(), quick=Nested().quick())
    return parser


def test_nested_settings_take_dotted_flags():
    parser = _nested_parser()
    cfg = from_arguments(Nested(), parser.parse_args(["--sd.coef", "0.5", "--net.width", "3"]))
    assert cfg.methods["sd"] == SDNet(coef=0.5) and cfg.methods["erm"] == Net()
    assert cfg.net == Net(width=3) and cfg.seed == 0
    base = Nested().quick()
    assert from_arguments(base, parser.parse_args([])) is base  # nothing given, nothing rebuilt
    cfg = from_arguments(base, parser.parse_args(["--erm.lr", "0.2"]))
    assert cfg.methods["sd"].width == 2 and cfg.methods["erm"].lr == 0.2


def test_nested_errors_name_the_dotted_flag():
    parser = _nested_parser()
    with pytest.raises(ConfigError, match=r"^sd\.lr: expected a number > 0") as info:
        from_arguments(Nested(), parser.parse_args(["--sd.lr", "-1"]))
    assert info.value.for_cli().startswith("--sd.lr: expected")
    with pytest.raises(ConfigError, match=r"^net\.lr: expected a number > 0, got 0.0$"):
        from_arguments(Nested(), parser.parse_args(["--net.lr", "0"]))


def test_help_shows_one_default_and_the_quick_one_beside_it():
    text = " ".join(_nested_parser().format_help().split())
    assert "--seed SEED root seed. (default: 0; --quick: 1)" in text
    assert "--sd.width WIDTH hidden width. (default: 8; --quick: 2)" in text  # base's docstring
    assert "--sd.coef COEF the SD coefficient. (default: 0.01)" in text
    assert "--erm.width WIDTH hidden width. (default: 8)" in text
    assert text.count("(default") == text.count("default:") and "(default: None)" not in text
