"""Images per second on one device at 256 x 256, the rates an ImageNet run is planned from: encoding (LiteVAE posterior
means, once per image into the latent shards), a LiteVAE training step and a generator training step on latents, with
bf16 autocast on CUDA. Inputs are random tensors already on the device: this measures compute; scripts/bench_data.py
measures reading and decoding. Prints the rates and the hours they give for ImageNet-1k's 1,281,167 training images.

    python scripts/imagenet_estimate.py --device cuda --batch-size 256 --compile --json imagenet_rates.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import parscale_ear as pe  # noqa: E402
from parscale_ear.args import parse_overrides  # noqa: E402
from parscale_ear.train import GeneratorStep, VAEStep  # noqa: E402

IMAGENET_TRAIN = 1_281_167


def timed(fn, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of fn, over `steps` calls after `warmup`."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / steps


def training_step(module: torch.nn.Module, params, inputs: tuple, bf16: bool, device: torch.device, compile_: bool):
    """One forward, backward and AdamW step of `module` on `inputs`."""
    runner = torch.compile(module, dynamic=False) if compile_ else module
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = runner(*inputs)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def measure(args) -> dict:
    device = torch.device(args.device)
    bf16 = device.type == "cuda" and not args.no_bf16
    model = pe.create_model(args.preset, **parse_overrides(args.set)).to(device)
    v, b = model.config.vae, args.batch_size
    images = torch.rand(b, v.in_channels, v.image_size, v.image_size, device=device) * 2 - 1
    labels = torch.randint(0, max(1, model.config.num_classes), (b,), device=device) if model.config.num_classes else None
    with torch.no_grad():
        latents = torch.randn(b, v.latent_channels, v.latent_size, v.latent_size, device=device)
        model.generator.fit_token_scales(latents)
        encode_in = torch.rand(args.encode_batch_size, v.in_channels, v.image_size, v.image_size, device=device) * 2 - 1

    @torch.no_grad()
    def encode():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            model.vae.encode(encode_in)

    rates = {"encode": args.encode_batch_size / timed(encode, args.steps, args.warmup, device)}
    vae_step = training_step(VAEStep(model.vae, 1e-6), model.vae.parameters(), (images,), bf16, device, args.compile)
    rates["vae_train"] = b / timed(vae_step, args.steps, args.warmup, device)
    model.vae.requires_grad_(False)
    gen_step = training_step(GeneratorStep(model.generator), model.generator.parameters(), (latents, labels), bf16, device,
                             args.compile)
    rates["generator_train"] = b / timed(gen_step, args.steps, args.warmup, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": name, "preset": args.preset, "batch_size": b, "bf16": bf16, "compile": args.compile,
            "torch": torch.__version__, "images_per_s": {k: round(r, 1) for k, r in rates.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--preset", default="lite-256-es", help="model preset (256 x 256: lite-256-es)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=256, help="training batch on the device")
    p.add_argument("--encode-batch-size", type=int, default=256, help="encoding batch")
    p.add_argument("--steps", type=int, default=20, help="timed calls of each")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls first (compilation, autotuning)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training steps")
    p.add_argument("--no-bf16", action="store_true", help="float32 on CUDA")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="model config overrides")
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args(argv)
    result = measure(args)
    rates = result["images_per_s"]
    print(f"{result['device']}, {result['preset']}, batch {result['batch_size']}, bf16 {result['bf16']}, "
          f"compile {result['compile']}, torch {result['torch']}")
    for key, what in (("encode", "encode once"), ("vae_train", "LiteVAE, per epoch"),
                      ("generator_train", "generator, per epoch")):
        hours = IMAGENET_TRAIN / rates[key] / 3600
        print(f"{key:16s} {rates[key]:10.1f} images/s per device  ImageNet-1k {what}: {hours:8.2f} device-hours")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
