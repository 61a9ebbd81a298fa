"""Quick CPU smoke check of every preset: build, encode, decode, generate; shapes, finiteness, range.

Random weights (nothing is loaded), so it checks plumbing and cost, not quality. Run from the repo
root: `.venv/bin/python experiments/quick_check.py`. Last line is `OK`, or `FAILED: ...` with exit status 1.
"""
from __future__ import annotations

import sys
import time

import torch

import parscale_ear as pe

GEN_IMAGES = 2  # images generated per preset, seeds 0 and 1
BATCH = {"lite-256": 1}  # batch for encode/decode/generate; 2 unless listed

failures: list[str] = []
timings: list[tuple[str, str, str, float]] = []  # (preset, operation, output shape, ms)
params: dict[str, dict[str, int]] = {}


def check(preset: str, what: str, fn):
    """Run fn(); on an exception record `preset what: error` and return None."""
    try:
        return fn()
    except Exception as e:  # keep going: report every failing check
        failures.append(f"{preset} {what}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return None


def timed(preset: str, op: str, fn):
    t0 = time.perf_counter()
    out = fn()
    ms = (time.perf_counter() - t0) * 1000.0
    timings.append((preset, op, "x".join(map(str, out.shape)) if isinstance(out, torch.Tensor) else "-", ms))
    return out


def expect(cond: bool, message: str) -> None:
    if not cond:
        raise AssertionError(message)


def check_tensor(x: torch.Tensor, shape: tuple, in_range: bool) -> None:
    expect(tuple(x.shape) == tuple(shape), f"shape {tuple(x.shape)}, expected {tuple(shape)}")
    expect(bool(torch.isfinite(x).all()), "non-finite values")
    if in_range:
        lo, hi = x.min().item(), x.max().item()
        expect(-1.0 <= lo and hi <= 1.0, f"values in [{lo:.3g}, {hi:.3g}], expected [-1, 1]")


def check_preset(name: str) -> None:
    torch.manual_seed(0)
    model = check(name, "build", lambda: timed(name, "build", lambda: pe.create_model(name).eval()))
    if model is None:
        return
    counts = check(name, "num_parameters", model.num_parameters)
    if counts is not None:
        params[name] = counts
    v = model.config.vae
    B = BATCH.get(name, 2)
    image_shape = (B, v.in_channels, v.image_size, v.image_size)
    images = torch.rand(image_shape, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def encode():
        z = timed(name, "encode", lambda: model.vae.encode(images))
        check_tensor(z, (B, *v.latent_shape), in_range=False)
        return z

    latents = check(name, "encode", encode)
    if latents is not None:
        check(name, "decode", lambda: check_tensor(timed(name, "decode", lambda: model.vae.decode(latents)), image_shape, False))
        check(name, "reconstruct", lambda: check_tensor(timed(name, "reconstruct", lambda: model.reconstruct(images)), image_shape, True))

    steps = model.generator.default_steps()  # each preset's own (coarse, fine) steps
    op = f"generate {GEN_IMAGES} steps={steps[0]},{steps[1]}"
    gen_shape = (GEN_IMAGES, v.in_channels, v.image_size, v.image_size)
    check(name, "generate", lambda: check_tensor(
        timed(name, op, lambda: model.generate(GEN_IMAGES, seed=0, batch_size=B, steps=steps)), gen_shape, True))


def main() -> int:
    t_start = time.perf_counter()
    torch.manual_seed(0)
    names = check("registry", "list_models", lambda: pe.list_models(peers=False)) or []
    if not names:
        failures.append("registry: list_models() returned no presets")
    with torch.no_grad():
        for name in names:
            check_preset(name)

    cols = ["vae.encoder", "vae.decoder", "generator.coarse", "generator.fine", "generator", "total"]
    print(f"parscale_ear {pe.__version__}, torch {torch.__version__}, CPU threads {torch.get_num_threads()}")
    print("\nparameters (model.num_parameters())")
    print(f"{'preset':<10}" + "".join(f"{c:>18}" for c in cols))
    for name, counts in params.items():
        print(f"{name:<10}" + "".join(f"{counts.get(c, 0):>18,}" for c in cols))
    print("\nwall time per operation (CPU, single call, includes first-call overhead)")
    print(f"{'preset':<10} {'operation':<24} {'output':<14} {'ms':>9}")
    for name, op, shape, ms in timings:
        print(f"{name:<10} {op:<24} {shape:<14} {ms:>9.1f}")
    print(f"\nchecks took {time.perf_counter() - t_start:.1f} s after import (whole script budget: 60 s)")
    if failures:
        for f in failures:
            print(f"FAILED: {f}")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
