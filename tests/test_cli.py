"""The command line's promises: every command has --quick and --out, runs write summary.md."""

import pytest

from ntkdyn.cli import COMMANDS, build_parser, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_quick_and_out(name):
    parser = build_parser(only=name)
    sub = parser._subparsers._group_actions[0].choices[name]
    flags = {s for a in sub._actions for s in a.option_strings}
    assert {"--quick", "--out"} <= flags, f"ntkdyn {name} lacks { ({'--quick', '--out'} - flags) }"


def test_simulate_writes_a_run_with_summary(tmp_path):
    out = tmp_path / "sim"
    assert main(["simulate", "--s", "6", "2", "--delta", "0.5", "--quick", "--out", str(out)]) == 0
    assert {"config.json", "results.json", "summary.md", "trajectory.png"} <= {
        p.name for p in out.iterdir()
    }
    assert "| final z |" in (out / "summary.md").read_text()


def test_starvation_quick_with_out(tmp_path, capsys):
    import json

    out = tmp_path / "st"
    assert main(["starvation", "--quick", "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["s1"] == [2.0, 8.0] and printed["starvation"] is True
    assert json.loads((out / "results.json").read_text())["s1"] == [2.0, 8.0]
    assert "starvation under CE" in (out / "summary.md").read_text()
