"""Has supervised training plateaued at the SSL benchmark's iteration count, or does MICD's gain only reflect a
supervised baseline that was stopped too early?

For each seed of a preset of `ssl_benchmark.py`, supervised training at one labeled count (default the smallest) is
run again with `factor` times the iterations and nothing else changed (same labeled cases, patches, network,
validation cases and best-checkpoint selection; the learning-rate schedule stretches with the count, as it would for
a user who trains longer), then scored on the same test cases. Reported per seed: the test Dice at 1x (the benchmark's own record) and
at `factor`x, the validation curve of the long run, and over test cases x seeds the paired differences supervised
(factor x) - supervised (1x) and MICD (1x) - supervised (factor x), as in the benchmark (mean, 95 % t interval, n).

Runs are recorded in RESULTS/<preset>-plateau/runs-x<factor>/*.json and skipped when the script is started again;
the summary goes to RESULTS/<preset>-plateau/plateau-L<labeled>-x<factor>.{json,md}. The preprocessing cache of the benchmark's
work folder is shared (same preprocessing), the training runs are not. `--method supervised-micd-weights` does the
same for supervised with MICD's class weights (summary plateau-supervised-micd-weights-L<labeled>-x<factor>.*).
`--method micd` trains MICD `factor` times longer too (summary plateau-micd-L<labeled>-x<factor>.*): then every
summary also compares MICD with the baseline at equal iterations, MICD (factor x) - baseline (factor x).

Preset cpu, factor 3: 3000 iterations, about 11 min per seed on 2 cores alone (with bf16 autocast); MICD about
55 min per seed on an AVX2-only CPU (float32).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from micd.cli import tolerant_console  # noqa: E402
from ssl_benchmark import PRESETS, ROOT, VARIANTS, cpu_kind, paired, run_one, seed_means  # noqa: E402

# supervised and its variants (supervised-micd-weights: is a stronger baseline still below MICD when trained longer?)
BASELINES = ["supervised"] + [v for v, (base, _) in VARIANTS.items() if base == "supervised"]
METHODS = BASELINES + ["micd"]  # micd: the equal-iteration comparison at factor x


def summarize(base: list, long: list, micd: list, factor: int, iterations: int, method: str = "supervised",
              equal: "dict[str, list] | None" = None) -> dict:
    """`equal`: MICD's and the baselines' factor-x runs by name, for the equal-iteration differences MICD - baseline."""
    equal = equal or {}
    seeds = {r["seed"] for r in long}
    base, micd = [r for r in base if r["seed"] in seeds], [r for r in micd if r["seed"] in seeds]  # paired by seed
    by_seed = {r["seed"]: r for r in base}
    rows = []
    for r in sorted(long, key=lambda r: r["seed"]):
        b = by_seed.get(r["seed"])
        rows.append({"seed": r["seed"], "dice_1x": seed_means([b])[0] if b else None,
                     "dice_1x_last": seed_means([b], "evaluation_last")[0] if b and b.get("evaluation_last") else None,
                     "dice_long": seed_means([r])[0],
                     "dice_long_last": seed_means([r], "evaluation_last")[0] if r.get("evaluation_last") else None,
                     "foreground_ratio_long": r["foreground_ratio"], "validation_curve_long": r["validation_curve"],
                     "validation_curve_1x": b["validation_curve"] if b else None,
                     "train_wall_s": r["train_wall_s"], "train_cpu_s": r["train_cpu_s"]})
    return {"method": method, "factor": factor, "iterations_1x": iterations, "iterations_long": iterations * factor,
            "rows": rows,
            "long_minus_1x": paired(long, base),
            "micd_1x_minus_long": paired(micd, long) if method != "micd" else None,
            # None where MICD's long runs are not recorded (yet): the report says n/a rather than drop the line
            "micd_long_minus_long": {b: paired(equal.get("micd", []), runs) for b, runs in sorted(equal.items())
                                     if b != "micd" and runs},
            "cpu_flags_by_group": {
                f"{method} {iterations * factor}": flags_of(long), f"{method} {iterations}": flags_of(base),
                **({} if method == "micd" else {f"MICD {iterations}": flags_of(micd)}),
                **{f"{'MICD' if b == 'micd' else b} {iterations * factor}": flags_of(runs)
                   for b, runs in sorted(equal.items()) if b != method and runs}}}


def flags_of(runs: list) -> list:
    """The CPU kinds (autocast-relevant flags) the runs trained on, as recorded by each run, not by this machine:
    the same seed trains differently on AMX and on AVX512-BF16 CPUs."""
    return sorted({cpu_kind(r.get("cpu_flags")) or "not recorded" for r in runs})


def machines(s: dict) -> str:
    groups = s["cpu_flags_by_group"]
    kinds = {k for flags in groups.values() for k in flags}
    if len(kinds) == 1:
        return f"CPU flags (every run): {next(iter(kinds))}."
    return ("The compared runs trained on CPUs of different kinds, so the differences above include the machine's "
            "effect: " + "; ".join(f"{g}: {' | '.join(f)}" for g, f in groups.items() if f) + ".")


def markdown(s: dict, preset: str, k: int) -> str:
    def ci(p):
        return f"{p['mean']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}] (n={p['n']})" if p else "n/a"

    def f(x):
        return "" if x is None else f"{x:.3f}"

    it1, itl, m = s["iterations_1x"], s["iterations_long"], s.get("method", "supervised")
    title = "MICD trained longer" if m == "micd" else "Supervised plateau check"
    lines = [f"# {title}, preset `{preset}`" + ("" if m in ("supervised", "micd") else f", `{m}`"), "",
             ("Supervised" if m == "supervised" else f"`{m}`") + f" at {k} labeled cases trained for {itl} "
             f"iterations ({s['factor']}x the benchmark's {it1}), "
             "everything else as in `ssl_benchmark.py`; test Dice (mean over the test cases) from the weights the "
             "validation picked, \"last\": the last weights. Generated by `benchmarks/plateau.py`; do not edit by "
             "hand.", "",
             f"| seed | {m} {it1} | last | {m} {itl} | last | fg ratio {itl} | train wall s | "
             "train CPU s |", "|---|---|---|---|---|---|---|---|"]
    for r in s["rows"]:
        lines.append(f"| {r['seed']} | {f(r['dice_1x'])} | {f(r['dice_1x_last'])} | {f(r['dice_long'])} | "
                     f"{f(r['dice_long_last'])} | {r['foreground_ratio_long']:.2f} | {r['train_wall_s'] or 0:.0f} | "
                     f"{r['train_cpu_s'] or 0:.0f} |")
    lines += ["", f"- {m} {itl} - {m} {it1}: {ci(s['long_minus_1x'])}"]
    if m != "micd":
        lines.append(f"- MICD {it1} - {m} {itl}: {ci(s['micd_1x_minus_long'])}")
    for b, p in s.get("micd_long_minus_long", {}).items():
        lines.append(f"- MICD {itl} - {b} {itl} (equal iterations): {ci(p)}")
    lines += ["", machines(s), "", f"Validation Dice of the {itl}-iteration runs:", ""]
    for r in s["rows"]:
        curve = ", ".join(f"{i}: {d:.3f}" for i, d in r["validation_curve_long"])
        lines.append(f"- seed {r['seed']}: {curve}")
    return "\n".join(lines) + "\n"


def main() -> None:
    tolerant_console()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    ap.add_argument("--factor", type=int, default=3, help="iterations = factor x the preset's (default 3)")
    ap.add_argument("--labeled", type=int, help="labeled cases (default: the preset's smallest count)")
    ap.add_argument("--seeds", type=int, nargs="+", help="seeds to run (default: the preset's)")
    ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared"))
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    ap.add_argument("--work", default=os.path.join(HERE, "runs"), help="training runs, predictions (not committed)")
    ap.add_argument("--method", default="supervised", choices=METHODS,
                    help="the method to train longer (default supervised; micd for equal-iteration comparisons)")
    ap.add_argument("--report", action="store_true", help="only rebuild the summary from recorded runs")
    a = ap.parse_args()
    if a.factor < 2:
        ap.error("--factor must be at least 2")
    cfg = dict(PRESETS[a.preset])
    k, iterations = a.labeled or min(cfg["labeled"]), cfg["iterations"]
    if k not in cfg["labeled"]:
        ap.error(f"--labeled {k}: the preset {a.preset} has runs at {cfg['labeled']} labeled cases")
    split = json.load(open(os.path.join(HERE, "splits", "hippocampus.json")))
    hip = os.path.abspath(os.path.join(a.shared, "data", "hippocampus"))
    base_runs = os.path.join(a.results, a.preset, "runs")
    out = os.path.join(a.results, f"{a.preset}-plateau")
    runs_dir = os.path.join(out, f"runs-x{a.factor}")
    if not a.report:
        os.makedirs(runs_dir, exist_ok=True)
        work = os.path.join(a.work, f"{a.preset}-plateau-x{a.factor}")
        os.makedirs(work, exist_ok=True)
        shared_cache, cache = os.path.join(a.work, a.preset, "cache"), os.path.join(work, "cache")
        if os.path.isdir(shared_cache) and not os.path.lexists(cache):
            os.symlink(shared_cache, cache)  # the benchmark's preprocessing, not recomputed
        long_cfg = dict(cfg, iterations=iterations * a.factor)
        for seed in a.seeds or cfg["seeds"]:
            r = run_one(a.method, k, seed, long_cfg, split, hip, work, runs_dir, f"{a.preset}-x{a.factor}")
            print(f"{a.method} L{k} s{seed} x{a.factor}: recorded ({r['train_wall_s'] or 0:.0f} s wall)", flush=True)

    def load(folder, prefix):
        return [json.load(open(os.path.join(folder, n))) for n in sorted(os.listdir(folder))
                if n.startswith(prefix) and n.endswith(".json")] if os.path.isdir(folder) else []

    long = load(runs_dir, f"{a.method}-L{k}-")
    if not long:
        sys.exit(f"no {a.method} runs at {k} labeled in {runs_dir}: run without --report first")
    # equal iterations: MICD's long runs against this baseline's, or (for micd) against every baseline's
    equal = {b: load(runs_dir, f"{b}-L{k}-") for b in (BASELINES if a.method == "micd" else [a.method])}
    equal["micd"] = load(runs_dir, f"micd-L{k}-")
    summary = summarize(load(base_runs, f"{a.method}-L{k}-"), long, load(base_runs, f"micd-L{k}-"), a.factor,
                        iterations, a.method, equal)
    summary.update(preset=a.preset, labeled=k, finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    name = f"plateau-L{k}-x{a.factor}" if a.method == "supervised" else f"plateau-{a.method}-L{k}-x{a.factor}"
    json.dump(summary, open(os.path.join(out, f"{name}.json"), "w", encoding="utf-8"), indent=1)
    text = markdown(summary, a.preset, k)
    with open(os.path.join(out, f"{name}.md"), "w", encoding="utf-8") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
