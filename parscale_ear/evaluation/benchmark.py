"""Latency profiling: per-stage and end-to-end (noise -> pixels) timings with synchronised CUDA events.

Every timed region is bracketed by CUDA events and the device is synchronised before reading
them; warm-up runs come first; percentiles are taken over hundreds of timed runs (METHOD: medians,
same-run ratios). On the CPU, `time.perf_counter` is used instead.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..fast import _capture
from ..guidance import mix
from ..pipeline import ParScaleEAR


@dataclass
class Timing:
    name: str
    batch: int
    ms_per_batch: list[float]

    def summary(self) -> dict:
        t = np.asarray(self.ms_per_batch)
        per_image = t / self.batch
        return {
            "name": self.name,
            "batch": self.batch,
            "runs": int(t.size),
            "batch_ms_p50": float(np.percentile(t, 50)),
            "ms_per_image_p50": float(np.percentile(per_image, 50)),
            "ms_per_image_p95": float(np.percentile(per_image, 95)),
            "ms_per_image_p99": float(np.percentile(per_image, 99)),
            "images_per_s": float(self.batch / np.median(t) * 1000.0),
        }


def time_callable(fn: Callable[[], object], device: torch.device, warmup: int = 10, runs: int = 200) -> list[float]:
    """Milliseconds of each of `runs` calls after `warmup` calls; CUDA events + synchronize on CUDA."""
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        out = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1000.0)
        return out
    torch.cuda.synchronize(device)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    for s, e in zip(starts, ends):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize(device)
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def profile_latency(
    model: ParScaleEAR,
    batch_sizes=(1, 4, 16, 64),
    runs: int = 200,
    warmup: int = 10,
    bf16: bool = False,
    compile: bool = False,
    graphs: bool = False,
    cfg: float | None = None,
    channels_last: bool = False,
    steps=None,
    temperature: float | None = None,
    on_row=None,
    solver: str | None = None,
) -> list[dict]:
    """Time encode, each generation stage, decode and end to end per batch size, all through the
    sampler a user gets from `model.compile_sampler` (same schedule, dtype, graphs, decoder).

    end_to_end is `sampler()`: device noise -> latents -> pixels. The stage rows run the hybrid's
    own stages on the sampler's inputs, coarse then fine on the coarse stage's context, so generate.* + decode
    make up end_to_end (encode is not part of generation). `on_row(row)`, if given, is called as each row is
    measured (long compiled runs show where the time goes)."""
    device = model.device
    model.eval()
    dtype = torch.bfloat16 if bf16 else torch.float32
    use_graphs = graphs and device.type == "cuda"
    rows = []
    for B in batch_sizes:
        sampler = model.compile_sampler(B, steps, cfg, temperature, dtype=dtype, graphs=use_graphs, compile=compile,
                                        channels_last=channels_last, solver=solver)
        for name, fn in _parts(model, sampler, B, solver):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            if use_graphs and name not in ("encode", "end_to_end"):  # the sampler captures its own graph
                fn = _capture(fn, device)
            row = Timing(name, B, time_callable(fn, device, warmup, runs)).summary()
            if device.type == "cuda":
                row["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def _parts(model: ParScaleEAR, sampler, B: int, solver: str | None) -> list[tuple[str, Callable[[], object]]]:
    """(name, call) of each part profile_latency times at batch B, on the sampler's own inputs and settings."""
    amp, labels, noise = sampler._amp, sampler._labels, sampler._noise
    c, s = model.config.vae.in_channels, model.config.vae.image_size
    images = torch.rand(B, c, s, s, device=model.device) * 2 - 1

    def under_amp(fn):
        def run():
            with torch.no_grad(), amp:
                return fn()
        return run

    generator = model.generator
    with torch.no_grad(), amp:
        latents = generator.sample(noise, labels, sampler.steps, sampler.cfg, sampler.temperature, solver)
    parts = [("encode", under_amp(lambda: model.vae.encode(images)))]
    outputs = {}  # each stage in order, on the earlier stages' outputs
    for name, k in zip(generator.stages, sampler.steps):
        run = under_amp(lambda name=name, k=k, earlier=dict(outputs): generator.sample_stage(
            name, noise, labels, k, sampler.cfg, sampler.temperature, solver, earlier))
        outputs[name] = run()
        parts.append((f"generate.{name} ({k} steps)", run))
    return parts + [("decode", under_amp(lambda: sampler.decode(latents))), ("end_to_end", sampler)]


