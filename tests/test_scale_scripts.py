"""The scaling scripts run and print their numbers (tiny sizes on the CPU; the numbers themselves come from real runs):
the readers' throughput, the ImageNet rates per device, the peak memory at 1x and 8x the data (slow)."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import bench_data  # noqa: E402
import bench_latent_memory  # noqa: E402
import imagenet_estimate  # noqa: E402

TINY_256 = ["vae.extractor_channels=8", "vae.aggregator_channels=16", "vae.decoder_channels=[16,16,16,8,8]",
            *[f"hybrid.{s}.{k}={v}" for s in ("coarse", "fine") for k, v in (("width", 32), ("head_width", 32), ("heads", 2))]]


def test_imagenet_estimate_prints_rates_per_device(tmp_path, capsys):
    out = tmp_path / "rates.json"
    assert imagenet_estimate.main(["--device", "cpu", "--batch-size", "2", "--encode-batch-size", "2", "--steps", "1",
                                   "--warmup", "0", "--json", str(out), "--set", *TINY_256]) == 0
    rates = json.loads(out.read_text())["images_per_s"]
    assert set(rates) == {"encode", "vae_train", "generator_train"} and all(r > 0 for r in rates.values())
    assert "ImageNet-1k encode once" in capsys.readouterr().out


def test_bench_data_reads_every_format(capsys):
    assert bench_data.main(["--images", "40", "--size", "16", "--batch", "8", "--batches", "2", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    for reader in ("image folder (parscale_ear", "tar shards (parscale_ear", "tar shards (webdataset", "HF datasets"):
        assert reader in out
    assert out.count("images/s") >= 2


@pytest.mark.slow
def test_bench_latent_memory_prints_peaks_at_1x_and_8x(capsys):
    assert bench_latent_memory.main(["--images", "80", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    rows, _ = json.JSONDecoder().raw_decode(out[out.index("{"):])
    assert rows["1"]["images"] == 80 and rows["8"]["images"] == 640
    assert all(rows[x]["train_peak_mib"] >= rows[x]["train_peak_anon_mib"] > 0 and rows[x]["latent_shard_files"] > 0
               for x in ("1", "8"))
    assert "train_peak_anon_mib: " in out and "ratio" in out
