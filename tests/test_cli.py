"""The command line's promises: every command has --quick and --out, runs write summary.md, and
the error policy (the user's mistakes: one line, status 2; faults of ntkdyn: status 1, --debug)."""

import argparse

import pytest

from ntkdyn.cli import COMMANDS, build_parser, flags_of, main, user_message
from ntkdyn.commands import starvation
from ntkdyn.dynamics import SolverError
from ntkdyn.errors import InputError
from ntkdyn.settings import ConfigError


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_quick_and_out(name):
    parser = build_parser(only=name)
    sub = parser._subparsers._group_actions[0].choices[name]
    flags = {s for a in sub._actions for s in a.option_strings}
    assert {"--quick", "--out"} <= flags, f"ntkdyn {name} lacks { ({'--quick', '--out'} - flags) }"


@pytest.mark.e2e
def test_simulate_writes_a_run_with_summary(tmp_path):
    out = tmp_path / "sim"
    assert main(["simulate", "--s", "6", "2", "--delta", "0.5", "--quick", "--out", str(out)]) == 0
    assert {"config.json", "results.json", "summary.md", "trajectory.png"} <= {
        p.name for p in out.iterdir()
    }
    assert "| final z |" in (out / "summary.md").read_text()


@pytest.mark.e2e
def test_starvation_quick_with_out(tmp_path, capsys):
    import json

    out = tmp_path / "st"
    assert main(["starvation", "--quick", "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["s1"] == [2.0, 8.0] and printed["starvation"] is True
    assert json.loads((out / "results.json").read_text())["s1"] == [2.0, 8.0]
    summary = (out / "summary.md").read_text()
    assert "Starvation under CE" in summary and "| 8 | 10.18 | 0.9152 |" in summary


def _raising(exc):
    def entry(args):
        raise exc

    return entry


@pytest.mark.e2e
@pytest.mark.parametrize(
    "exc, flag",
    [
        (ConfigError("fd_h", "expected a number > 0, got -1"), "--fd-h: expected"),
        (InputError("s2: must be > 0"), "--s2: must be > 0"),  # a field name becomes its flag
        (InputError("--data: no file x.npz; pass an .npz"), "--data: no file"),
        (FileNotFoundError("--U: no such file 'u.npy'"), "--U: no such file"),
        (PermissionError("cannot open 'a.csv'"), "cannot open"),
    ],
)
def test_users_errors_are_one_line_with_status_2(monkeypatch, capsys, exc, flag):
    monkeypatch.setattr(starvation, "run", _raising(exc))
    assert main(["starvation"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ntkdyn starvation: error: ") and flag in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.e2e
@pytest.mark.parametrize(
    "exc",
    [
        ValueError("x: shapes (3,) and (4,) do not match"),  # a plain ValueError: not validation
        SolverError("The maximum number of solver steps was reached."),
        TypeError("unsupported operand"),
        IndexError("index 5 is out of bounds"),
        OSError(5, "Input/output error"),
    ],
)
def test_faults_of_ntkdyn_are_internal_errors_with_status_1(monkeypatch, capsys, exc):
    monkeypatch.delenv("NTKDYN_DEBUG", raising=False)
    monkeypatch.setattr(starvation, "run", _raising(exc))
    assert main(["starvation"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"ntkdyn starvation: internal error: {type(exc).__name__}: ")
    assert "--debug" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "starvation: error:" not in err  # never dressed up as the user's mistake


@pytest.mark.parametrize(
    "argv",
    [["--debug", "starvation"], ["starvation", "--debug"], ["starvation", "--quick", "--debug"]],
)
def test_debug_anywhere_on_the_line_prints_the_traceback(monkeypatch, capsys, argv):
    monkeypatch.delenv("NTKDYN_DEBUG", raising=False)
    monkeypatch.setattr(starvation, "run", _raising(ValueError("deep inside")))
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ValueError: deep inside" in err
    monkeypatch.setattr(starvation, "run", _raising(ConfigError("s2", "bad")))
    assert main(argv) == 2  # the user's error keeps its status, with the traceback too
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.e2e
@pytest.mark.parametrize("value, shown", [("1", True), ("yes", True), ("0", False), ("", False)])
def test_debug_from_the_environment(monkeypatch, capsys, value, shown):
    monkeypatch.setenv("NTKDYN_DEBUG", value)
    monkeypatch.setattr(starvation, "run", _raising(SolverError("diverged")))
    assert main(["starvation"]) == 1
    assert ("Traceback" in capsys.readouterr().err) is shown


@pytest.mark.e2e
def test_interrupt_is_status_130(monkeypatch, capsys):
    monkeypatch.setattr(starvation, "run", _raising(KeyboardInterrupt()))
    assert main(["starvation"]) == 130
    assert "interrupted" in capsys.readouterr().err


@pytest.mark.e2e
def test_parser_errors_stay_one_line(capsys):
    assert main(["starvation", "--s2", "two"]) == 2
    err = capsys.readouterr().err
    assert "--s2" in err and len(err.strip().splitlines()) == 1
    assert main(["starvation", "--no-such-flag"]) == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
    assert main(["no-such-command"]) == 2


def test_user_message_names_the_flag_as_typed():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lam-sd", dest="lam_sd")
    parser.add_argument("--sd-lam", dest="lam_sd")  # an alias
    parser.add_argument("--data-dir", dest="data_dir")
    flags = flags_of(parser, ["--sd-lam", "0", "--data-dir=/x"])
    assert user_message(ConfigError("lam_sd", "must be > 0"), flags) == "--sd-lam: must be > 0"
    assert user_message(InputError("data_dir: no folder"), flags) == "--data-dir: no folder"
    assert flags_of(parser, [])["lam_sd"] == "--lam-sd"
    # text that is not a known setting is left alone
    assert user_message(InputError("image 3: cannot decode"), flags) == "image 3: cannot decode"


@pytest.mark.e2e
@pytest.mark.parametrize(
    "argv",
    [
        ["theory", "--quick"],
        ["moons", "--quick"],
        ["simulate", "--s", "6", "2", "--quick"],
        ["starvation", "--quick"],
    ],
)
def test_unwritable_out_is_reported_before_any_computing(argv, tmp_path, capsys):
    import time

    start = time.perf_counter()
    assert main([*argv, "--out", "/proc/forbidden"]) == 2
    err = capsys.readouterr().err
    assert "--out: cannot write to /proc/forbidden" in err and "choose a writable folder" in err
    assert len(err.strip().splitlines()) == 1
    assert time.perf_counter() - start < 5.0  # nothing was computed
    afile = tmp_path / "a_file"
    afile.write_text("x")
    assert main([*argv, "--out", str(afile)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
