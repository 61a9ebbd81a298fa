"""Many nodes: two torchrun "nodes" of one process each on localhost (c10d rendezvous, gloo on the CPU) train like one
process (the same global batch, a loss curve of the same shape, one checkpoint), every rank encodes its share of the
latents, and --resume continues a run after a change of world size (2 -> 1, 1 -> 2)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import parscale_ear as pe
from parscale_ear.cli import main
from parscale_ear.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
GEN = ["--steps", "3", "--batch-size", "8", "--lr", "1e-3", "--warmup-steps", "1", "--device", "cpu", "--log-every", "1",
       "--no-progress", "--no-samples", "--workers", "0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(cwd: Path, *args: str, timeout: float = 150) -> None:
    """`torchrun --nnodes 2 --nproc_per_node 1 --node-rank R --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:PORT -m
    parscale_ear ARGS` for R = 0, 1 at once; both must exit 0 in time (else both are killed)."""
    port, env = free_port(), {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                               "--node-rank", str(rank), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                               "--rdzv-id", "test", "-m", "parscale_ear", *args], cwd=cwd, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
             for rank in (0, 1)]
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A VAE run on a 64-image folder, then the generator trained 3 steps by one process and by two nodes."""
    tmp = tmp_path_factory.mktemp("multinode")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    for i in range(64):
        image = (np.hypot(yy - 16, xx - 16) < 4 + i % 4) * 200 + rng.integers(0, 40, (32, 32))
        (tmp / "imgs" / f"c{i % 4}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.astype(np.uint8)).save(tmp / "imgs" / f"c{i % 4}" / f"{i:02d}.png")
    cfg = TrainConfig(kind="vae", steps=3, batch_size=8, lr=1e-3, warmup_steps=1, data=str(tmp / "imgs"), bf16=False,
                      samples=False, workers=0)
    train(cfg, tmp / "vae", pe.get_config("tiny-32", num_classes=4), progress=False)
    assert main(["train", "--vae", str(tmp / "vae"), "--out", str(tmp / "one"), *GEN]) == 0
    two_nodes(tmp, "train", "--vae", str(tmp / "vae"), "--out", str(tmp / "two"), *GEN)
    return tmp


def test_two_nodes_train_like_one_process(runs):
    one, two = json.loads((runs / "one" / "run.json").read_text()), json.loads((runs / "two" / "run.json").read_text())
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["train"]["batch_size"] == two["train"]["batch_size"] == 8  # the global batch, split over the nodes
    a, b = rows(runs / "one"), rows(runs / "two")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):  # the same weights and batches; only each rank's noise draws differ
        assert np.isfinite(rb["loss"]) and abs(ra["loss"] - rb["loss"]) < 0.05 * abs(ra["loss"]), (ra, rb)
    assert sorted(p.name for p in (runs / "two").iterdir()) == ["checkpoint.pt", "metrics.jsonl", "run.json"]
    ckpt = torch.load(runs / "two" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 3 and ckpt["config"]["num_classes"] == 4


def test_resume_after_two_nodes_on_one_process(runs, tmp_path):
    run = tmp_path / "two"
    shutil.copytree(runs / "two", run)
    assert main(["train", "--vae", str(runs / "vae"), "--out", str(run), "--resume", *GEN[:1], "5", *GEN[2:]]) == 0
    assert [r["step"] for r in rows(run)] == [1, 2, 3, 4, 5] and all(np.isfinite(r["loss"]) for r in rows(run))
    info = json.loads((run / "run.json").read_text())
    assert info["world_size"] == 1 and info["train"]["batch_size"] == 8


def test_resume_after_one_process_on_two_nodes(runs):
    shutil.copytree(runs / "one", runs / "one-then-two")
    two_nodes(runs, "train", "--vae", str(runs / "vae"), "--out", str(runs / "one-then-two"), "--resume", *GEN[:1], "5",
              *GEN[2:])
    run = runs / "one-then-two"
    assert [r["step"] for r in rows(run)] == [1, 2, 3, 4, 5] and all(np.isfinite(r["loss"]) for r in rows(run))
    info = json.loads((run / "run.json").read_text())
    assert info["world_size"] == 2 and info["train"]["batch_size"] == 8
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 5


ENCODE_SCRIPT = '''
import json, os, sys, torch
from parscale_ear.streaming import open_images
from parscale_ear.train import latents, load_checkpoint, model_from_checkpoint, setup_distributed
d, dev = setup_distributed("cpu")
encoded, real = [], latents._encode_shard
latents._encode_shard = lambda folder, k, *a, **kw: encoded.append(k) or real(folder, k, *a, **kw)
model = model_from_checkpoint(load_checkpoint(sys.argv[1]))
result = latents.latent_shards(sys.argv[1], model, open_images(sys.argv[2], 32, 1), dev, d, shard_items=8, workers=0)
with open(f"rank{d.rank}.json", "w") as f:
    json.dump({"encoded": encoded, "count": len(result), "sum": float(result.sample(64).sum())}, f)
torch.distributed.destroy_process_group()
'''


def test_every_rank_encodes_its_share_of_the_latent_shards(runs, tmp_path):
    (tmp_path / "encode.py").write_text(ENCODE_SCRIPT)
    vae = tmp_path / "vae"
    shutil.copytree(runs / "vae", vae, ignore=shutil.ignore_patterns("latents"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "encode.py", str(vae), str(runs / "imgs")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["encoded"] == [0, 2, 4, 6] and ranks[1]["encoded"] == [1, 3, 5, 7]  # 8 shards of 8, in parallel
    assert ranks[0]["count"] == ranks[1]["count"] == 64 and ranks[0]["sum"] == ranks[1]["sum"]  # both map all of them
