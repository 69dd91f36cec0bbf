"""The `latentgeo` command: demo writes its report, bad arguments exit 2 without a traceback."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from latentgeo.checkpoint import save_checkpoint
from latentgeo.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
        (["report", "{tmp}/missing.safetensors", "--out", "{tmp}/o"], "no checkpoint file"),
        (["info", "{tmp}"], "no checkpoint in directory"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["demo", "--out", "{tmp}/o", "--skip", "nosuchsection"], "unknown report section(s) nosuchsection"),
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
    assert len(r.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------
# demo and train, with tiny budgets
# ------------------------------------------------------------------------------------------
PROMISED = ["model.safetensors", "train_log.jsonl", "magnification.png", "decoded_grid.png", "training_curves.png",
            "summary.json"]
MINE = {"dataset", "model", "training", "checkpoint", "magnification", "decoded_grid", "training_curves", "iwae"}


def _tiny(train=True):
    """A small budget; sections other issues registered are tested by their own tests."""
    from latentgeo.report import report_sections

    skip = [a for s in report_sections() if s.name not in MINE for a in ("--skip", s.name)]
    return ["--max-items", "400", *(["--batch-size", "32"] if train else []), "--resolution", "30",
            "--iwae-points", "50", "--iwae-samples", "8", *skip]


def test_demo_in_process_writes_the_report(tmp_path, capsys):
    import math

    from latentgeo.models import VAE

    out = tmp_path / "report"
    assert main(["demo", "--out", str(out), "--epochs", "100", "--seed", "1", "--quiet", *_tiny()]) == 0
    stdout = capsys.readouterr().out
    assert f"report written to {out}" in stdout
    for f in PROMISED:
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    s = json.loads((out / "summary.json").read_text())
    for key in ("latentgeo_version", "random_state", "dataset", "model", "training", "checkpoint", "magnification",
                "iwae", "timings", "files", "sections", "command"):
        assert key in s, key
    assert s["random_state"] == 1 and s["dataset"]["name"] == "digits" and s["dataset"]["n_items"] == 400
    assert s["model"]["latent_dim"] == 2 and s["model"]["config"]["likelihood"] == "gaussian"
    assert s["model"]["config"]["variance"] == "rbf"
    tr = s["training"]
    assert tr["epochs_run"] + sum(tr["stopped_early"].values()) >= 1 and tr["epochs_run"] <= 100
    assert all(math.isfinite(tr[k]) for k in ("final_train_loss", "final_val_loss", "best_val_loss"))
    assert tr["n_train"] == 360 and tr["n_val"] == 40 and tr["rbf"]["n_centers"] == 32
    iw = s["iwae"]
    assert iw["items"] == "validation" and iw["n_points"] == 40 and math.isfinite(iw["log_likelihood"])
    assert math.isfinite(iw["elbo"])
    mag = s["magnification"]
    assert mag["near_data"]["median"] > mag["on_data"]["median"]
    assert s["timings"]["train_s"] > 0
    assert set(PROMISED) <= set(s["files"])  # other issues add their sections' files
    # the log has one record per epoch plus the RBF fit
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == tr["epochs_run"] + 1 and log[-1]["phase"] == "rbf"
    # the checkpoint is the trained model: its magnification at the codes is the summary's
    import latentgeo as lg
    from latentgeo.datasets import load_dataset

    model = VAE.load(out / "model.safetensors")
    assert model.variance == "rbf"
    ds = load_dataset("digits")
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(1))[:400].sort().values
    codes = model.encode_mean(ds.data[idx])
    with torch.no_grad():
        on = lg.PullbackMetric(model.decoder_for_analysis()).magnification(codes).numpy()
    assert float(np.median(on)) == pytest.approx(mag["on_data"]["median"], rel=1e-5)
    # info reads it back
    assert main(["info", "--json", str(out / "model.safetensors")]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["latent_dim"] == 2 and cfg["variance"] == "rbf"
    # `latentgeo report` re-analyses the saved model (data set from the checkpoint, log beside it)
    again = tmp_path / "again"
    tiny = _tiny(False)
    tiny = tiny[:tiny.index("--max-items")] + tiny[tiny.index("--max-items") + 2:]  # the subset is in the checkpoint
    assert main(["report", str(out), "--out", str(again), "--seed", "1", "--quiet", *tiny]) == 0
    s2 = json.loads((again / "summary.json").read_text())
    assert s2["magnification"]["on_data"] == mag["on_data"]
    assert s2["training"]["epochs_run"] == tr["epochs_run"] and s2["source"] == str(out / "model.safetensors")
    assert (again / "training_curves.png").is_file()
    capsys.readouterr()
    assert main(["report", str(out), "--out", str(again), "--data", "moons"]) == 2
    assert "width 10" in capsys.readouterr().err


def test_demo_console_script(tmp_path):
    out = tmp_path / "rep"
    r = _run_script("demo", "--out", str(out), "--epochs", "2", "--quiet", *_tiny())
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and r.stderr == ""  # --quiet: nothing on stderr
    for f in PROMISED:
        assert (out / f).is_file(), f
    s = json.loads((out / "summary.json").read_text())
    assert s["training"]["epochs_run"] == 2 and s["command"][:2] == ["latentgeo", "demo"]


def test_train_command_and_report(tmp_path, capsys):
    from latentgeo.models import VAE

    out = tmp_path / "moons"
    base = ["train", "--data", "moons", "--epochs", "3", "--hidden", "16,16", "--latent-dim", "3", "--seed", "2"]
    tail = ["--quiet", "--max-items", "200", "--variance", "constant"]
    assert main([*base, "--out", str(out), *tail]) == 0
    assert "checkpoint:" in capsys.readouterr().out
    model = VAE.load(out / "model.safetensors")
    assert model.latent_dim == 3 and model.hidden == (16, 16) and model.variance == "constant"
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 3
    # same seed, same weights
    out2 = tmp_path / "moons2"
    assert main([*base, "--out", str(out2), *tail]) == 0
    m2 = VAE.load(out2 / "model.safetensors")
    for (k, a), (_, b) in zip(model.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    # --resume: from the trainer state of the finished run, the same model again
    assert (out / "train_state.safetensors").is_file()
    assert main([*base, "--out", str(out), *tail, "--resume"]) == 0
    m3 = VAE.load(out / "model.safetensors")
    for (k, a), (_, b) in zip(model.state_dict().items(), m3.state_dict().items()):
        assert torch.equal(a, b), k
    capsys.readouterr()
    assert main([*base[:-1], "5", "--out", str(out), *tail, "--resume"]) == 2  # another seed
    assert "random_state" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "fresh"), *tail, "--resume"]) == 2
    assert "no trainer state" in capsys.readouterr().err
    # --report on a 3-D latent: the 2-D maps say why they are skipped
    out3 = tmp_path / "rep3"
    assert main([*base, "--out", str(out3), *tail, "--report", "--resolution", "10", "--iwae-samples", "4"]) == 0
    s = json.loads((out3 / "summary.json").read_text())
    assert "2-D" in s["magnification"]["skipped"] and (out3 / "model.safetensors").is_file()
    # Bernoulli on real-valued data: a one-line error, exit 2
    capsys.readouterr()
    assert main(["train", "--data", "moons", "--likelihood", "bernoulli", "--epochs", "1", "--out",
                 str(tmp_path / "b"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Bernoulli" in err


def test_training_divergence_is_one_line_exit_1(tmp_path, capsys, monkeypatch):
    import latentgeo.training as training

    def diverge(*a, **k):
        raise FloatingPointError("training diverged in phase 'mean' (loss nan); lower the learning rate")

    monkeypatch.setattr(training, "train_vae", diverge)
    assert main(["train", "--data", "moons", "--epochs", "1", "--out", str(tmp_path / "o"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err == "latentgeo train: failed: training diverged in phase 'mean' (loss nan); lower the learning rate\n"
