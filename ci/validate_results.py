"""Check a results folder (sanity/latency/fid/peer/ablation JSON) against ci/gates.json and the files
listed in SHA256SUMS; write report.md. Exit 1 naming each failed gate.

Usage: python ci/validate_results.py DIR [--no-gates]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import _common

from parscale_ear.files import sha256_file


def load(folder: Path, name: str):
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else None


def peers(folder: Path) -> list[tuple[str, dict]]:
    """(gate name, result) of each peer ci/peer.py wrote: peer_RECIPE.json (peer.json: an older single peer)."""
    found = [("peer.fid", load(folder, "peer.json"))] + [(f"peer.{p.stem[5:]}.fid", json.loads(p.read_text()))
                                                          for p in sorted(folder.glob("peer_*.json"))]
    return [(n, r) for n, r in found if r is not None]


def check_sha256sums(root: Path) -> list[tuple[str, bool, str]]:
    out = []
    sums = root / "SHA256SUMS"
    for line in sums.read_text().splitlines() if sums.is_file() else []:
        if not line.strip():
            continue
        digest, name = line.split(maxsplit=1)
        path = root / name.lstrip("*")
        ok = path.is_file() and sha256_file(path) == digest
        out.append((f"sha256:{name}", ok, "matches" if ok else "missing or different"))
    return out


def evaluate_gates(folder: Path, gates: dict, use_gates: bool) -> list[tuple[str, bool | None, str]]:
    """(gate, passed (None = not applicable), detail) for each milestone."""
    res = []
    sanity = load(folder, "sanity.json")
    if sanity is None:
        res.append(("sanity", False, "sanity.json missing"))
    else:
        res.append(("sanity.all_checks_pass", sanity["all_checks_pass"], "per-preset checks"))
        gs = gates["sanity"]
        checked = sanity["presets"].get(gs["preset_256"])
        if checked is None:
            res.append(("sanity.generator_params_256", False, f"{gs['preset_256']} was not checked"))
        else:
            g = checked["params"]["generator"]
            res.append(("sanity.generator_params_256", gs["generator_params_256_min"] <= g <= gs["generator_params_256_max"],
                        f"{gs['preset_256']} {g / 1e6:.2f}M in [{gs['generator_params_256_min'] / 1e6:.0f}M, "
                        f"{gs['generator_params_256_max'] / 1e6:.0f}M]"))
    lat = load(folder, "latency.json")
    gl = gates["latency"]
    if lat is None:
        res.append(("latency", False, "latency.json missing"))
    elif not use_gates or lat["quick"] or lat["env"]["device_type"] != "cuda":
        res.append(("latency", None, "ran (no gate in quick/CPU mode)"))
    else:
        row = [r for r in lat["rows"] if r["name"] == "end_to_end" and r["batch"] == gl["batch"]]
        ok = bool(row) and lat["model"] == gl["preset"] and row[0]["ms_per_image_p99"] <= gl["max_end_to_end_ms_per_image_p99"]
        detail = f"{lat['model']} batch {gl['batch']} P99 {row[0]['ms_per_image_p99']:.4f} ms/image" if row else "no row"
        res.append(("latency.end_to_end_p99", ok, detail + f" (gate <= {gl['max_end_to_end_ms_per_image_p99']})"))
    fid = load(folder, "fid.json")
    gf = gates["fid_eval"]
    if fid is None:
        res.append(("fid_eval", False, "fid.json missing"))
    elif not use_gates or fid["quick"]:
        res.append(("fid_eval", None, f"ran: best FID {fid['best_fid']:.2f} on {fid['num_samples']} samples (no gate in quick mode)"))
    else:
        ok = fid["best_fid"] <= gf["max_fid"] and fid["num_samples"] >= gf["min_num_samples"]
        res.append(("fid_eval.fid", ok, f"best FID {fid['best_fid']:.3f} on {fid['num_samples']} samples (gate <= {gf['max_fid']} on >= {gf['min_num_samples']})"))
    for name, peer in peers(folder):  # reported beside fid_eval, never gated
        best = min(peer["rows"], key=lambda r: r["fid_train"])
        res.append((name, None, f"{peer['recipe']} after {peer['budget_minutes']} min: best FID {best['fid_train']:.3f} "
                    f"({best['schedule']}, {best['passes_per_image']} passes) on {peer['num_samples']} samples (reported, not gated)"))
    abl = load(folder, "ablation.json")
    if abl is None:
        res.append(("ablation", False, "ablation.json missing"))
    else:
        by = {r["variant"]: r["fid"] for r in abl["rows"]}
        for other in ("no_coarse", "no_fine"):
            key = f"full_beats_{other}"
            if not use_gates or abl["quick"] or "full" not in by or other not in by:
                res.append((f"ablation.{key}", None, "ran (no gate in quick mode)"))
            elif gates["ablation"].get(key):
                res.append((f"ablation.{key}", by["full"] < by[other], f"full {by['full']:.2f} vs {other} {by[other]:.2f}"))
    return res


def report(folder: Path, results) -> str:
    lines = [f"# Milestone report: {folder}\n"]
    if any((load(folder, name) or {}).get("quick") for name in ("latency.json", "fid.json", "ablation.json")):
        lines += ["A quick run (`--quick`): tiny models trained for a few steps on a slice of the data. Its numbers check "
                  "that every stage runs end to end; they are not results.\n"]
    lines += ["| gate | result | detail |", "| --- | --- | --- |"]
    for name, ok, detail in results:
        lines.append(f"| {name} | {'n/a' if ok is None else 'PASS' if ok else 'FAIL'} | {detail} |")
    for md in ("latency.md", "ablation.md"):
        if (folder / md).is_file():
            lines += ["", (folder / md).read_text()]
    fid = load(folder, "fid.json")
    if fid:
        lines += ["", "## FID", "", "| cfg | FID | samples |", "| --- | --- | --- |"]
        lines += [f"| {r['cfg']} | {r['fid']:.3f} | {r['num_samples']} |" for r in fid["fid"]]
        for _, peer in peers(folder):
            lines += ["", f"Peer ({peer['recipe']}, {peer['budget_minutes']} training minutes, not gated):", "",
                      "| schedule | passes | FID | samples |", "| --- | --- | --- | --- |"]
            lines += [f"| {r['schedule']} | {r['passes_per_image']} | {r['fid_train']:.3f} | {r['n']} |" for r in peer["rows"]]
        v = fid["vae"]
        lines += ["", f"LiteVAE on {v['num_images']} test images: rFID {v['rfid']:.3f}, PSNR {v['psnr']:.2f} dB, SSIM {v['ssim']:.4f}"]
    seconds = load(folder, "stage_seconds.json")
    if seconds:
        lines += ["", "## Stage durations (ci/run.sh)", "", "| stage | seconds |", "| --- | --- |"]
        total = seconds.pop("total", None)  # the whole ci/run.sh, its untimed set-up steps included
        lines += [f"| {name} | {s} |" for name, s in seconds.items()] + [f"| all timed stages | {sum(seconds.values())} |"]
        lines += [f"| the whole run | {total} |"] if total is not None else []
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("folder")
    p.add_argument("--no-gates", action="store_true", help="check presence and sanity only (quick/CPU runs)")
    args = p.parse_args(argv)
    folder = Path(args.folder)
    results = evaluate_gates(folder, _common.gates(), not args.no_gates) + check_sha256sums(_common.ROOT)
    (folder / "report.md").write_text(report(folder, results))
    failed = [name for name, ok, _ in results if ok is False]
    for name, ok, detail in results:
        print(f"{'n/a ' if ok is None else 'PASS' if ok else 'FAIL'}  {name}: {detail}")
    if failed:
        print("failed gates: " + ", ".join(failed))
        return 1
    checked = [name for name, ok, _ in results if ok is not None and not name.startswith("sha256")]
    if args.no_gates or not checked:
        why = "--no-gates: presence and sanity only" if args.no_gates else "none applies to a quick or CPU run"
        print(f"no gates checked ({why}); {sum(ok is True for _, ok, _ in results)} checks passed; report: "
              f"{folder / 'report.md'}")
    else:
        print(f"all gates passed; report: {folder / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
