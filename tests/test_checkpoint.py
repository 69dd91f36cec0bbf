"""Checkpoints: exact round trips, no unpickling, truncation/corruption, atomic writes, mismatches."""

import pickle
import struct

import pytest
import torch

import latentgeo.checkpoint as ckmod
from latentgeo.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_config, save_checkpoint
from latentgeo.models import VAE


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    vae = VAE(16, 2, hidden=(12,), item_shape=(4, 4), random_state=0)
    x = torch.rand(80, 16, generator=torch.Generator().manual_seed(0))
    vae.fit_rbf_variance(x, n_centers=6, n_iter=30)
    vae.metadata["dataset"] = {"name": "toy", "params": {"n": 80}}
    return vae


def test_model_round_trip_exact(model, tmp_path):
    path = tmp_path / "ckpt"  # a directory
    model.save(path)
    assert (path / "model.safetensors").is_file()
    loaded = VAE.load(path)
    assert loaded.config == model.config and loaded.variance == "rbf"
    x = torch.rand(9, 16)
    z = torch.randn(9, 2) * 3
    assert torch.equal(loaded.encode_mean(x), model.encode_mean(x))
    for a, b in zip(loaded.decode(z), model.decode(z)):
        assert torch.equal(a, b)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]) and v.dtype == loaded.state_dict()[k].dtype
    cfg = read_checkpoint_config(path)
    assert cfg["metadata"]["dataset"]["name"] == "toy" and cfg["rbf"] == {"n_centers": 6}


def test_generic_round_trip_dtypes(tmp_path):
    sd = {
        "a": torch.randn(3, 4, dtype=torch.float64),
        "b": torch.arange(5),
        "c": torch.tensor([True, False]),
        "d": torch.tensor(2.5),
        "e": torch.randn(2, 3).T,  # non-contiguous
    }
    cfg = {"class": "Thing", "nested": {"x": [1, 2.5, None, "s"]}}
    save_checkpoint(tmp_path / "t.safetensors", sd, cfg)
    got, gcfg = load_checkpoint(tmp_path / "t.safetensors")
    assert set(got) == set(sd)
    for k in sd:
        assert torch.equal(got[k], sd[k]) and got[k].dtype == sd[k].dtype
    assert {k: v for k, v in gcfg.items() if not k.startswith("_")} == cfg
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(tmp_path / "u.safetensors", sd, {"x": float("nan")})
    with pytest.raises(ValueError, match="not a tensor"):
        save_checkpoint(tmp_path / "u.safetensors", {"x": [1, 2]}, {})


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payloads_refused_without_running_them(model, tmp_path):
    marker = tmp_path / "pwned"
    f = tmp_path / "model.safetensors"
    torch.save({"state": model.state_dict(), "evil": _Evil(str(marker))}, f)
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*(zip|pickle)"):
        VAE.load(tmp_path)
    f.write_bytes(pickle.dumps({"evil": _Evil(str(marker))}, protocol=4))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*pickle"):
        load_checkpoint(f)
    f.write_bytes(pickle.dumps({"evil": _Evil(str(marker))}, protocol=0))  # text pickle, no magic
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_checkpoint(f)
    pt = tmp_path / "weights.pt"  # any existing file name is read as the checkpoint itself
    torch.save({"evil": _Evil(str(marker))}, pt)
    with pytest.raises(CheckpointError, match=r"weights\.pt.*zip"):
        VAE.load(pt)
    assert not marker.exists()


def test_truncated_and_corrupt_files(model, tmp_path):
    good = tmp_path / "good.safetensors"
    model.save(good)
    raw = good.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    bad = tmp_path / "bad.safetensors"
    for cut in (0, 5, 8 + n // 2, 8 + n + 10, len(raw) - 1):
        bad.write_bytes(raw[:cut])
        with pytest.raises(CheckpointError, match=r"bad\.safetensors.*(empty|truncated)"):
            VAE.load(bad)
    # a flipped byte in the tensor data is caught by the digest
    flipped = bytearray(raw)
    flipped[-3] ^= 0xFF
    bad.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=r"bad\.safetensors.*sha256"):
        VAE.load(bad)
    # a corrupt header
    broken = bytearray(raw)
    broken[8] = ord("]")
    bad.write_bytes(bytes(broken))
    with pytest.raises(CheckpointError, match=r"bad\.safetensors.*header"):
        load_checkpoint(bad)
    # trailing garbage
    bad.write_bytes(raw + b"xx")
    with pytest.raises(CheckpointError, match="trailing"):
        load_checkpoint(bad)
    # a valid safetensors file that is not ours
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(bad))
    with pytest.raises(CheckpointError, match="not a latentgeo checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="no checkpoint in directory"):
        load_checkpoint(tmp_path)


def _leftovers(d):
    return [p.name for p in d.iterdir() if p.name.endswith(".tmp")]


def test_interrupted_save_keeps_previous(model, tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    model.save(path)
    before = path.read_bytes()
    other = VAE(16, 2, hidden=(12,), item_shape=(4, 4), random_state=1)

    def boom(*a, **k):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(ckmod.os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        other.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before and not _leftovers(tmp_path)

    real_write = ckmod._write_bytes

    def half(fd, data):
        real_write(fd, data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(ckmod, "_write_bytes", half)
    with pytest.raises(OSError, match="disk full"):
        other.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before and not _leftovers(tmp_path)
    loaded = VAE.load(path)
    x = torch.rand(3, 16)
    assert torch.equal(loaded.encode_mean(x), model.encode_mean(x))
    # and a completed save does replace it
    other.save(path)
    assert torch.equal(VAE.load(path).encode_mean(x), other.encode_mean(x))


def test_config_weight_mismatch_named(model, tmp_path):
    path = tmp_path / "m.safetensors"
    cfg = dict(model.config, hidden=[7])
    save_checkpoint(path, model.state_dict(), cfg)
    with pytest.raises(CheckpointError, match=r"m\.safetensors.*encoder\.net\.0\.weight.*\(12, 16\).*\(7, 16\)"):
        VAE.load(path)
    sd = dict(model.state_dict())
    sd.pop("likelihood.mean_net.net.2.bias")
    sd["surprise"] = torch.zeros(1)
    save_checkpoint(path, sd, model.config)
    with pytest.raises(CheckpointError, match=r"missing tensors \['likelihood\.mean_net\.net\.2\.bias'\].*unexpected tensors \['surprise'\]"):
        VAE.load(path)
    save_checkpoint(path, model.state_dict(), dict(model.config, latent="klein_bottle"))
    with pytest.raises(CheckpointError, match="unknown latent"):
        VAE.load(path)
    save_checkpoint(path, model.state_dict(), dict(model.config, dtype="float64"))
    with pytest.raises(CheckpointError, match="float32 but the config says torch.float64"):
        VAE.load(path)
    sd = dict(model.state_dict())
    sd["encoder.net.0.bias"] = torch.full_like(sd["encoder.net.0.bias"], float("nan"))
    save_checkpoint(path, sd, model.config)
    with pytest.raises(CheckpointError, match="NaN"):
        VAE.load(path)
