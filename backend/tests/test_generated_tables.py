"""The equal-time table in README.md and benchmarks/README.md is the one benchmarks/update_readme.py builds from the
committed summaries: a number typed by hand, or a summary updated without re-running the script, fails here."""

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "update_readme.py"


@pytest.mark.skipif(not SCRIPT.exists(), reason="benchmarks/ is not in this checkout")
def test_the_equal_time_tables_are_generated_from_the_summaries():
    spec = importlib.util.spec_from_file_location("update_readme", SCRIPT)
    update_readme = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(update_readme)
    table = update_readme.equal_time_table()
    assert table.count("\n") >= 2, "the committed summaries hold at least one equal-time row"
    others = update_readme.other_forms_table()
    for target in update_readme.EQUAL_TIME_TARGETS:
        text = pathlib.Path(target).read_text(encoding="utf-8")
        for key, expected in (("equal-time", table), ("equal-time-others", others)):
            start = text.index(f"<!-- results:{key} ")
            body = text[text.index("\n", start) + 1:text.index(f"<!-- /results:{key} -->")]
            assert body.strip() == expected.strip(), f"{target}, {key}: run python benchmarks/update_readme.py"
