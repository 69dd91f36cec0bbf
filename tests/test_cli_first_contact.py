"""First contact with the command line (issue 10): every subcommand and option refuses bad
input with exit status 2 and one line on stderr (no traceback), and nothing is half-written
or lost (an existing run is not replaced without --resume/--force; report folders are
complete or absent)."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from latentgeo.checkpoint import save_checkpoint
from latentgeo.cli import main

KEEP = {"dataset", "model", "training", "checkpoint", "magnification", "training_curves", "iwae"}


def _skip_others():
    """--skip every section but the cheap built-ins (others' sections have their own tests)."""
    from latentgeo.report import report_sections

    return [a for s in report_sections() if s.name not in KEEP for a in ("--skip", s.name)]


TRAIN = ["train", "--data", "moons", "--epochs", "2", "--max-items", "60", "--batch-size", "32", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    return out


def _files(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "pickle.safetensors").write_bytes(pickle.dumps({"w": 1}))
    (tmp_path / "text.safetensors").write_text("not a checkpoint")
    save_checkpoint(tmp_path / "notvae.safetensors", {"w": torch.ones(2)}, {"class": "Other"})


BAD = [
    # every subcommand: an unknown option
    (["demo", "--out", "{tmp}/o", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["train", "--data", "moons", "--out", "{tmp}/o", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["report", "{tmp}/notvae.safetensors", "--out", "{tmp}/o", "--frobnicate"], "unrecognized arguments"),
    (["info", "{tmp}/notvae.safetensors", "--frobnicate"], "unrecognized arguments"),
    # train options
    (["train", "--data", "moons", "--out", "{tmp}/o", "--latent-dim", "0"], "latent-dim must be >= 1"),
    (["train", "--data", "moons", "--out", "{tmp}/o", "--batch-size", "x"], "batch-size must be an integer"),
    (["train", "--data", "moons", "--out", "{tmp}/o", "--epochs", "1.5"], "epochs must be an integer"),
    (["train", "--data", "moons", "--out", "{tmp}/o", "--hidden", ""], "hidden widths"),
    (["train", "--data", "moons", "--out", "{tmp}/o", "--hidden", "0"], "hidden widths"),
    (["train", "--data", "moons", "--out", "{tmp}/o", "--variance", "wide"], "invalid choice: 'wide'"),
    (["train", "--data", "moons", "--out", "{tmp}/o", "--threads", "0"], "threads must be >= 1"),
    (["train", "--data", "moons", "--out", "{tmp}/o", "--seed", "-1"], "seed must be in"),
    (["train", "--data", "moons", "--out", "{tmp}/o", "--resume"], "--resume: no trainer state"),
    (["train", "--data", "moons", "--out", "{tmp}/o", "--resume", "--force"], "give one of them"),
    (["train", "--data", "moons", "--out", "{tmp}/afile"], "exists and is not a directory"),
    (["train", "--data", "moons"], "required: --out"),
    (["train", "--data", "moons", "--out", "{tmp}/o", "--max-items", "3"], "max-items must be >= 10"),
    # report options
    (["report", "{tmp}/missing", "--out", "{tmp}/o"], "no checkpoint"),
    (["report", "{tmp}/pickle.safetensors", "--out", "{tmp}/o"], "pickle"),
    (["report", "{tmp}/text.safetensors", "--out", "{tmp}/o"], "{tmp}/text.safetensors"),
    (["report", "{tmp}/notvae.safetensors", "--out", "{tmp}/o", "--data", "mnist"], "invalid choice: 'mnist'"),
    (["report", "{tmp}/notvae.safetensors", "--out", "{tmp}/o", "--iwae-points", "0"], "iwae-points must be >= 1"),
    (["report", "{tmp}/notvae.safetensors", "--out", "{tmp}/o", "--resolution", "1"], "resolution must be >= 2"),
    (["report", "{tmp}/notvae.safetensors", "--out", "{tmp}/o", "--skip", "nope"], "unknown report section"),
    (["report", "{tmp}/notvae.safetensors"], "required: --out"),
    # info
    (["info", "{tmp}/pickle.safetensors"], "refusing to unpickle"),
    (["info", "{tmp}/text.safetensors"], "text.safetensors"),
    (["info"], "required: checkpoint"),
    # demo
    (["demo", "--out", "{tmp}/o", "--threads", "x"], "threads must be an integer"),
    (["demo", "--out", "{tmp}/o", "--iwae-samples", "-2"], "iwae-samples must be >= 1"),
]


@pytest.mark.parametrize("argv, needle", BAD)
def test_every_subcommand_refuses_bad_input_in_one_line(tmp_path, capsys, argv, needle):
    _files(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    cap = capsys.readouterr()
    lines = [ln for ln in cap.err.splitlines() if ln.strip()]
    assert len(lines) == 1, cap.err
    assert needle.replace("{tmp}", str(tmp_path)) in lines[0], lines[0]
    assert lines[0].startswith("latentgeo"), lines[0]
    assert "Traceback" not in cap.err + cap.out
    assert not (tmp_path / "o").exists()  # nothing written


def test_train_into_an_existing_run_is_refused_and_nothing_is_lost(run_dir, capsys):
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    assert main([*TRAIN, "--epochs", "1", "--out", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--force" in err and "model.safetensors" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_force_replaces_and_resume_of_a_finished_run_says_how(tmp_path, run_dir, capsys):
    out = tmp_path / "copy"
    out.mkdir()
    for p in run_dir.iterdir():
        (out / p.name).write_bytes(p.read_bytes())
    assert main([*TRAIN, "--epochs", "5", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "finished run (mean: 2 epochs)" in err and "start a new run" in err and "--force" in err
    assert main([*TRAIN, "--epochs", "1", "--out", str(out), "--force"]) == 0
    log = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if r["phase"] != "rbf"] == [1]


def test_identical_seeded_trainings_give_identical_checkpoint_bytes(tmp_path, run_dir):
    out = tmp_path / "again"
    assert main([*TRAIN, "--out", str(out)]) == 0
    assert (out / "model.safetensors").read_bytes() == (run_dir / "model.safetensors").read_bytes()


def test_info_summarises_the_train_state(run_dir, capsys):
    assert main(["info", str(run_dir / "train_state.safetensors")]) == 0
    out = capsys.readouterr().out
    assert '"history": "2 epochs (mean: 2); last train_loss' in out
    assert "summarised" in out and len(out.splitlines()) < 120
    assert main(["info", str(run_dir / "train_state.safetensors"), "--json"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert len(full["trainer"]["history"]["records"]) == 2  # --json keeps everything


def test_report_uses_and_names_the_stored_split(tmp_path, run_dir, capsys):
    from latentgeo.datasets import split_indices
    from latentgeo.models import VAE

    split = VAE.load(run_dir).metadata["split"]
    assert split == {"method": "latentgeo.datasets.split_indices", "n_items": 60, "val_fraction": 0.1,
                     "random_state": 0, "n_train": 54, "n_val": 6}
    out = tmp_path / "rep"
    assert main(["report", str(run_dir), "--out", str(out), "--resolution", "8", "--iwae-points", "50",
                 "--iwae-samples", "2", *_skip_others()]) == 0
    cap = capsys.readouterr()
    assert "IWAE on the 6 validation items of the training split (val_fraction 0.1, random_state 0)" in cap.err
    assert "on the 6 validation items" in cap.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iwae"]["n_points"] == len(split_indices(60, 0.1, 0)[1]) == 6
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert len(set(modes.values())) == 1 and 0o400 & next(iter(modes.values())), modes
    assert (out / "summary.json").stat().st_mode & 0o044 or (out / "model.safetensors").stat().st_mode & 0o044 == 0


def test_a_report_that_fails_midway_leaves_no_folder(tmp_path, run_dir, capsys):
    from latentgeo.report import magnification
    from latentgeo.report.context import ReportSectionError

    def boom(ctx):
        raise RuntimeError("disk on fire")

    old = magnification.SECTION.fn
    object.__setattr__(magnification.SECTION, "fn", boom)  # a frozen dataclass
    out = tmp_path / "rep"
    try:
        # a section that breaks is a bug: it propagates with its traceback, but writes nothing
        with pytest.raises(ReportSectionError, match="disk on fire"):
            main(["report", str(run_dir), "--out", str(out), "--resolution", "8", "--iwae-points", "5",
                  "--iwae-samples", "2", *_skip_others()])
    finally:
        object.__setattr__(magnification.SECTION, "fn", old)
    assert not out.exists() or list(out.iterdir()) == []
