"""The annotation loop on the shared hippocampus data: does `micd suggest` pick better volumes to label than chance,
and does `micd train --init-from` reach a cold start's validation Dice in fewer iterations?

Loop (part `loop`), per seed: round 0 trains on 2 labeled cases drawn (by the seed) from the first 5 of the split's
labeled pool; each later round adds 2 cases from the candidate volumes (the first `candidates` of the split's 200
unlabeled cases) and trains again, either the 2 that `micd suggest --top 2` ranks highest with the previous round's
model ("suggest") or 2 drawn at random ("random"); the label files of the added cases stand in for the clinician's
annotation. Candidates not yet labeled are the run's unlabeled set. Every model is trained with the same method,
network, patch, iterations and seed (a cold start each round, unless the preset says `warm`: --init-from the
previous round's model), validated on the pool's last 5 cases (the best weights are kept, as micd train does), and
scored with `micd predict` + `micd evaluate` on the split's 50 test cases. Round 0 is shared by both strategies.

Warm against cold (part `warm`), per seed: the round-0 model is the parent; 2 random candidates are added; the same
run is trained from scratch and with --init-from the parent (same iterations, schedule and seed), validating every
`warm_validate_every` iterations. Reported: the cold run's best validation Dice and its iteration, and the first
iteration at which the warm run's validation Dice reaches it (None: never within the run).

Every finished step is recorded at once in RESULTS/annotation-<preset>/runs/*.json and skipped when the script is
started again (training resumes from its checkpoint), so the benchmark can run in the background and survive
interruption. The summary goes to RESULTS/annotation-<preset>.{json,md}; `--report` only rebuilds it.

Presets:
  cpu    3 seeds x 3 rounds x {suggest, random}, MICD, 1000 iterations, width 8, patch 32x48x32, 40 candidates;
         warm vs cold on every seed (1000 iterations, validation every 50): about 5 h on 2 cores alone
  smoke  1 seed, 1 round, 20 iterations at width 4, 6 candidates, 4 test cases: the script end to end (not a result)
  gpu    3 seeds x 3 rounds, width 32, 6000 iterations, patch 32x64x48, all 200 candidates
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Optional

import numpy as np

from micd.cli import tolerant_console

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from ssl_benchmark import LABEL_NAMES, ROOT, case_mean_dice, link_folder, machine, micd, per_case_scores  # noqa: E402

STRATEGIES = ["suggest", "random"]
PRESETS = {
    "cpu": dict(seeds=[0, 1, 2], rounds=3, start=2, add=2, candidates=40, method="micd", iterations=1000, filters=8,
                patch=[32, 48, 32], device="cpu", threads=2, validation=5, test=None, warm=False,
                warm_iterations=1000, warm_validate_every=50),
    "smoke": dict(seeds=[0], rounds=1, start=2, add=2, candidates=6, method="micd", iterations=20, filters=4,
                  patch=[16, 32, 16], device="cpu", threads=2, validation=2, test=4, warm=False,
                  warm_iterations=20, warm_validate_every=5),
    "gpu": dict(seeds=[0, 1, 2], rounds=3, start=2, add=2, candidates=200, method="micd", iterations=6000, filters=32,
                patch=[32, 64, 48], device="cuda", threads=0, validation=5, test=None, warm=False,
                warm_iterations=6000, warm_validate_every=250),
}


class Bench:
    def __init__(self, preset: str, cfg: dict, split: dict, hip: str, work: str, runs_dir: str):
        self.preset, self.cfg, self.hip, self.work, self.runs_dir = preset, cfg, hip, work, runs_dir
        pool = split["labeled_pool"]
        self.start_pool = pool[:5]
        self.validation = pool[len(pool) - cfg["validation"]:]
        assert not set(self.start_pool) & set(self.validation), "validation cases must not be training cases"
        self.candidates = split["unlabeled"][: cfg["candidates"]]
        self.test = split["test"][: cfg["test"]] if cfg["test"] else split["test"]
        os.makedirs(work, exist_ok=True)

    img = lambda self, n: os.path.join(self.hip, "imagesTr", n)
    lab = lambda self, n: os.path.join(self.hip, "labelsTr", n)

    def record_path(self, name: str) -> str:
        return os.path.join(self.runs_dir, name + ".json")

    def write_record(self, name: str, result: dict) -> dict:
        path = self.record_path(name)
        tmp = path + ".tmp"
        json.dump(result, open(tmp, "w", encoding="utf-8"), indent=1)
        os.replace(tmp, path)  # recorded at once; a restart skips it
        return result

    def initial(self, seed: int) -> List[str]:
        rng = np.random.default_rng([seed, 2026])
        return sorted(rng.choice(self.start_pool, self.cfg["start"], replace=False).tolist())

    # ---------------------------------------------------------------- one trained and scored model
    def train(self, d: str, labeled: List[str], seed: int, iterations: int, init_from: Optional[str] = None,
              validate_every: int = 0) -> dict:
        """Train (or resume) in d/run on `labeled`; the not-yet-labeled candidates are the unlabeled set."""
        cfg = self.cfg
        os.makedirs(d, exist_ok=True)
        log = os.path.join(d, "log.txt")
        ds = {"labels": LABEL_NAMES, "modality": "MR",
              "labeled": [{"image": self.img(n), "label": self.lab(n)} for n in labeled],
              "unlabeled": [self.img(n) for n in self.candidates if n not in labeled],
              "validation": [{"image": self.img(n), "label": self.lab(n)} for n in self.validation]}
        ds_path = os.path.join(d, "dataset.json")
        json.dump(ds, open(ds_path, "w", encoding="utf-8"), indent=1)
        run = os.path.join(d, "run")
        model = os.path.join(run, "model")
        timing_file = os.path.join(d, "train_timing.json")
        if not os.path.isfile(os.path.join(model, "model.json")):
            resume = ["--resume"] if os.path.isdir(os.path.join(run, "checkpoints")) else []
            t = micd(["train", "--dataset", ds_path, "--out", run, "--method", cfg["method"], "--iterations",
                      str(iterations), "--patch-size", *map(str, cfg["patch"]), "--filters", str(cfg["filters"]),
                      "--device", cfg["device"], "--seed", str(seed), "--checkpoint-every", "250",
                      "--val-fraction", "0", "--cache-dir", os.path.join(self.work, "cache"), "--log-every", "50",
                      "--progress", "none", *(["--validate-every", str(validate_every)] if validate_every else []),
                      *(["--init-from", init_from] if init_from else []), *resume], log, cfg["threads"])
            prev = json.load(open(timing_file)) if os.path.exists(timing_file) else {"wall_s": 0.0, "cpu_s": 0.0}
            json.dump({k: prev[k] + t[k] for k in t}, open(timing_file, "w", encoding="utf-8"))
        events = [json.loads(l) for l in open(os.path.join(run, "events.jsonl")) if l.strip()]
        meta = json.load(open(os.path.join(model, "model.json")))
        return {"model": model, "log": log, "meta": meta,
                "curve": [[e["iter"], round(e["mean_dice"], 4)] for e in events if e["event"] == "validation"],
                "timing": json.load(open(timing_file)) if os.path.exists(timing_file) else None}

    def evaluate(self, d: str, model: str, log: str) -> dict:
        cfg = self.cfg
        test_imgs = link_folder(os.path.join(self.work, "test_images"), {n: self.img(n) for n in self.test})
        test_labs = link_folder(os.path.join(self.work, "test_labels"), {n: self.lab(n) for n in self.test})
        preds = os.path.join(d, "predictions")
        if len(os.listdir(preds) if os.path.isdir(preds) else []) < len(self.test):
            micd(["predict", "--model", model, "--input", test_imgs, "--output", preds, "--device", cfg["device"],
                  "--overwrite"], log, cfg["threads"])  # a partial folder from an interrupted run is ours
        ev_path = os.path.join(d, "evaluation.json")
        if not os.path.exists(ev_path):
            micd(["evaluate", "--pred", preds, "--label", test_labs, "--json", ev_path, "--overwrite", "--labels",
                  model], log, cfg["threads"])
        return json.load(open(ev_path))

    # ---------------------------------------------------------------- choosing the next cases
    def choose(self, strategy: str, seed: int, rnd: int, labeled: List[str], model: str, d: str, log: str) -> dict:
        """The cases added after round `rnd`: `micd suggest --top K` with that round's model, or K at random."""
        k = self.cfg["add"]
        remaining = [n for n in self.candidates if n not in labeled]
        if strategy == "random":
            rng = np.random.default_rng([seed, rnd, 7])
            return {"added": sorted(rng.choice(remaining, k, replace=False).tolist()), "scores": None}
        out = os.path.join(d, f"suggest-{strategy}.json")
        if not os.path.exists(out):
            folder = link_folder(os.path.join(d, "remaining"), {n: self.img(n) for n in remaining})
            micd(["suggest", "--model", model, "--input", folder, "--top", str(k), "--json", out, "--device",
                  self.cfg["device"]], log, self.cfg["threads"])
        ranking = json.load(open(out))["ranking"]
        return {"added": [os.path.basename(e["file"]) for e in ranking],
                "scores": [{"case": e["case"], "score": e["score"], "disagreement": e["disagreement"],
                            "entropy": e["entropy"]} for e in ranking]}

    def round_record(self, strategy: str, seed: int, rnd: int, labeled: List[str], added: dict,
                     parent: Optional[str]) -> dict:
        name = f"{strategy}-s{seed}-r{rnd}" if rnd else f"start-s{seed}-r0"
        if os.path.exists(self.record_path(name)):
            return json.load(open(self.record_path(name)))
        d = os.path.join(self.work, name)
        t = self.train(d, labeled, seed, self.cfg["iterations"], parent if self.cfg["warm"] else None)
        ev = self.evaluate(d, t["model"], t["log"])
        per_case = case_mean_dice(per_case_scores(ev))
        prov = t["meta"]["provenance"]
        return self.write_record(name, {
            "strategy": strategy if rnd else "start", "seed": seed, "round": rnd, "labeled": labeled,
            "added": added.get("added"), "suggest_scores": added.get("scores"), "preset": self.preset,
            "method": self.cfg["method"], "iterations": self.cfg["iterations"], "warm": self.cfg["warm"],
            "model": t["model"], "weights_from": t["meta"].get("weights_from"), "validation_curve": t["curve"],
            "mean_dice": float(np.mean(list(per_case.values()))), "per_case_mean_dice": per_case,
            "label_dice": {lab: float(np.mean([c[lab]["dice"] for c in per_case_scores(ev).values() if lab in c]))
                           for lab in LABEL_NAMES.values()},
            "train_wall_s": prov.get("wall_s"), "train_cpu_s": prov.get("cpu_s"), "process": t["timing"],
            **machine(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def loop(self, seed: int) -> None:
        start = self.initial(seed)
        r0 = self.round_record("start", seed, 0, start, {}, None)
        print(f"seed {seed} round 0: {len(start)} labeled, Dice {r0['mean_dice']:.3f}", flush=True)
        for strategy in STRATEGIES:
            prev, labeled = r0, list(start)
            for rnd in range(1, self.cfg["rounds"] + 1):
                d_prev = os.path.join(self.work, f"start-s{seed}-r0" if rnd == 1 else f"{strategy}-s{seed}-r{rnd - 1}")
                added = self.choose(strategy, seed, rnd - 1, labeled, prev["model"], d_prev,
                                    os.path.join(d_prev, "log.txt"))
                labeled = sorted(labeled + added["added"])
                prev = self.round_record(strategy, seed, rnd, labeled, added, prev["model"])
                print(f"seed {seed} round {rnd} {strategy:8s}: {len(labeled)} labeled (+{', '.join(added['added'])}),"
                      f" Dice {prev['mean_dice']:.3f}", flush=True)

    # ---------------------------------------------------------------- warm against cold
    def warm_vs_cold(self, seed: int) -> dict:
        name = f"warmcold-s{seed}"
        if os.path.exists(self.record_path(name)):
            return json.load(open(self.record_path(name)))
        r0 = self.round_record("start", seed, 0, self.initial(seed), {}, None)
        # The parent is round 0's run; on a machine without its work folder it is trained again, identically.
        parent = self.train(os.path.join(self.work, f"start-s{seed}-r0"), r0["labeled"], seed, self.cfg["iterations"])
        rng = np.random.default_rng([seed, 99])
        remaining = [n for n in self.candidates if n not in r0["labeled"]]
        labeled = sorted(r0["labeled"] + rng.choice(remaining, self.cfg["add"], replace=False).tolist())
        it, every = self.cfg["warm_iterations"], self.cfg["warm_validate_every"]
        runs = {}
        for kind, init_from in (("cold", None), ("warm", parent["model"])):
            t = self.train(os.path.join(self.work, f"{name}-{kind}"), labeled, seed, it, init_from, every)
            runs[kind] = {"curve": t["curve"], "train_wall_s": t["meta"]["provenance"].get("wall_s"),
                          "parent_model": (t["meta"]["provenance"].get("parent_model") or {}).get("path")}
        best_iter, best = max(((i, dv) for i, dv in runs["cold"]["curve"]), key=lambda x: (x[1], -x[0]))
        reach = next((i for i, dv in runs["warm"]["curve"] if dv >= best), None)
        return self.write_record(name, {
            "seed": seed, "preset": self.preset, "labeled": labeled, "parent_labeled": r0["labeled"],
            "iterations": it, "validate_every": every, "cold_best_dice": best, "cold_best_iter": best_iter,
            "warm_reaches_cold_best_at": reach, "warm_best_dice": max(dv for _, dv in runs["warm"]["curve"]),
            "parent_validation_dice": max((dv for _, dv in parent["curve"]), default=None), "runs": runs, **machine(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})


# ------------------------------------------------------------------------------------------------ report
def summarize(records: List[dict]) -> dict:
    rounds: Dict[tuple, List[dict]] = {}
    for r in records:
        if "round" in r:
            rounds.setdefault((r["round"], r["strategy"]), []).append(r)
    rows = []
    for rnd in sorted({k[0] for k in rounds}):
        for strategy in (["start"] if rnd == 0 else STRATEGIES):
            rs = sorted(rounds.get((rnd, strategy), []), key=lambda r: r["seed"])
            if not rs:
                continue
            d = [r["mean_dice"] for r in rs]
            rows.append({"round": rnd, "strategy": strategy, "labeled": len(rs[0]["labeled"]),
                         "seeds": [r["seed"] for r in rs], "mean_dice": float(np.mean(d)), "std_dice": float(np.std(d)),
                         "per_seed": d})
    diffs = []
    for rnd in sorted({k[0] for k in rounds if k[0] > 0}):
        by_seed = {r["seed"]: r for r in rounds.get((rnd, "random"), [])}
        per, seed_means = [], {}
        for r in sorted(rounds.get((rnd, "suggest"), []), key=lambda r: r["seed"]):
            o = by_seed.get(r["seed"])
            if o:
                a, b = r["per_case_mean_dice"], o["per_case_mean_dice"]
                d = [a[c] - b[c] for c in sorted(set(a) & set(b))]
                per += d
                seed_means[str(r["seed"])] = float(np.mean(d))
        if len(per) > 1:
            from scipy import stats
            x = np.asarray(per)
            half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
            diffs.append({"round": rnd, "mean": float(x.mean()), "ci95": [float(x.mean() - half),
                                                                           float(x.mean() + half)], "n": len(x),
                          "per_seed": seed_means})
    warm = [{k: r[k] for k in ("seed", "labeled", "cold_best_dice", "cold_best_iter", "warm_reaches_cold_best_at",
                               "warm_best_dice", "parent_validation_dice", "iterations")}
            for r in sorted((r for r in records if "cold_best_dice" in r), key=lambda r: r["seed"])]
    return {"rows": rows, "suggest_minus_random": diffs, "warm_vs_cold": warm}


def markdown(s: dict, preset: str, cfg: dict) -> str:
    f = lambda v, d=3: "–" if v is None else f"{v:.{d}f}"
    lines = [f"# Annotation loop, preset `{preset}`", "",
             f"Hippocampus (shared data), {cfg['test'] or 50} test cases, method {cfg['method']}, {cfg['iterations']} "
             f"iterations per round ({'warm start from the previous round' if cfg['warm'] else 'cold start'}), "
             f"width {cfg['filters']}, patch {'x'.join(map(str, cfg['patch']))}, {cfg['validation']} validation "
             f"cases, {cfg['candidates']} candidate volumes. Round 0: {cfg['start']} labeled; each round adds "
             f"{cfg['add']} chosen by `micd suggest` or at random. Mean Dice on the test cases (± std over seeds). "
             "Generated by `benchmarks/annotation_loop.py`; do not edit by hand.", "",
             "| round | labeled | strategy | seeds | mean Dice | per seed |", "|---|---|---|---|---|---|"]
    for r in s["rows"]:
        lines.append(f"| {r['round']} | {r['labeled']} | {r['strategy']} | {len(r['seeds'])} | "
                     f"{f(r['mean_dice'])} ± {f(r['std_dice'])} | {', '.join(f(v) for v in r['per_seed'])} |")
    if s["suggest_minus_random"]:
        lines += ["", "Suggest − random, mean paired per-case difference of mean Dice over test cases x seeds "
                  "[95 % t interval], and per seed. The interval counts every case of every seed as independent, "
                  "which the seeds' own training noise is not: read a round as settled only where every seed agrees "
                  "in sign.", "", "| round | Δ Dice | n | per seed |", "|---|---|---|---|"]
        for d in s["suggest_minus_random"]:
            per = ", ".join(f"s{k} {v:+.3f}" for k, v in sorted(d.get("per_seed", {}).items()))
            lines.append(f"| {d['round']} | {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] | {d['n']} | "
                         f"{per} |")
    if s["warm_vs_cold"]:
        lines += ["", "Warm (`--init-from` the round-0 model) against cold start after adding labels: validation "
                  "Dice; the iteration at which the warm run first reaches the cold run's best:", "",
                  "| seed | labeled | parent val. Dice | cold best (iter) | warm reaches it at | warm best | iterations |",
                  "|---|---|---|---|---|---|---|"]
        for w in s["warm_vs_cold"]:
            lines.append(f"| {w['seed']} | {len(w['labeled'])} | {f(w['parent_validation_dice'])} | "
                         f"{f(w['cold_best_dice'])} ({w['cold_best_iter']}) | "
                         f"{w['warm_reaches_cold_best_at'] if w['warm_reaches_cold_best_at'] is not None else 'never'}"
                         f" | {f(w['warm_best_dice'])} | {w['iterations']} |")
    return "\n".join(lines) + "\n"


def write_summary(a, cfg: dict, runs_dir: str) -> str:
    recs = [json.load(open(os.path.join(runs_dir, f))) for f in sorted(os.listdir(runs_dir)) if f.endswith(".json")]
    summary = summarize(recs)
    summary.update(preset=a.preset, config=cfg, records=len(recs))
    json.dump(summary, open(os.path.join(a.results, f"annotation-{a.preset}.json"), "w", encoding="utf-8"), indent=1)
    text = markdown(summary, a.preset, cfg)
    with open(os.path.join(a.results, f"annotation-{a.preset}.md"), "w", encoding="utf-8") as f:
        f.write(text)
    return text


def main() -> None:
    tolerant_console()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    ap.add_argument("--part", default="all", choices=["all", "loop", "warm"],
                    help="loop: suggest vs random; warm: warm against cold start; all: both (loop first)")
    ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared"))
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    ap.add_argument("--work", default=os.path.join(HERE, "runs"), help="training runs, predictions (not committed)")
    ap.add_argument("--seeds", type=int, nargs="+", help="run only these of the preset's seeds (default: all); "
                    "the summary always covers every recorded run")
    ap.add_argument("--report", action="store_true", help="only rebuild the summary from recorded runs")
    a = ap.parse_args()
    cfg = PRESETS[a.preset]
    if a.seeds and not set(a.seeds) <= set(cfg["seeds"]):
        ap.error(f"--seeds must be among the preset's seeds {cfg['seeds']}")
    seeds = a.seeds or cfg["seeds"]
    split = json.load(open(os.path.join(HERE, "splits", "hippocampus.json")))
    hip = os.path.abspath(os.path.join(a.shared, "data", "hippocampus"))
    runs_dir = os.path.join(a.results, f"annotation-{a.preset}", "runs")
    os.makedirs(runs_dir, exist_ok=True)
    bench = Bench(a.preset, cfg, split, hip, os.path.join(a.work, f"annotation-{a.preset}"), runs_dir)
    if not a.report:
        for seed in seeds:  # seed by seed, so that an interrupted benchmark already compares something
            if a.part in ("all", "loop"):
                bench.loop(seed)
                write_summary(a, cfg, runs_dir)
        for seed in seeds:
            if a.part in ("all", "warm"):
                w = bench.warm_vs_cold(seed)
                print(f"seed {seed} warm vs cold: cold best {w['cold_best_dice']:.3f} at {w['cold_best_iter']}, "
                      f"warm reaches it at {w['warm_reaches_cold_best_at']}", flush=True)
                write_summary(a, cfg, runs_dir)
    print(write_summary(a, cfg, runs_dir))


if __name__ == "__main__":
    main()
