"""End-to-end tests of `ntkdyn theory`, `ntkdyn starvation` and `ntkdyn simulate`."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkdyn.cli import main
from ntkdyn.dynamics import ce_field, gd
from ntkdyn.systems import random_orthonormal, rotation_system


def test_starvation_json_is_one_object_with_the_published_shape(capsys):
    argv = [
        "starvation",
        "--s1",
        "2",
        "3",
        "4",
        "5",
        "6",
        "8",
        "--s2",
        "2",
        "--delta",
        "0.5",
        "--lam-ce",
        "0.01",
        "--lam-sd",
        "0.002",
        "--json",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    data = json.loads(out)
    assert (
        data["s1"] == [2.0, 3.0, 4.0, 5.0, 6.0, 8.0] and data["s2"] == 2.0 and data["delta"] == 0.5
    )
    ce, sd = data["ce"], data["sd"]
    assert ce["lam"] == 0.01 and sd["lam"] == 0.002
    for key in ("z1", "z2", "dz2_ds1", "dz2_ds1_fd"):
        assert len(ce[key]) == 6
    assert data["starvation"] is True and data["sd_decoupled"] is True
    # The two-feature example: z₂* ≈ 1.64 at s₁ = 2 falling to ≈ 0.9 at s₁ = 8; SD z* ≈ (6.37, 1.71) for every s₁.
    assert abs(ce["z2"][0] - 1.64) < 5e-3 and abs(ce["z2"][-1] - 0.9) < 0.05
    assert np.all(np.diff(ce["z2"]) < 0)
    np.testing.assert_allclose(ce["dz2_ds1"], ce["dz2_ds1_fd"], atol=1e-7)
    np.testing.assert_allclose(sd["z1"], 6.37, atol=5e-3)
    np.testing.assert_allclose(sd["z2"], 1.71, atol=5e-3)
    np.testing.assert_allclose(sd["dz2_ds1"], 0.0, atol=1e-12)


@pytest.mark.e2e
def test_starvation_table_without_json(capsys):
    assert main(["starvation", "--s1", "2", "5"]) == 0
    out = capsys.readouterr().out
    assert "dz2*/ds1" in out and "starvation under CE" in out and len(out.splitlines()) == 5


@pytest.mark.e2e
def test_theory_quick_writes_everything_and_one_verdict_line(tmp_path, capsys):
    out_dir = tmp_path / "theory"
    assert main(["theory", "--quick", "--out", str(out_dir)]) == 0
    stdout = capsys.readouterr().out
    assert stdout.count("\n") == 1 and stdout.startswith("verdict: gradient starvation under CE")
    assert "SD removes it" in stdout
    for stem in ("theory_z2_vs_z1", "theory_slider", "theory_sensitivity", "theory_starvation_map"):
        for ext in ("png", "pdf"):
            assert (out_dir / f"{stem}.{ext}").stat().st_size > 1000
    results = json.loads((out_dir / "results.json").read_text())
    assert results["verdict"]["starvation"] and results["verdict"]["sd_decoupled"]
    checks = results["checks"]
    assert checks["fd_max_abs_error"] < 1e-7
    assert checks["sd_fixed_point_spread"] < 1e-10
    assert checks["sd_closed_form_max_abs_error"] < 1e-10
    assert checks["dual_vs_primal_max_abs"] < 1e-5
    assert results["starvation_map"]["ce_fraction_negative_above_diagonal"] == 1.0
    config = json.loads((out_dir / "config.json").read_text())
    assert config["delta"] == 0.5 and config["lam_ce"] == 0.01
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert set(first) == {"loss", "s1", "step", "t", "z1", "z2"}
    assert "| s₁ |" in (out_dir / "summary.md").read_text()
    npz = np.load(out_dir / "trajectories.npz")
    assert npz["ce"].shape == (len(npz["s1"]), len(npz["t"]), 2)


@pytest.mark.e2e
@pytest.mark.slow
def test_theory_is_deterministic(tmp_path, capsys):
    for name in ("a", "b"):
        assert main(["theory", "--quick", "--out", str(tmp_path / name)]) == 0
    capsys.readouterr()
    for fname in ("results.json", "metrics.jsonl", "summary.md"):
        assert (tmp_path / "a" / fname).read_bytes() == (tmp_path / "b" / fname).read_bytes()


def test_simulate_gd_matches_library_and_writes_files(tmp_path, capsys):
    out_dir = tmp_path / "sim"
    argv = [
        "simulate",
        "--s",
        "6",
        "2",
        "--delta",
        "0.5",
        "--loss",
        "ce",
        "--lam-ce",
        "0.01",
        "--eta",
        "0.05",
        "--steps",
        "400",
        "--save-every",
        "20",
        "--out",
        str(out_dir),
    ]
    assert main(argv) == 0
    assert "fixed point" in capsys.readouterr().out
    traj = json.loads((out_dir / "trajectory.json").read_text())
    ref = gd(
        ce_field,
        rotation_system([6.0, 2.0], 0.5, 0.01),
        jnp.zeros(2),
        eta=0.05,
        num_steps=400,
        save_every=20,
    )
    np.testing.assert_allclose(traj["z"], ref.z, rtol=1e-12)
    np.testing.assert_allclose(np.load(out_dir / "trajectory.npz")["z"], ref.z, rtol=1e-12)
    for name in ("trajectory.png", "trajectory.pdf", "config.json", "results.json"):
        assert (out_dir / name).exists()
    results = json.loads((out_dir / "results.json").read_text())
    assert results["success"] and np.asarray(results["starvation_matrix"])[1, 0] < 0


@pytest.mark.parametrize(
    "suffix",
    [
        pytest.param(".npy", marks=pytest.mark.slow),
        ".txt",
        pytest.param(".csv", marks=pytest.mark.slow),
    ],
)
def test_simulate_reads_u_files_and_runs_every_loss(tmp_path, capsys, suffix):
    U = np.asarray(random_orthonormal(jax.random.PRNGKey(3), 5, 3))
    path = tmp_path / f"U{suffix}"
    if suffix == ".npy":
        np.save(path, U)
    else:
        np.savetxt(path, U, delimiter="," if suffix == ".csv" else " ")
    loss = {".npy": "sd", ".txt": "dual", ".csv": "quadratic"}[suffix]
    horizon = ["--t1", "0.1"] if loss == "dual" else ["--t1", "50"]
    out_dir = tmp_path / loss
    assert (
        main(
            [
                "simulate",
                "--s",
                "5",
                "3",
                "2",
                "--U",
                str(path),
                "--loss",
                loss,
                *horizon,
                "--out",
                str(out_dir),
            ]
        )
        == 0
    )
    capsys.readouterr()
    traj = json.loads((out_dir / "trajectory.json").read_text())
    assert np.asarray(traj["z"]).shape == (101, 3) and traj["mode"] == "ode"
    np.testing.assert_allclose(traj["U"], U, atol=1e-15)


BAD = [
    (["starvation", "--lam-ce", "-1"], "--lam-ce"),
    (["starvation", "--lam-sd", "0"], "--lam-sd"),
    (["starvation", "--fd-h", "5"], "--fd-h"),
    (["starvation", "--delta", "1.5"], "delta"),
    (["starvation", "--s1", "2", "-3"], "s1"),
    (["starvation", "--s1", "nan"], "s1"),
    (["simulate", "--s", "6", "2", "--delta", "1.2"], "--delta"),
    (["simulate", "--s", "6", "0"], "--s"),
    (["simulate", "--s", "6", "2", "1", "--delta", "0.3"], "--delta"),
    (["simulate", "--s", "6", "2", "--U", "/does/not/exist.npy"], "--U"),
    (["simulate", "--s", "6", "2", "--lam-ce", "-0.1"], "--lam-ce"),
    (["simulate", "--s", "6", "2", "--loss", "sd", "--lam-sd", "nan"], "--lam-sd"),
    (["simulate", "--s", "6", "2", "--loss", "sd", "--lam-ce", "0.1"], "--lam-ce"),
    (["simulate", "--s", "6", "2", "--loss", "dual", "--lam-ce", "0"], "--lam-ce"),
    (["simulate", "--s", "6", "2", "--eta", "300"], "--eta"),
    (["simulate", "--s", "6", "2", "--eta", "0"], "--eta"),
    (["simulate", "--s", "6", "2", "--t1", "100", "--max-steps", "3"], "--max-steps"),
    (["simulate", "--s", "6", "2", "--t1", "100", "--num-points", "1"], "--num-points"),
    (["simulate", "--s", "6", "2", "--steps", "100", "--save-every", "7"], "--save-every"),
    (["simulate", "--s", "6", "2", "--loss", "hinge"], "--loss"),
    (["theory", "--delta", "1.0"], "--delta"),
    (["theory", "--eta", "0"], "--eta"),
    (["theory", "--lam-sd", "-1"], "--lam-sd"),
    (["theory", "--quick", "--eta", "50"], "--eta"),
]


@pytest.mark.e2e
@pytest.mark.parametrize("argv,name", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_arguments_exit_2_with_one_line(argv, name, tmp_path, capsys):
    assert main([*argv, *(["--out", str(tmp_path / "o")] if argv[0] != "starvation" else [])]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and name in err and "Traceback" not in err


@pytest.mark.e2e
def test_bad_u_files(tmp_path, capsys):
    skew = tmp_path / "skew.npy"
    np.save(skew, np.array([[1.0, 0.5], [0.0, 1.0]]))
    vec = tmp_path / "vec.npy"
    np.save(vec, np.ones(3))
    junk = tmp_path / "junk.csv"
    junk.write_text("a,b\nc,d\n")
    other = tmp_path / "u.mat"
    other.write_text("1 0\n0 1\n")
    for path, text in (
        (skew, "orthonormal"),
        (vec, "2-D"),
        (junk, "cannot read"),
        (other, "unsupported"),
    ):
        assert (
            main(["simulate", "--s", "3", "2", "--U", str(path), "--out", str(tmp_path / "o")]) == 2
        )
        err = capsys.readouterr().err
        assert "--U" in err and text in err and len(err.strip().splitlines()) == 1


@pytest.mark.e2e
def test_console_script_error_has_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "ntkdyn.cli", "starvation", "--lam-sd", "0"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert "Traceback" not in proc.stderr and "--lam-sd" in proc.stderr


@pytest.mark.e2e
def test_renamed_lambda_flags_keep_their_old_spelling_as_deprecated_aliases(capsys):
    """--lam/--sd-lam (starvation) still work, hidden from --help, with a note naming the new flag."""
    assert main(["starvation", "--quick", "--json", "--lam", "0.02", "--sd-lam", "0.004"]) == 0
    captured = capsys.readouterr()
    table = json.loads(captured.out)
    assert table["ce"]["lam"] == 0.02 and table["sd"]["lam"] == 0.004
    assert "use --lam-ce" in captured.err and "use --lam-sd" in captured.err
    assert main(["starvation", "--quick", "--json", "--lam-ce", "0.02", "--lam-sd", "0.004"]) == 0
    assert json.loads(capsys.readouterr().out) == table
    with pytest.raises(SystemExit):
        main(["starvation", "--help"])
    text = capsys.readouterr().out
    assert "--lam-ce" in text and "--sd-lam" not in text and "--lam " not in text


@pytest.mark.e2e
def test_simulate_takes_the_lambda_of_its_loss(tmp_path, capsys):
    """--lam-ce for ce, --lam-sd for sd (defaults 0.01 and 0.002, as theory and starvation)."""
    for loss, extra, lam in (
        ("ce", [], 0.01),
        ("sd", [], 0.002),
        ("sd", ["--lam-sd", "0.005"], 0.005),
        ("ce", ["--lam", "0.03"], 0.03),  # the deprecated spelling: the λ of the loss that runs
    ):
        out = tmp_path / f"{loss}{lam}"
        argv = ["simulate", "--s", "6", "2", "--delta", "0.5", "--loss", loss, "--quick"]
        assert main([*argv, *extra, "--out", str(out)]) == 0
        assert json.loads((out / "trajectory.json").read_text())["lam"] == lam
    capsys.readouterr()


def test_load_matrix_reads_all_formats(tmp_path):
    from ntkdyn.commands.simulate import load_matrix

    U = np.asarray(random_orthonormal(jax.random.PRNGKey(4), 4, 2))
    np.save(tmp_path / "u.npy", U)
    np.savetxt(tmp_path / "u.txt", U)
    np.savetxt(tmp_path / "u.csv", U, delimiter=",")
    for name in ("u.npy", "u.txt", "u.csv"):
        np.testing.assert_allclose(load_matrix(tmp_path / name), U, rtol=1e-15, atol=1e-17)
    with pytest.raises(FileNotFoundError, match="--U"):
        load_matrix(tmp_path / "missing.npy")
