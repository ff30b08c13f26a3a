"""The training panel's word on unlabeled data comes from the committed equal-time results, through a generated file
(benchmarks/panel_advice.py): nothing typed by hand, and no gain promised that the rows do not show."""

import importlib.util
import json
import pathlib

from MICDTrainingLib.BenchmarkAdvice import ADVICE_FILE, advice_summary, advice_text, load_rows, verdict

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("panel_advice", ROOT / "benchmarks" / "panel_advice.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shipped_advice_is_what_the_committed_results_give():
    with open(ADVICE_FILE, encoding="utf-8") as f:
        shipped = json.load(f)
    assert shipped == json.loads(json.dumps(_generator().advice())), "run benchmarks/panel_advice.py"
    assert shipped["rows"], "no equal-time rows: the panel would say nothing"
    for row in shipped["rows"]:
        assert row["time_budget"] and len(row["seeds"]) >= 2 and row["paired_diff"]["n"] > 0


def _row(mean, lo, hi, dataset="hippocampus", budget="7m"):
    return {"dataset": dataset, "labeled": 2, "time_budget": budget, "time_budget_s": 60.0 * int(budget[:-1]),
            "paired_diff": {"mean": mean, "ci95": [lo, hi]}}


def test_the_verdict_follows_the_intervals():
    assert "supervised training gave the better model" in advice_text([_row(-0.07, -0.08, -0.06)])
    assert "added Dice on every benchmark" in advice_text([_row(0.03, 0.01, 0.05), _row(0.02, 0.01, 0.03, "la")])
    assert "depended on" in advice_text([_row(0.03, 0.01, 0.05), _row(-0.01, -0.03, 0.01, "la")])
    mixed = advice_text([_row(-0.08, -0.10, -0.07), _row(-0.001, -0.011, 0.009, "la")])
    assert "depended on" in mixed and "supervised training was better at 7m (hippocampus MRI)" in mixed
    both = advice_text([_row(-0.08, -0.10, -0.07), _row(0.03, 0.01, 0.05, "la")])
    assert "depended on" in both and "added Dice at 7m (left atrium MRI)" in both
    assert "supervised training was better at 7m (hippocampus MRI)" in both and "level or unclear" not in both
    assert "for short runs on a CPU" in both and "longer wait" not in both
    # behind at a dataset's longest budget too: the panel may not tell the user that waiting longer is the cure
    stubborn = advice_text([_row(-0.08, -0.10, -0.07, "hippocampus", "7m"),
                            _row(0.03, 0.02, 0.04, "hippocampus", "24m"),
                            _row(-0.10, -0.14, -0.06, "la", "15m"), _row(-0.02, -0.04, -0.01, "la", "45m")])
    assert "a longer wait did not bring it on the left atrium MRI (up to 45m)" in stubborn
    assert "hippocampus MRI (up to" not in stubborn and "for short runs" not in stubborn
    level = advice_text([_row(0.006, -0.004, 0.015), _row(-0.001, -0.011, 0.009, "la")])
    assert "were level" in level and "Supervised only" not in level
    assert advice_text([]) == "" and advice_summary([]) == ""


def test_the_panel_shows_it(scene):
    from unittest import mock

    from MICDTrainingLib.Widget import TrainingWidget

    logic = mock.MagicMock(name="TrainingLogic")
    logic.runs_to_attach.return_value = []
    logic.resumable_runs.return_value = []
    form = TrainingWidget(logic, dependency_check=lambda then=None: True).training.form
    text, tip = form.adviceLabel.text, form.adviceLabel.toolTip
    # the label holds the verdict (every figure would not fit the panel); its tooltip every row's figures
    assert text == advice_summary(load_rows()) and verdict(load_rows()) in text and not form.adviceLabel.isHidden()
    assert tip == advice_text(load_rows()) and verdict(load_rows()) in tip
    first = load_rows()[0]
    assert f"{first['paired_diff']['mean']:+.3f}" in tip and first["time_budget"] in tip
