"""benchmarks/speed_benchmark.py's paired measurement: commands run in turn, round by round, after a warm-up round
that is not kept, so that each ratio compares two runs made side by side in time (the machine's drift cancels)."""

import os
import sys

import pytest

from realdata import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import speed_benchmark as sp  # noqa: E402

APPEND = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + ' '); print(sys.argv[2])"


def test_commands_run_in_turn_and_the_warm_up_round_is_dropped(tmp_path):
    log = str(tmp_path / "order.txt")
    commands = {tag: ([sys.executable, "-c", APPEND, log, tag], dict(os.environ)) for tag in ("a", "b", "c")}
    runs = sp.in_turn(commands, rounds=2)
    assert open(log).read().split() == ["a", "b", "c"] * 3  # warm-up round, then 2 measured ones, each in turn
    assert {tag: [r["stdout_last"] for r in rs] for tag, rs in runs.items()} == {t: [t, t] for t in "abc"}
    assert all(r["returncode"] == 0 and r["wall_s"] > 0 for rs in runs.values() for r in rs)


def test_a_failed_run_stops_the_measurement(tmp_path):
    commands = {"fails": ([sys.executable, "-c", "import sys; sys.exit(3)"], dict(os.environ))}
    with pytest.raises(SystemExit, match=r"fails failed \(3\)"):
        sp.in_turn(commands, rounds=1)


def test_ratios_pair_the_rounds():
    assert sp.ratio_summary([2.0, 3.0, 9.0], [1.0, 3.0, 3.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}
