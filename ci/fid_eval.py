"""FID: FID of a checkpoint's samples against reference statistics, with and without CFG (or
over a --cfg x --temperature grid, for choosing sampling defaults), plus the LiteVAE's rFID, PSNR
and SSIM on the test split. Writes fid.json."""
from __future__ import annotations

import _common
import torch

from parscale_ear.evaluation import evaluate
from parscale_ear.evaluation import fid as fidlib
from parscale_ear.utils import environment
from parscale_ear.loading import load_pipeline


def reference(args, model, inception):
    v = model.config.vae
    stats, args.ref = evaluate.resolve_reference(args.ref, args.data, args.ref_split, v.image_size, v.in_channels, inception,
                                                 args.batch_size, limit=args.ref_limit)
    if args.save_ref:
        evaluate.save_reference(args.save_ref, stats)
    return stats


def run(args) -> dict:
    dev = _common.device(args.device)
    model = load_pipeline(args.ckpt, device=dev)
    inception = fidlib.load_inception(dev)
    ref = reference(args, model, inception)
    rows = []
    for temperature in args.temperature or [None]:  # a cfg x temperature grid when several are given
        rows += evaluate.evaluate_fid(model, ref, args.n, args.cfg or None, inception, args.batch_size, seed=args.seed,
                                      temperature=temperature, progress=not args.quick)
    vae = evaluate.evaluate_vae(model, args.data, "test", inception, limit=args.vae_limit, batch_size=args.batch_size)
    return {"milestone": "fid_eval", "env": environment(dev), "quick": args.quick, "checkpoint": str(args.ckpt),
            "model": model.config.name, "reference": {"source": args.ref,
                                                        "num_images": int(ref[2]) if len(ref) > 2 and ref[2] else None},
            "fid": rows, "vae": vae, "best_fid": min(r["fid"] for r in rows), "num_samples": args.n}


if __name__ == "__main__":
    p = _common.parser(" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--ckpt", required=True, help="release folder, run folder or checkpoint")
    p.add_argument("--ref", default=None, help="reference statistics .npz (default: the shipped ones for "
                   "fashion-mnist, else computed from --data)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--ref-split", default="train")
    p.add_argument("--ref-limit", type=int, default=None)
    p.add_argument("--save-ref", default=None, help="also write the computed reference statistics here")
    p.add_argument("--n", type=int, default=50_000, help="samples (50,000 for reported numbers)")
    p.add_argument("--cfg", type=float, nargs="*", default=None, help="guidance scales (default: 1 and the model's)")
    p.add_argument("--temperature", type=float, nargs="*", default=None, help="one or more (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--vae-limit", type=int, default=None, help="test images for rFID/PSNR/SSIM (default all)")
    args = p.parse_args()
    if args.quick:
        args.n, args.ref_limit, args.vae_limit, args.batch_size = 64, 128, 64, 64
    result = run(args)
    for r in result["fid"]:
        print(f"cfg {r['cfg']:.2f}  temperature {r['temperature']:.2f}  FID {r['fid']:.3f}  ({r['num_samples']} samples, {r['sampling_seconds']} s sampling)")
    print(f"VAE  rFID {result['vae']['rfid']:.3f}  PSNR {result['vae']['psnr']:.2f} dB  SSIM {result['vae']['ssim']:.4f}")
    _common.write(args.out, "fid.json", result)
