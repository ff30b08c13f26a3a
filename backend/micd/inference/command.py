"""`micd predict`: segment one image, a DICOM series folder, or a folder of images with a model folder."""

from __future__ import annotations

import argparse
import os
import sys
import time

from micd.contract import EXIT_DATA, EXIT_OK
from micd.inference.cli_common import CommandIO, Reporter, add_window_arguments, check_window_arguments

DESCRIPTION = """Segment images with a trained model folder. The two students' softmax probabilities are averaged
(Gaussian-blended sliding windows, ROI = the training patch), the argmax is taken on the network grid and resampled
(nearest neighbour) back onto the input's exact size, spacing, origin and direction.
Output format from the --output suffix (.nii.gz, .nii, .nrrd, .mha, or Slicer .seg.nrrd with the model's segment
names and colours) or from --format when --output is a folder.
--uncertainty writes the normalised predictive entropy of the ensemble mean, H(p)/ln(C), a float map in [0, 1]
(0 = certain). stdout: JSON lines per case: "plan" (device, buffer placement, dtype, slabs, windows, precision),
"progress" (windows_done/windows_total, fraction, elapsed_s, eta_s; image i of images; about every 0.5 s and at
100 %), then "prediction"; a final "done"; on failure an "error" event (kind, message, hint).
--progress: where stdout is a terminal (auto), a bar of each image's windows on stderr and a one-line summary per
image and at the end instead of the JSON lines; elsewhere (a pipe, a file) the JSON lines.
Exit codes: 0 done, 2 bad model folder, input, options or device (one-line error on stderr), 1 other failure."""

REPORT = Reporter("micd predict")


def register(sub) -> None:
    p = sub.add_parser("predict", help="segment images with a model folder", description=DESCRIPTION)
    p.add_argument("--model", required=True, help="model folder (model.json + weights.safetensors)")
    p.add_argument("--input", required=True, help="image file, DICOM series folder, or folder of image files")
    p.add_argument("--output", required=True, help="output file (single input) or folder (folder input)")
    p.add_argument("--format", choices=["nii.gz", "nii", "nrrd", "mha", "seg.nrrd"],
                   help="output format when --output is a folder (default: the input's, else nii.gz)")
    p.add_argument("--branches", default="students",
                   help="networks to average: students (default), teachers (when stored), student_a, student_b, "
                        "or a comma list of branch names")
    p.add_argument("--uncertainty", metavar="PATH",
                   help="also write the normalised predictive entropy map (file, or folder for folder inputs)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace output files that already exist (default: refuse before segmenting anything, so "
                        "that a label file is never replaced by mistake)")
    p.add_argument("--progress", choices=["auto", "jsonl", "bar"], default="auto",
                   help="jsonl: the JSON event lines on stdout (and a bar of the images on stderr for a folder); bar: "
                        "a bar of each image's windows on stderr and one summary line per image on stdout; auto "
                        "(default): bar when stdout is a terminal, else jsonl (`micd serve` always sends events)")
    add_window_arguments(p)
    p.set_defaults(func=run)


def shows_bar(args: argparse.Namespace) -> bool:
    """--progress bar, or auto with stdout on a terminal: people get a bar and summaries; programs get JSON lines."""
    mode = getattr(args, "progress", "auto")
    if mode == "auto":
        isatty = getattr(sys.stdout, "isatty", None)
        return bool(isatty and isatty())
    return mode == "bar"


class TerminalReport(Reporter):
    """`micd predict` for a person (--progress bar): the events drawn as a tqdm bar of the current image's windows on
    stderr, a summary line per image and one at the end on stdout; warnings and failures as one line on stderr, as
    with JSON lines. Nothing JSON is printed."""

    def __init__(self, program: str):
        super().__init__(program)
        self.bar = None
        self.order: dict = {}  # input -> its number, for "[2/5]"

    def images(self, inputs) -> None:
        self.order = {inp: i for i, inp in enumerate(inputs, 1)}

    def _name(self, inp: str) -> str:
        n = len(self.order)
        return (f"[{self.order[inp]}/{n}] " if n > 1 and inp in self.order else "") + os.path.basename(inp)

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _line(self, text: str, file) -> None:
        from tqdm import tqdm

        tqdm.write(text, file=file)  # clears and redraws the bar around the line

    def emit(self, record: dict, bar=None) -> None:
        kind = record.get("event")
        if kind == "plan":
            from tqdm import tqdm

            self._close()
            self.bar = tqdm(total=record.get("windows") or 1, desc=self._name(record.get("input", "")),
                            unit="window", file=sys.stderr, leave=False, dynamic_ncols=True)
            self.bar.set_postfix_str(f"{record.get('device', '')}, {record.get('precision', '')}", refresh=True)
        elif kind == "progress" and self.bar is not None:
            self.bar.n = int(record.get("windows_done", 0))
            self.bar.refresh()
        elif kind == "prediction":
            self._close()
            found = record.get("labels_found") or []
            text = (f"{self._name(record['input'])} -> {record['output']}: "
                    + (f"labels {', '.join(map(str, found))}" if found else "no labels found")
                    + f" ({record.get('seconds', 0):.1f} s)")
            if record.get("uncertainty"):
                text += f"; uncertainty {record['uncertainty']}"
            self._line(text, sys.stdout)
        elif kind == "done":
            self._close()
            images, failed = record.get("images", 0), record.get("failed") or []
            text = (f"{self.program}: {images} image{'s' if images != 1 else ''} segmented in "
                    f"{record.get('seconds', 0):.1f} s")
            if failed:
                text += f"; {len(failed)} failed: " + ", ".join(failed)
            self._line(text, sys.stdout)
        elif kind == "error":
            self._close()  # the message is on stderr already (fail)

    def warn(self, message: str, bar=None) -> None:
        self._line(f"{self.program}: warning: {message}", sys.stderr)

    def error_line(self, message: str, bar=None) -> None:
        self._close()
        self._line(f"{self.program}: error: {message}", sys.stderr)

    def fail(self, message: str, hint: str = "", kind: str = "data", code: int = EXIT_DATA) -> int:
        self._close()  # the error line below the bar, not through it
        return super().fail(message, hint, kind, code)