def markdown_table(rows: list[dict]) -> str:
    head = "| part | batch | ms/image P50 | P95 | P99 | images/s |\n| --- | --- | --- | --- | --- | --- |\n"
    return head + "".join(
        f"| {r['name']} | {r['batch']} | {r['ms_per_image_p50']:.4f} | {r['ms_per_image_p95']:.4f} | "
        f"{r['ms_per_image_p99']:.4f} | {r['images_per_s']:.0f} |\n"
        for r in rows
    )


def time_dit_xl(batch: int, device: torch.device, steps: int = 250, cfg: float = 4.0, runs: int = 3,
                decoder: bool = True) -> dict:
    """The speed reference: DiT-XL/2 (Peebles & Xie 2023; diffusers' DiTTransformer2DModel at its size: 28 layers,
    16 heads x 72, patch 2 on a 4 x 32 x 32 latent, 1000 classes, random weights, which time as trained ones do),
    `steps` guided steps (two rows an image when cfg != 1) in bf16 with one step captured in a CUDA graph, then an
    SD-VAE-sized decoder (diffusers' AutoencoderKL 128-256-512-512, random weights) to 256 x 256 pixels. Returns
    ms/image (P50, P99 over `runs` whole noise -> pixels runs) and the decoder's share."""
    from diffusers import AutoencoderKL, DiTTransformer2DModel

    if device.type != "cuda":
        raise ValueError("time_dit_xl: needs a CUDA device")
    torch.manual_seed(0)
    dit = DiTTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
                                sample_size=32, patch_size=2, num_embeds_ada_norm=1000).to(device, torch.bfloat16).eval()
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                        sample_size=256).to(device, torch.bfloat16).eval()
    rows = 2 if cfg != 1.0 else 1
    x = torch.randn(batch, 4, 32, 32, device=device, dtype=torch.bfloat16)
    labels = torch.cat([torch.randint(0, 1000, (batch,), device=device), torch.full((batch,), 1000, device=device)])[: rows * batch]
    t = torch.full((rows * batch,), 500.0, device=device)

    @torch.no_grad()
    def step():
        out = dit(x.repeat(rows, 1, 1, 1), timestep=t, class_labels=labels, return_dict=False)[0][:, :4]
        guided = out if rows == 1 else mix(out[:batch], out[batch:], cfg)
        x.sub_(guided / steps)

    @torch.no_grad()
    def decode():
        return vae.decode(x / 0.18215, return_dict=False)[0]

    run_step, run_decode = _capture(step, device), _capture(decode, device)

    def sample():
        for _ in range(steps):
            run_step()
        if decoder:
            run_decode()

    whole = np.asarray(time_callable(sample, device, warmup=1, runs=runs)) / batch
    dec = np.asarray(time_callable(run_decode, device, warmup=3, runs=50)) / batch
    return {"name": f"DiT-XL/2 ({steps} steps, cfg {cfg:g}) + SD-VAE decoder", "batch": batch, "runs": runs,
            "params": sum(p.numel() for p in dit.parameters()), "decoder_params": sum(p.numel() for p in vae.decoder.parameters()),
            "ms_per_image_p50": float(np.percentile(whole, 50)), "ms_per_image_p99": float(np.percentile(whole, 99)),
            "decoder_ms_per_image_p50": float(np.percentile(dec, 50)), "decoder_timed": decoder}
