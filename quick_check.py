"""The first check after set-up: every preset of parscale-ear is built and runs on the CPU (build, encode, decode,
generate), with shapes, finite values and the [-1, 1] range checked, and the shipped model loads and samples.

Presets have random weights, so this checks that everything runs and what it costs, not quality. Run from the
repository's root:

  .venv/bin/python quick_check.py              # every preset, then the shipped model (seconds)
  .venv/bin/python quick_check.py tiny-32      # the presets named

The last line is `OK` (exit status 0), or `FAILED: ...` lines (exit status 1).
"""
from __future__ import annotations

import argparse
import sys
import time

GEN_IMAGES = 2  # images generated per preset, seeds 0 and 1
BATCH = {"lite-256": 1}  # batch for encode/decode/generate; 2 unless listed

failures: list[str] = []
timings: list[tuple[str, str, str, float]] = []  # (preset, operation, output shape, ms)
params: dict[str, dict[str, int]] = {}


torch = pe = None  # torch and parscale_ear, imported by main() after the arguments: `--help` answers at once


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

    steps = model.generator.default_steps()  # each preset's own steps, one per stage
    op = f"generate {GEN_IMAGES} steps={','.join(map(str, steps))}"
    gen_shape = (GEN_IMAGES, v.in_channels, v.image_size, v.image_size)
    check(name, "generate", lambda: check_tensor(
        timed(name, op, lambda: model.generate(GEN_IMAGES, seed=0, batch_size=B, steps=steps)), gen_shape, True))


def check_shipped() -> None:
    """The shipped model loads (its digests checked) and draws two images in [-1, 1]."""
    model = check("shipped", "from_pretrained", pe.ParScaleEAR.from_pretrained)
    if model is not None:
        v = model.config.vae
        check("shipped", "generate", lambda: check_tensor(timed("shipped", "generate 2 (default steps)", lambda: model.generate(
            2, seed=0)), (2, v.in_channels, v.image_size, v.image_size), True))


def main(argv: list[str] | None = None) -> int:
    global torch, pe
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("presets", nargs="*", metavar="PRESET", help="presets to check (default: every preset and "
                                                                     "the shipped model)")
    args = parser.parse_args(argv)
    import torch
    import parscale_ear as pe
    from parscale_ear.args import set_cpu_threads

    set_cpu_threads()  # the CLI's CPU threads (README: "CPU threads")
    t_start = time.perf_counter()
    torch.manual_seed(0)
    names = check("registry", "list_models", lambda: pe.list_models(peers=False)) or []
    if not names:
        failures.append("registry: list_models() returned no presets")
    unknown = sorted(set(args.presets) - set(names))
    if unknown:
        parser.error(f"unknown preset(s) {', '.join(unknown)}; known: {', '.join(names)}")
    with torch.no_grad():
        for name in args.presets or names:
            check_preset(name)
        if not args.presets:
            check_shipped()

    cols = ["vae.encoder", "vae.decoder", "generator.coarse", "generator.fine", "generator", "total"]
    print(f"parscale_ear {pe.__version__}, torch {torch.__version__}, CPU threads {torch.get_num_threads()}")
    w = max([len("preset"), *(len(name) for name, *_ in timings)])
    ow = max([len("operation"), *(len(op) for _, op, *_ in timings)])
    print("\nparameters (model.num_parameters())")
    print(f"{'preset':<{w}}" + "".join(f"{c:>18}" for c in cols))
    for name, counts in params.items():
        print(f"{name:<{w}}" + "".join(f"{counts.get(c, 0):>18,}" for c in cols))
    print("\nwall time per operation (CPU, single call, includes first-call overhead)")
    print(f"{'preset':<{w}} {'operation':<{ow}} {'output':<14} {'ms':>9}")
    for name, op, shape, ms in timings:
        print(f"{name:<{w}} {op:<{ow}} {shape:<14} {ms:>9.1f}")
    print(f"\nchecks took {time.perf_counter() - t_start:.1f} s after import")
    if failures:
        for f in failures:
            print(f"FAILED: {f}")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