def run(args: argparse.Namespace, io: "CommandIO | None" = None) -> int:
    """`micd predict` (io: how events and models reach the caller; `micd serve` passes its own)."""
    from tqdm import tqdm

    from micd.data.io import ImageReadError, read_image, write_image, write_label
    from micd.inference.branches import BranchError, branch_names
    from micd.inference.outputs import OutputError, plan_outputs, uncertainty_path
    from micd.inference.predictor import PredictOptions, predict_image
    from micd.inference.progress import PredictionCancelled
    from micd.model_package import ModelPackageError
    from micd.training.devices import DeviceError, resolve_device

    terminal = io is None and shows_bar(args)  # `micd serve` passes its io: always events
    io = io or CommandIO.terminal(TerminalReport(REPORT.program) if terminal else REPORT)
    report = io.report
    problem = check_window_arguments(args)
    if problem:
        return report.fail(problem)
    try:
        resolve_device(args.device)
        package = io.load_model(args.model)
        branch_names(package, args.branches)
        pairs, problems = plan_outputs(args.input, args.output, args.format)
        if not pairs:
            return report.fail("; ".join(problems) or f"--input {args.input}: no images found")
        unc = {o: uncertainty_path(args.uncertainty, o, len(pairs) if os.path.isdir(args.input) else 1)
               for _, o in pairs} if args.uncertainty else {}
    except (ModelPackageError, DeviceError, BranchError, OutputError) as e:
        return report.fail(str(e))
    taken = [f for _, o in pairs for f in (o, unc.get(o)) if f and os.path.lexists(f)]
    if taken and not args.overwrite:
        return report.fail(f"{taken[0]} already exists ({len(taken)} of the output files)",
                           "pass --overwrite to replace them, or choose another --output")
    if terminal:
        report.images([inp for inp, _ in pairs])
    for p in problems:
        report.warn(p)

    opts = PredictOptions(branches=args.branches, tta=args.tta, device=args.device, uncertainty=bool(unc),
                          overlap=args.overlap, sw_batch_size=args.sw_batch_size, max_buffer_gib=args.max_buffer_gb, amp=args.amp)
    many = len(pairs) > 1
    bar = tqdm(pairs, desc="micd predict", unit="image", file=sys.stderr, disable=not (many and io.bars) or terminal)
    failed = []
    t0 = time.time()
    for index, (inp, out) in enumerate(bar, 1):
        def log(info, inp=inp):
            report.emit({"event": "plan", "input": inp, **info}, bar if many else None)

        def progress(state, inp=inp, index=index):
            report.emit({"event": "progress", "input": inp, "image": index, "images": len(pairs), **state},
                        bar if many else None)
        try:
            image = read_image(inp)
            pred = predict_image(image, package, opts, log, progress, io.should_stop)
            write_label(pred.labels, out, package.labels, package.colors)
            if pred.uncertainty is not None:
                write_image(pred.uncertainty, unc[out])
        except (ImageReadError, OSError) as e:
            if not many:
                from micd.diskfull import is_disk_full
                disk = isinstance(e, OSError) and is_disk_full(e)
                return report.fail(f"{inp}: {e}", "free space on that disk, or write --output elsewhere" if disk
                                   else "", "disk" if disk else "data")
            failed.append(inp)
            report.error_line(f"{inp}: {e}", bar if many else None)
            continue
        except PredictionCancelled:
            return io.cancelled(inp)
        except (RuntimeError, MemoryError) as e:
            from micd.training.devices import is_oom
            if is_oom(e) or isinstance(e, MemoryError):
                return report.out_of_memory(inp, e)
            raise
        report.emit({"event": "prediction", "input": inp, "output": out, "uncertainty": unc.get(out),
                     "labels_found": pred.info["labels_found"], "seconds": pred.info["seconds"]},
                    bar if many else None)
    report.emit({"event": "done", "images": len(pairs) - len(failed), "failed": failed,
                 "seconds": round(time.time() - t0, 2)})
    return EXIT_DATA if failed else EXIT_OK
