"""benchmarks/render_docs.py: measured tables come from the benchmarks' JSON, never typed by hand."""

import json
import sys
from pathlib import Path

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import measured  # noqa: E402
from render_docs import render  # noqa: E402


def test_a_benchmark_record_becomes_a_table_with_its_machine_and_date(tmp_path: Path) -> None:
    columns, rows = ["precision", "ms"], [["32-true", 20.04]]
    path = measured.write(tmp_path, "floor", "python floor.py", columns, rows, "note")
    record = json.loads(path.read_text())
    assert record["machine"]["cpu"] and record["machine"]["torch"] and record["date"]
    page = "before\n<!-- measured: floor -->\nhand-typed, stale\n<!-- /measured -->\nafter\n"
    rendered = render(page, tmp_path)
    assert rendered.startswith("before\n<!-- measured: floor -->\nMeasured ") and rendered.endswith("after\n")
    assert "| 32-true | 20.04 |" in rendered and "|---|---:|" in rendered
    assert "hand-typed" not in rendered and record["machine"]["cpu"] in rendered
    assert render(rendered, tmp_path) == rendered, "rendering twice changes nothing"


def test_the_docs_are_what_their_measurements_render() -> None:
    for page in (ROOT / "docs").glob("*.md"):
        text = page.read_text()
        assert render(text, ROOT / "docs" / "measurements") == text, f"{page.name}: run make docs"
