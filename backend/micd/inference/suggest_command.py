"""`micd suggest`: rank unlabeled volumes by how unsure a model is about them, to choose what to label next."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from micd.contract import EXIT_DATA, EXIT_OK
from micd.inference.cli_common import CommandIO, Reporter, add_window_arguments, check_window_arguments
from micd.atomicfile import write_json

DESCRIPTION = """Rank unlabeled volumes by how unsure a trained model is about them, to choose what to label next.
Each volume is predicted once, as `micd predict` does (same preprocessing, Gaussian-blended sliding windows,
memory plan), keeping both students' probabilities. Score, on the network grid, over the predicted foreground F
(voxels where the ensemble or either student predicts a foreground label): disagreement = mean over F of the
total-variation distance 1/2 sum_c |p_A,c - p_B,c| between the two students' softmax; entropy = mean over F of
H(p)/ln C of the ensemble mean p = (p_A + p_B)/2; score = (disagreement + entropy)/2, in [0, 1], higher = label
it first (no predicted foreground: score 1). Per label the same means over the voxels any of the three predicts as
that label, the predicted voxel count and the two students' Dice. Ties are broken by file path; the same model and
input give the same ranking on the same device and memory plan (recorded per volume; fixed by --max-buffer-gb).
stdout: JSON lines per volume: "plan", "progress" (windows_done/windows_total, fraction, eta_s; image i of
images; as micd predict), "scored" (index, total, score, its parts); then "done" with the ranking (or an "error" event: kind,
message, hint). The ranking table goes to stderr. --json FILE: {"ranking": [{"rank", "file", "case", "score", "disagreement", "entropy",
"foreground_voxels", "labels_found", "least_certain_label", "labels": {"1": {"name", "predicted_voxels",
"disagreement", "entropy", "score", "student_dice"}}, "plan": {"device", "buffer_device", "dtype", "n_slabs",
"sw_batch_size", "precision"}, "prediction"}], "failed", "model", "score_definition", ...}.
Exit codes: 0 done, 2 bad model, input, options or device, or a volume could not be read (one-line error on
stderr), 1 other failure."""

FORMAT = "micd-suggest"
REPORT = Reporter("micd suggest")


def register(sub) -> None:
    p = sub.add_parser("suggest", help="rank unlabeled volumes: which to label next", description=DESCRIPTION)
    p.add_argument("--model", required=True, help="model folder (model.json + weights.safetensors)")
    p.add_argument("--input", required=True, nargs="+", metavar="FOLDER_OR_FILE",
                   help="image files, folders of images, DICOM series folders or globs (the unlabeled volumes)")
    p.add_argument("--top", type=int, default=None, metavar="K",
                   help="keep the K highest-scoring volumes in the table and the JSON (default: all)")
    p.add_argument("--json", metavar="FILE", help="write the ranking as JSON (replaces only an earlier micd "
                   "suggest file)")
    p.add_argument("--predictions", metavar="FOLDER",
                   help="also write each volume's ensemble segmentation as FOLDER/<case>.seg.nrrd (the starting "
                        "point for correcting it); existing files are not replaced")
    add_window_arguments(p)
    p.set_defaults(func=run)


def check_json_target(path: str) -> None:
    """Refuse to replace a file that is not an earlier `micd suggest` output."""
    if os.path.isdir(path):
        raise ValueError(f"--json {path} is a folder; give a file name")
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                ours = json.load(f).get("format") == FORMAT
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise ValueError(f"--json {path} exists and is not a micd suggest file; remove it or choose another name")


def run(args: argparse.Namespace, io: "CommandIO | None" = None) -> int:
    """`micd suggest` (io: how events and models reach the caller; `micd serve` passes its own)."""
    from micd.data.io import ImageReadError, expand_image_sources, read_image, write_label
    from micd.inference.outputs import case_name
    from micd.inference.predictor import PredictOptions
    from micd.inference.suggest import SCORE_DEFINITION, SuggestError, rank, score_image, student_branches
    from micd.inference.progress import PredictionCancelled
    from micd.model_package import ModelPackageError
    from micd.training.devices import DeviceError, is_oom, resolve_device

    io = io or CommandIO.terminal(REPORT)
    report = io.report

    problem = check_window_arguments(args)
    if problem:
        return report.fail(problem)
    if args.top is not None and args.top < 1:
        return report.fail(f"--top {args.top}: must be at least 1")
    try:
        resolve_device(args.device)
        package = io.load_model(args.model)
        student_branches(package)
        if args.json:
            check_json_target(args.json)
    except (ModelPackageError, DeviceError, SuggestError, ValueError) as e:
        return report.fail(str(e))
    paths, problems = expand_image_sources(args.input)
    first: dict = {}
    for p in paths:  # one volume named twice (relative and absolute, or through a link) is ranked once
        first.setdefault(os.path.realpath(p), p)
    paths = list(first.values())
    if not paths:
        return report.fail("; ".join(problems) or "--input: no images found")
    for p in problems:
        report.warn(p)
    preds = {}
    if args.predictions:
        if os.path.isfile(args.predictions):
            return report.fail(f"--predictions {args.predictions} is a file; give a folder")
        preds = {p: os.path.join(args.predictions, case_name(p) + ".seg.nrrd") for p in paths}
        if len(set(preds.values())) < len(preds):
            return report.fail("--predictions: two inputs share a case name; rank them in separate calls")
        taken = [o for o in preds.values() if os.path.exists(o)]
        if taken:
            return report.fail(f"--predictions: {taken[0]} already exists ({len(taken)} file(s))",
                               "remove them or choose another folder")

    opts = PredictOptions(tta=args.tta, device=args.device, overlap=args.overlap, sw_batch_size=args.sw_batch_size,
                          max_buffer_gib=args.max_buffer_gb, amp=args.amp)
    entries, failed = [], []
    t0 = time.time()
    for i, inp in enumerate(paths):
        try:
            image = read_image(inp)
            summary, labels = score_image(
                image, package, opts, lambda info, inp=inp: report.emit({"event": "plan", "input": inp, **info}),
                lambda state, inp=inp, i=i: report.emit({"event": "progress", "input": inp, "image": i + 1,
                                                   "images": len(paths), **state}), io.should_stop)
            if inp in preds:
                os.makedirs(args.predictions, exist_ok=True)
                write_label(labels, preds[inp], package.labels, package.colors)
        except (ImageReadError, OSError) as e:
            failed.append(inp)
            report.error_line(f"{inp}: {e}")
            continue
        except PredictionCancelled:
            return io.cancelled(inp)
        except (RuntimeError, MemoryError) as e:
            if is_oom(e) or isinstance(e, MemoryError):
                return report.out_of_memory(inp, e)
            raise
        seconds = summary.pop("seconds")
        entry = {"file": os.path.abspath(inp), "case": case_name(inp), **summary, "prediction": preds.get(inp)}
        entries.append(entry)
        report.emit({"event": "scored", "input": inp, "index": i + 1, "total": len(paths), "score": entry["score"],
               "disagreement": entry["disagreement"], "entropy": entry["entropy"],
               "labels_found": entry["labels_found"], "prediction": entry["prediction"], "seconds": seconds})
    ranking = rank(entries)[: args.top] if args.top else rank(entries)
    result = {"ranking": ranking, "format": FORMAT, "schema_version": 1, "model": package.path,
              "model_name": package.meta.get("name"), "labels": {str(k): v for k, v in package.labels.items()},
              "score_definition": SCORE_DEFINITION, "volumes": len(entries), "failed": failed,
              "options": {"tta": bool(args.tta), "overlap": args.overlap, "top": args.top, "amp": args.amp}}
    if args.json:
        folder = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(folder, exist_ok=True)
        write_json(args.json, result, indent=1)
    print(table(ranking, package.labels), file=sys.stderr)
    report.emit({"event": "done", "images": len(entries), "failed": failed, "json": args.json,
           "ranking": [{"rank": e["rank"], "file": e["file"], "score": e["score"]} for e in ranking],
           "seconds": round(time.time() - t0, 2)})
    return EXIT_DATA if failed else EXIT_OK


def table(ranking: list, names: dict) -> str:
    """The ranking as text: rank, score, its two parts, the least certain label, the case."""
    f = lambda v: "    -" if v is None else f"{v:.3f}"
    width = max([4] + [len(e["case"]) for e in ranking])
    lines = [f"rank  score  disagr.  entropy  {'case':{width}s}  least certain label"]
    for e in ranking:
        lab = e["least_certain_label"]
        lines.append(f"{e['rank']:>4}  {f(e['score'])}  {f(e['disagreement']):>7}  {f(e['entropy']):>7}  "
                     f"{e['case']:{width}s}  {names.get(lab, '-') if lab else '-'}")
    return "\n".join(lines)
