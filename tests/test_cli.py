"""The `latentgeo` command: demo writes its report, bad arguments exit 2 without a traceback."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from latentgeo.checkpoint import save_checkpoint
from latentgeo.cli import main

SCRIPT = Path(sys.executable).parent / "latentgeo"


def _run_script(*args, timeout=300):
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "ok.safetensors"
    save_checkpoint(path, {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(4)},
                    {"class": "VAE", "latent_dim": 2, "data": "digits"})
    return path


# ------------------------------------------------------------------------------------------
# bad arguments
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--data", "mnist", "--out", "{tmp}/o"], "invalid choice: 'mnist'"),
        (["train", "--data", "digits", "--out", "{tmp}/o", "--epochs", "-3"], "epochs must be >= 1"),
        (["train", "--data", "digits", "--out", "{tmp}/o", "--latent", "torus"], "invalid choice: 'torus'"),
        (["train", "--data", "digits", "--out", "{tmp}/o", "--hidden", "64,x"], "hidden widths"),
        (["train", "--data", "digits", "--out", "{tmp}/o", "--likelihood", "poisson"], "invalid choice: 'poisson'"),
        (["train", "--data", "digits", "--out", "{tmp}/o", "--likelihood", "bernoulli", "--variance", "rbf"],
         "--variance applies to the gaussian likelihood only"),
        (["demo", "--out", "{tmp}/o", "--epochs", "0"], "epochs must be >= 1"),
        (["demo", "--out", "{tmp}/o", "--seed", "abc"], "seed must be an integer"),
        (["demo"], "the following arguments are required: --out"),
        (["info", "{tmp}/missing.safetensors"], "no checkpoint file"),
        (["info", "{tmp}"], "no checkpoint in directory"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "a command is required"),
    ],
)
def test_bad_arguments_exit_2(tmp_path, capsys, argv, needle):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing trained or written


def test_out_path_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    assert main(["demo", "--out", str(f), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"latentgeo demo: error: output path {f} exists and is not a directory"


def test_corrupt_checkpoints_exit_2(tmp_path, capsys, checkpoint):
    raw = checkpoint.read_bytes()
    cases = {
        "truncated.safetensors": raw[: len(raw) - 7],
        "flipped.safetensors": raw[:-1] + bytes([raw[-1] ^ 0xFF]),
        "pickle.safetensors": pickle.dumps({"w": [1, 2]}),
        "empty.safetensors": b"",
    }
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        assert main(["info", str(p)]) == 2, name
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("latentgeo info: error:") and str(p) in lines[0], (name, err)


def test_info_prints_verified_config(checkpoint, capsys):
    assert main(["info", str(checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "verified" in out and "tensors: 2, numbers: 10" in out and '"latent_dim": 2' in out
    assert main(["info", "--json", str(checkpoint)]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["class"] == "VAE" and cfg["data"] == "digits"


def test_help_and_version(capsys):
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("latentgeo ")


def test_console_script_bad_arguments_no_traceback(tmp_path, checkpoint):
    assert SCRIPT.exists(), f"console script not installed at {SCRIPT}"
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(checkpoint.read_bytes()[:50])
    r = _run_script("info", str(bad))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "truncated" in r.stderr and r.stdout == ""
    r = _run_script("train", "--data", "nope", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "invalid choice" in r.stderr
