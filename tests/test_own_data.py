"""The 256 x 256 path at tiny size on the CPU: idx files rendered to a folder of 256 x 256 PNGs (`parscale-ear data
folder`), `train-vae --preset lite-256-es` and `train` on that folder with the folder's classes, and its reference
statistics through `parscale-ear fid --save-stats` (a stand-in network)."""
import json

import numpy as np
import torch
from PIL import Image

from parscale_ear.cli import main
from parscale_ear.evaluation import fid as fid_mod

from helpers import StandIn
from test_data import write_idx

SMALL_VAE = ["vae.extractor_channels=8", "vae.aggregator_channels=16", "vae.decoder_channels=[16,16,16,8,8]"]
SMALL_GEN = [f"hybrid.{s}.{k}={v}" for s in ("coarse", "fine") for k, v in (("width", 32), ("head_width", 32), ("heads", 2))]
QUICK = ["--steps", "1", "--batch-size", "2", "--warmup-steps", "0", "--device", "cpu", "--no-progress", "--no-samples",
         "--workers", "0"]


def test_fashion_mnist_at_256_trains_both_stages_and_gives_reference_statistics(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "idx", "train", rng.integers(0, 256, (30, 28, 28), dtype=np.uint8), np.arange(30) % 10, gz=True)
    folder = tmp_path / "fmnist-256"
    assert main(["data", "folder", str(tmp_path / "idx"), str(folder), "--image-size", "256", "--per-class", "1"]) == 0
    classes = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert len(classes) == 10 and classes[0] == "0-T-shirt-top" and classes[9] == "9-Ankle-boot"
    png = next(folder.rglob("*.png"))
    assert Image.open(png).size == (256, 256) and Image.open(png).mode == "RGB"
    assert main(["data", "folder", str(tmp_path / "idx"), str(folder), "--image-size", "256", "--per-class", "1"]) == 0
    assert len(list(folder.rglob("*.png"))) == 10  # a rerun keeps what is there
    assert main(["data", "folder", str(tmp_path / "idx"), str(folder), "--image-size", "64", "--per-class", "1"]) == 2
    assert "rendered from other settings" in capsys.readouterr().err  # never PNGs of two sizes in one folder

    vae, gen = tmp_path / "vae", tmp_path / "gen"
    assert main(["train-vae", "--preset", "lite-256-es", "--data", str(folder), "--out", str(vae), *QUICK,
                 "--set", *SMALL_VAE]) == 0
    assert main(["train", "--vae", str(vae), "--preset", "lite-256-es", "--out", str(gen), *QUICK, "--set", *SMALL_GEN]) == 0
    info = json.loads((gen / "run.json").read_text())
    assert info["model"]["num_classes"] == 10 and info["model"]["vae"]["image_size"] == 256 and info["latents"] == 10
    assert torch.load(gen / "checkpoint.pt", weights_only=True)["config"]["num_classes"] == 10

    monkeypatch.setattr(fid_mod, "load_inception", lambda *a, **k: StandIn())
    stats = tmp_path / "fmnist-256-train.npz"
    assert main(["fid", str(folder), "--save-stats", str(stats), "--device", "cpu"]) == 0
    mu, sigma, n = fid_mod.load_statistics(stats)
    assert n == 10 and mu.shape == (8,) and np.isfinite(sigma).all()
