"""`micd info MODEL_DIR`: what a model folder is (labels, method, provenance, metrics), without loading weights."""

from __future__ import annotations

import argparse
import json
import os
import sys


def register(sub) -> None:
    p = sub.add_parser("info", help="describe a model folder",
                       description="Print a model folder's labels, method, network, training provenance and "
                                   "validation metrics. Exit code 2 when the folder is not a valid model.")
    p.add_argument("model", metavar="MODEL_DIR", help="model folder (model.json + weights.safetensors)")
    p.add_argument("--json", action="store_true", help="print model.json as JSON instead of text")
    p.add_argument("--check", action="store_true",
                   help="also load the weights exactly as `micd predict` does (every declared branch against the "
                        "declared network) and only answer whether the folder can run: exit 0 and {\"ok\": true, "
                        "...} with --json, or exit 2 and the reason (the Slicer model list and zip import use this)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from micd.model_package import WEIGHTS_FILE, ModelPackageError, read_model_json

    if args.check:
        return check(args.model, args.json)
    try:
        meta = read_model_json(args.model)
    except ModelPackageError as e:
        print(f"micd info: error: {e}", file=sys.stderr)
        return 2
    wf = os.path.join(args.model, WEIGHTS_FILE)
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    print("\n".join(describe(meta, os.path.getsize(wf) if os.path.isfile(wf) else None)))
    return 0


def check(model_dir: str, as_json: bool) -> int:
    """`micd info --check`: the checks of `micd predict` (load_model_package), as an exit code and one line."""
    from micd.model_package import ModelPackageError, load_model_package

    try:
        package = load_model_package(model_dir)
    except ModelPackageError as e:
        if as_json:
            print(json.dumps({"ok": False, "model": model_dir, "error": str(e)}))
        print(f"micd info: error: {e}", file=sys.stderr)
        return 2
    record = {"ok": True, "model": package.path, "branches": list(package.networks),
              "labels": package.meta["labels"]}
    print(json.dumps(record) if as_json else f"{package.path}: ok ({', '.join(package.networks)})")
    return 0


def describe(meta: dict, weights_bytes=None) -> list:
    """Human-readable lines for a model.json dict."""
    net, prov, metrics = meta.get("network", {}), meta.get("provenance") or {}, meta.get("metrics") or {}
    colors = meta.get("colors") or {}
    lines = [f"model: {meta.get('name', '?')} (micd-model schema {meta.get('schema_version')})",
             f"method: {meta.get('method', '?')}",
             f"network: {net.get('architecture')} filters={net.get('filters')} in={net.get('in_channels')} "
             f"out={net.get('out_channels')} norm={net.get('normalization')}",
             f"output channel -> label value: {meta.get('channels') or 'channel k is value k'}",
             f"branches: {', '.join(meta.get('branches', []))} (default ensemble: "
             f"{', '.join(meta.get('default_ensemble') or [])})",
             f"patch size (D, H, W): {meta.get('patch_size')}",
             f"preprocessing: {json.dumps(meta.get('preprocessing'))}",
             "weights: " + (f"{weights_bytes / 1e6:.1f} MB" if weights_bytes is not None else "MISSING"),
             "labels:"]
    for k, v in sorted(meta.get("labels", {}).items(), key=lambda kv: int(kv[0])):
        c = colors.get(k)
        lines.append(f"  {k}: {v}" + (f"  colour {' '.join(f'{x:.2f}' for x in c)}" if c else ""))
    lines.append("provenance:")
    lines += [f"  {k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in prov.items()] or ["  (none)"]
    lines.append("metrics:")
    lines += [f"  {k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in metrics.items()] or ["  (none)"]
    if meta.get("weights_from"):
        lines.append(f"weights from: {meta['weights_from']}")
    return lines
