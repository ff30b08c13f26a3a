"""Copy the generated benchmark tables into docs/benchmarks.md between their markers, so the documented numbers are
the results files' numbers: <!-- results:ssl --> ... <!-- /results:ssl --> and <!-- results:speed --> ... .
(The tables lived in README.md until the README was cut down to a newcomer's page; the script keeps its name.)
The equal-time table (issue 32: same wait, which model is better?) is built here from the two equal-time summaries
and written between <!-- results:equal-time --> markers in README.md and benchmarks/README.md; the other rows at equal
time (nnU-Net, MICD's cost-aware forms), each against the same weighted supervised row, between
<!-- results:equal-time-others --> markers."""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # panel_advice, beside this script

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TARGET = os.path.join(ROOT, "docs", "benchmarks.md")
SOURCES = {"ssl": os.path.join(HERE, "results", "ssl-cpu.md"),
           "speed": os.path.join(HERE, "results", "speed", "speed.md"),
           "plateau-L2": os.path.join(HERE, "results", "cpu-plateau", "plateau-L2-x3.md"),
           "plateau-L5": os.path.join(HERE, "results", "cpu-plateau", "plateau-L5-x3.md"),
           "annotation": os.path.join(HERE, "results", "annotation-cpu.md"),
           "peer-bn": os.path.join(HERE, "results", "avx2-fp32", "ssl-cpu.md"),
           "plateau-weighted-L2": os.path.join(HERE, "results", "avx2-fp32", "cpu-plateau",
                                               "plateau-supervised-micd-weights-L2-x3.md"),
           "plateau-micd-L2": os.path.join(HERE, "results", "avx2-fp32", "cpu-plateau", "plateau-micd-L2-x3.md")}


EQUAL_TIME_TARGETS = [os.path.join(ROOT, "README.md"), os.path.join(HERE, "README.md")]
DATASET_NAMES = {"hippocampus": "hippocampus", "la": "Left Atrium"}


def _machine(row) -> str:
    flags = set(row.get("cpu_flags") or [])
    cpu = ("AMX" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else
           "AVX-512" if "avx512f" in flags else "AVX2")
    return f"{cpu}, {'bf16' if row.get('amp') == 'bfloat16' else 'fp32'}"


def _signed(x: float) -> str:
    return f"{x:+.3f}".replace("-", "\u2212")


def _where(row) -> str:
    """The first cell of an equal-time row: dataset, labeled count, budget."""
    return f"{DATASET_NAMES.get(row['dataset'], row['dataset'])}, {row['labeled']}, {row['time_budget']}"


def _interval(diff) -> str:
    lo, hi = diff["ci95"]
    return f"{_signed(diff['mean'])} [{_signed(lo)}, {_signed(hi)}]"


def _counts(iterations) -> str:
    return ", ".join("?" if n is None else str(n) for n in iterations or [])


def equal_time_table() -> str:
    """MICD against supervised with MICD's class weights at each recorded budget (the rows panel_advice.py pairs):
    mean test Dice, the paired difference with its 95 % interval, the planned iterations per seed and the machine
    each budget ran on."""
    from panel_advice import advice

    lines = ["| dataset, labeled, budget | seeds | MICD | supervised, MICD's weights | paired MICD − weighted "
             "[95 % CI] | iterations per seed, MICD / weighted | CPU, precision |", "|---|---|---|---|---|---|---|"]
    for row in advice()["rows"]:
        lines.append(f"| {_where(row)} | {len(row['seeds'])} | {row['micd_mean_dice']:.3f} | "
                     f"{row['weighted_mean_dice']:.3f} | {_interval(row['paired_diff'])} | "
                     f"{_counts(row['iterations']['micd'])} / {_counts(row['iterations']['weighted'])} | "
                     f"{_machine(row)} |")
    return "\n".join(lines)


def other_equal_time_rows(sources=None) -> list:
    """Every equal-time row that is neither MICD's default form nor the weighted supervised baseline (nnU-Net, the
    cost-aware forms of MICD), with the weighted supervised row it is paired with (same dataset, labeled count and
    budget), in budget order."""
    from panel_advice import SOURCES, WEIGHTED, paired_with_weighted

    return [(row, weighted) for _, row, weighted in paired_with_weighted(sources or SOURCES)
            if row["method"] not in ("micd", WEIGHTED)]


def other_forms_table() -> str:
    """The other rows at equal time against supervised with MICD's class weights, as the equal-time table."""
    lines = ["| dataset, labeled, budget | method | seeds | its mean Dice | supervised, MICD's weights | paired − weighted "
             "[95 % CI] | iterations per seed, it / weighted | CPU, precision |", "|---|---|---|---|---|---|---|---|"]
    for row, weighted in other_equal_time_rows():
        lines.append(f"| {_where(row)} | {row['method']} | {len(row['seeds'])} | {row['mean_dice']:.3f} | "
                     f"{weighted['mean_dice']:.3f} | {_interval(row['paired_diff_vs_supervised_weighted'])} | "
                     f"{_counts(row.get('iterations_by_seed'))} / {_counts(weighted['iterations_by_seed'])} | "
                     f"{_machine(weighted)} |")
    return "\n".join(lines)


def _replace(text, key, body, source):
    body = f"<!-- results:{key} (from {source} by benchmarks/update_readme.py) -->\n{body}\n<!-- /results:{key} -->"
    return re.sub(rf"<!-- results:{key} .*?<!-- /results:{key} -->", lambda m: body, text, flags=re.S)


def main() -> None:
    tables = {"equal-time": equal_time_table(), "equal-time-others": other_forms_table()}
    for target in EQUAL_TIME_TARGETS:
        text = open(target, encoding="utf-8").read()
        for key, table in tables.items():
            text = _replace(text, key, table, "benchmarks/results/ssl-cpu-equal-time.json and "
                            "ssl-cpu-la-equal-time.json")
        open(target, "w", encoding="utf-8").write(text)
    text = open(TARGET, encoding="utf-8").read()
    for key, path in SOURCES.items():
        if not os.path.exists(path):
            continue
        body = open(path, encoding="utf-8").read().split("\n", 1)[1].strip()  # drop the file's own title
        body = re.sub(r"^## ", "### ", body, flags=re.M)  # its sections sit under a section (##) of the page
        text = _replace(text, key, body, os.path.relpath(path, ROOT).replace(os.sep, "/"))
    open(TARGET, "w", encoding="utf-8").write(text)


if __name__ == "__main__":
    main()
