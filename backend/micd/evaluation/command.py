"""`micd evaluate`: Dice, HD95 and ASD per case and label, with summaries, as JSON + CSV + Markdown."""

from __future__ import annotations

import argparse
import os
import sys

DESCRIPTION = """Compare predicted label maps with reference label maps (two files, or two folders matched by case
name: every prediction needs a reference; extra references are ignored). Per case and label: Dice, 95% Hausdorff
distance and average symmetric surface distance in mm (MONAI, with the voxel spacing); then mean and std per label
and overall. Empty masks: both empty -> Dice 1, distances 0; only one empty -> Dice 0, distances null (undefined,
left out of the distance means and counted). Prediction and reference must share one grid. Existing report files
are not replaced without --overwrite (checked before evaluating). Exit code 2 on bad input (one-line error)."""


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="Dice / HD95 / ASD of predictions against references",
                       description=DESCRIPTION)
    p.add_argument("--pred", required=True, help="predicted label file or folder")
    p.add_argument("--label", required=True, help="reference label file or folder")
    p.add_argument("--json", required=True, metavar="OUT.json", help="full result (per case, per label, summaries)")
    p.add_argument("--csv", metavar="OUT.csv", help="CSV table (default: next to the JSON)")
    p.add_argument("--markdown", metavar="OUT.md", help="Markdown summary table (default: next to the JSON)")
    p.add_argument("--labels", metavar="FILE_OR_MODEL_DIR",
                   help="label names: a model folder, model.json, dataset.json or {\"1\": \"name\"} JSON; without "
                        "it every non-zero value found is evaluated")
    p.add_argument("--overwrite", action="store_true", help="replace report files that already exist")
    p.set_defaults(func=run)


def _output_problem(paths, overwrite: bool) -> str:
    """Why the report cannot be written to `paths` (checked before the evaluation, which can take long), or ''."""
    for path in paths:
        if os.path.isdir(path):
            return f"{path} is a folder; give a file name (--json OUT.json, --csv OUT.csv, --markdown OUT.md)"
    taken = [p for p in paths if os.path.lexists(p)]
    if taken and not overwrite:
        return f"{taken[0]} already exists; pass --overwrite to replace the report, or choose another --json"
    for folder in {os.path.dirname(os.path.abspath(p)) for p in paths}:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            return f"cannot create the folder {folder} for the report ({e.strerror or e})"
        if not os.access(folder, os.W_OK):
            return f"cannot write the report into {folder} (no write permission); choose another --json"
    return ""


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from micd.data.io import ImageReadError
    from micd.evaluation.evaluate import evaluate_pairs
    from micd.evaluation.metrics import GridMismatchError
    from micd.evaluation.pairing import PairingError, pair_cases, read_label_names
    from micd.atomicfile import write_json
    from micd.evaluation.report import markdown, write_csv, write_markdown

    stem = args.json[:-5] if args.json.lower().endswith(".json") else args.json
    csv_path, md_path = args.csv or stem + ".csv", args.markdown or stem + ".md"
    problem = _output_problem([args.json, csv_path, md_path], args.overwrite)
    if problem:
        print(f"micd evaluate: error: {problem}", file=sys.stderr)
        return 2
    try:
        names = read_label_names(args.labels)
        pairs = pair_cases(args.pred, args.label)
        bar = (lambda it: tqdm(it, desc="micd evaluate", unit="case", file=sys.stderr)) if len(pairs) > 1 else None
        result = evaluate_pairs(pairs, names, bar)
    except (PairingError, GridMismatchError, ImageReadError) as e:
        print(f"micd evaluate: error: {e}", file=sys.stderr)
        return 2
    try:
        write_json(args.json, result)  # the full record
        write_csv(result, csv_path)
        write_markdown(result, md_path)
    except OSError as e:
        print(f"micd evaluate: error: writing the report failed ({e}); free space or choose another --json",
              file=sys.stderr)
        return 1
    enc = sys.stdout.encoding or "utf-8"  # a C-locale pipe cannot print the ± sign
    sys.stdout.write(markdown(result).encode(enc, "replace").decode(enc))
    print(f"wrote {args.json}, {csv_path}, {md_path}")
    return 0
