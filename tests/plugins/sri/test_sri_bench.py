"""`python -m bench sri` runs end to end at tiny sizes: both stages, every variant, the table and the figure."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:  # bench/ is a top-level package of the repository, not an installed one
    sys.path.insert(0, str(ROOT))

from bench import __main__ as cli  # noqa: E402
from bench import sri  # noqa: E402


def test_sri_bench_tiny(tmp_path, one_thread, monkeypatch):
    monkeypatch.setenv("SLOTRUN_DATA", str(tmp_path / "data"))
    assert cli.main(["sri", "--tiny", "--out", str(tmp_path)]) == 0
    (result_json,) = (tmp_path / "sri").glob("*.json")  # one condition's pair: bench/results/sri/CONDITION.*
    data = json.loads(result_json.read_text())
    result = data["result"]
    names = [row["name"] for row in result["rows"]]
    assert names == ["independent", *(name for name, _, _ in sri.VARIANTS)]
    for row in result["rows"]:
        assert 0.0 <= row["structural_accuracy"] <= 1.0 and row["samples"] == 8
        assert row["fd_random_cnn"] == row["fd_random_cnn"]  # not NaN
    assert result["bench_sri_overrides"] == sri.BENCH_SRI
    table = result_json.with_suffix(".md").read_text().split("\n\n", 1)[1]
    assert table.startswith("### SRI on the built-in towers") and "no KL_rollout" in table
    assert (tmp_path / "sri_towers_samples.png").is_file()
