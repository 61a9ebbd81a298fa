"""Sanity: parameter counts per module per preset, forward shapes, finite outputs, determinism
across batch sizes and a save/load cycle. Writes sanity.json."""
from __future__ import annotations

import copy
import tempfile

import _common
import torch

import parscale_ear as pe
from parscale_ear.utils import environment


def check_preset(name: str, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = pe.create_model(name).to(device).eval()
    v = model.config.vae
    images = torch.rand(2, v.in_channels, v.image_size, v.image_size, device=device) * 2 - 1
    with torch.no_grad():
        latents = model.vae.encode(images)
        decoded = model.vae.decode(latents)
    a = model.generate(3, seed=7, batch_size=3)
    # batch invariance in float64: fresh weights give constant latents, where float32 GroupNorm
    # rounding is amplified by 1/sqrt(eps) and hides what is being checked
    model64 = copy.deepcopy(model).double()
    a64, b64 = model64.generate(3, seed=7, batch_size=3), model64.generate(3, seed=7, batch_size=1)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        loaded = pe.ParScaleEAR.from_pretrained(tmp, device=device)
        c = loaded.generate(3, seed=7, batch_size=3)
    checks = {
        "latent_shape": list(latents.shape[1:]) == list(v.latent_shape),
        "decode_shape": decoded.shape == images.shape,
        "generate_shape": a.shape == (3, v.in_channels, v.image_size, v.image_size),
        "finite": bool(torch.isfinite(latents).all() and torch.isfinite(decoded).all() and torch.isfinite(a).all()),
        "in_range": bool(a.abs().max() <= 1),
        "batch_invariant": bool(torch.allclose(a64, b64, atol=1e-8, rtol=0)),
        "save_load_identical": bool(torch.equal(a, c)),
    }
    return {"params": model.num_parameters(), "latent_shape": list(v.latent_shape), "checks": checks}


def run(device: torch.device, quick: bool) -> dict:
    presets = ["tiny-32-flow", "fmnist-32-es", _common.gates()["sanity"]["preset_256"]]  # the shipped design at 32 and 256
    results = {name: check_preset(name, device) for name in presets}
    return {"milestone": "sanity", "env": environment(device), "quick": quick, "presets": results,
            "all_checks_pass": all(all(r["checks"].values()) for r in results.values())}


if __name__ == "__main__":
    args = _common.parser(" ".join(__doc__.split("\n\n")[0].split())).parse_args()
    result = run(_common.device(args.device), args.quick)
    for name, r in result["presets"].items():
        failed = [k for k, ok in r["checks"].items() if not ok]
        print(f"{name:10s} generator {r['params']['generator'] / 1e6:6.2f}M  total {r['params']['total'] / 1e6:6.2f}M  "
              + ("OK" if not failed else f"FAILED: {failed}"))
    _common.write(args.out, "sanity.json", result)
    raise SystemExit(0 if result["all_checks_pass"] else 1)
