"""The public API: every exported name is documented, and the CLI answers --help for every command."""

import inspect
import subprocess
import sys

import pytest

import ntkdyn
from ntkdyn.cli import COMMANDS, main


def test_every_exported_name_has_a_docstring():
    missing = [n for n in ntkdyn.__all__ if not inspect.getdoc(getattr(ntkdyn, n))]
    assert ntkdyn.__all__, "nothing exported"
    assert not missing, f"exported without a docstring: {missing}"


def test_exported_functions_document_args_and_returns():
    weak = []
    for name in ntkdyn.__all__:
        obj = getattr(ntkdyn, name)
        if inspect.isfunction(obj) and inspect.signature(obj).parameters:
            doc = inspect.getdoc(obj) or ""
            if "Args:" not in doc and "Returns:" not in doc and len(doc.splitlines()) < 2:
                weak.append(name)
    assert not weak, f"public functions with a one-line docstring and no Args/Returns: {weak}"


@pytest.mark.e2e
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_for_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"ntkdyn {command}" in out


@pytest.mark.e2e
def test_unknown_command_is_one_line_error():
    proc = subprocess.run(
        [sys.executable, "-m", "ntkdyn.cli", "bogus"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "invalid choice: 'bogus'" in proc.stderr
