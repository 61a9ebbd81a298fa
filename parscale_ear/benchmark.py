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

from .fast import _capture
from .pipeline import ParScaleEAR


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
    own stages on the sampler's inputs, coarse then fine on the coarse stage's context. `on_row(row)`,
    if given, is called as each row is measured (long compiled runs show where the time goes)."""
    device = model.device
    model.eval()
    dtype = torch.bfloat16 if bf16 else torch.float32
    use_graphs = graphs and device.type == "cuda"
    c, s = model.config.vae.in_channels, model.config.vae.image_size
    rows = []
    for B in batch_sizes:
        sampler = model.compile_sampler(B, steps, cfg, temperature, dtype=dtype, graphs=use_graphs, compile=compile,
                                        channels_last=channels_last, solver=solver)
        amp = sampler._amp
        labels, noise = sampler._labels, sampler._noise
        images = torch.rand(B, c, s, s, device=device) * 2 - 1
        with torch.no_grad(), amp:
            latents = model.hybrid.sample(noise, labels, sampler.steps, sampler.cfg, sampler.temperature, solver)

        def encode():
            with torch.no_grad(), amp:
                return model.vae.encode(images)

        def stage(name, steps, context=None):
            gen_stage = model.hybrid.stages[name]

            def run():
                with torch.no_grad(), amp:
                    return gen_stage.sample(*noise[name], labels, steps, sampler.cfg, sampler.temperature, context,
                                            solver=solver)

            return run

        def decode():
            with torch.no_grad(), amp:
                return sampler.decode(latents)

        parts = [("encode", encode)]
        if model.config.dit is not None:  # the peer: one stage, its own solver

            def whole():
                with torch.no_grad(), amp:
                    return model.hybrid.sample(noise, labels, sampler.steps, sampler.cfg, sampler.temperature, solver)

            parts.append((f"generate.dit ({sampler.steps[-1]} steps)", whole))
        else:  # each stage of the hybrid's list, in order, on the previous stages' outputs
            hybrid, outputs = model.hybrid, {}
            for st, k in zip(hybrid.stage_list, sampler.steps):
                ctx = hybrid.context(outputs[st.context]) if st.context else None
                run = stage(st.name, k, ctx)
                outputs[st.name] = run()
                parts.append((f"generate.{st.name} ({k} steps)", run))
        parts += [("decode", decode), ("end_to_end", sampler)]
        for name, fn in parts:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            if use_graphs and name not in ("encode", "end_to_end"):  # the sampler captures its own graph
                fn = _capture(fn, device)
            ms = time_callable(fn, device, warmup, runs)
            row = Timing(name, B, ms).summary()
            if device.type == "cuda":
                row["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    head = "| part | batch | ms/image P50 | P95 | P99 | images/s |\n| --- | --- | --- | --- | --- | --- |\n"
    return head + "".join(
        f"| {r['name']} | {r['batch']} | {r['ms_per_image_p50']:.4f} | {r['ms_per_image_p95']:.4f} | "
        f"{r['ms_per_image_p99']:.4f} | {r['images_per_s']:.0f} |\n"
        for r in rows
    )
