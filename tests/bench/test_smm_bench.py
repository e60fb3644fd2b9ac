"""The SMM comparison benchmark (`python -m bench smm`): its statistics and verdict helpers, its Markdown, and the
whole harness end to end at tiny sizes (checks the plumbing through the engine, not the numbers)."""

from __future__ import annotations

import json

import pytest

from bench import __main__ as cli
from bench import smm
from result_files import result_file


def test_mean_std_and_formatting() -> None:
    assert smm.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert smm.mean_std([0.5]) == (0.5, None)
    assert smm.fmt_mean_std(2.0, 1.0) == "2.000 ± 1.000"
    assert smm.fmt_mean_std(0.25, None, 2) == "0.25"


def test_verdict() -> None:
    names = ("SMM", "SA")
    assert smm.verdict((0.0, 0.0), (0.0, 0.0), names) == "tie"
    assert smm.verdict((0.5, 0.01), (0.3, 0.02), names) == "SMM better"
    assert smm.verdict((0.5, 0.01), (0.3, 0.02), names, higher_is_better=False) == "SA better"
    assert smm.verdict((0.5, 0.3), (0.3, 0.02), names) == "tie (within one std)"
    assert smm.verdict((0.2, None), (0.3, None), names) == "SA better"  # one seed: the means decide
    assert smm.verdict((4e-5, 1e-6), (2e-5, 1e-6), names, resolution=1e-3) == "tie"  # below the last digit


def test_pairs_differ_only_in_the_grouper(plugins) -> None:
    """Each comparison's recipes resolve to the same data, encoder, decoder, train and eval tables."""
    from slotrun.recipe import load_data

    # the last pair: the `slotrun sweep` comparison on the quickstart scenes (docs/results.md)
    quickstart = {"SMM": ("recipes/smm/quickstart.toml", ()), "Slot Attention": ("recipes/quickstart.toml", ())}
    for pairs in (smm.SET_PREDICTION, smm.DISCOVERY, smm.SLATE, quickstart):
        (a, _), (b, _) = pairs.values()
        first, second = (load_data(smm.ROOT / p) for p in (a, b))
        for table in (first, second):
            table.pop("run"), table["model"].pop("grouper")
        assert first == second, (a, b)


def fake_result() -> dict:
    ap = {k: {"mean": 0.1, "std": 0.01} for k in (*smm.AP_KEYS, "loss_set")}
    curve = [{"step": s, "fg_ari": 0.1 * s, "mbo": 0.2, "mse": 0.01} for s in (0, 2)]
    slate = {"summary": {k: {"mean": 0.5, "std": 0.1} for k in smm.SLATE_KEYS}, "generated_images": 64}
    cluster = {"summary": {k: {"mean": 0.4, "std": None} for k in smm.CLUSTERING_KEYS}}
    kmeans = {"summary": {**cluster["summary"], "grouper_mbo": {"mean": 0.2, "std": None}}}
    return {"budget": smm.asdict(smm.BUDGET), "threads": 1, "sa_matched": list(smm.SA_MATCHED), "seconds": 60.0,
            "set_prediction": {"steps": 2, "seeds": [0, 1], "methods": {n: {"summary": ap} for n in ("SMM", "SA")}},
            "discovery": {"steps": 2, "methods": {n: {"curve": curve} for n in ("SMM", "SA")}},
            "slate": {"steps": 2, "seeds": [0, 1], "methods": {"SMM": slate, "SA": slate},
                      "ce_ratio": {"mean": 0.875, "std": 0.02}},
            "clustering": {"steps": 2, "seeds": [0, 1], "methods": {"GMM": cluster, "k-means": kmeans}},
            "plot": "docs/smm_vs_sa_discovery.png"}


def test_markdown_tables() -> None:
    text = smm.markdown(fake_result())
    assert text.startswith("###")
    assert "| SMM | 0.100 ± 0.010 |" in text
    assert "| verdict | tie |" in text
    assert "| SMM / SA (paired by seed) | 0.875 ± 0.020 |" in text  # the cross-entropy ratio
    assert "| GMM | 0.400 | 0.400 | 0.400 | 0.400 | 0.400 | 0.4000 |" in text
    assert "| verdict | tie | tie | tie | GMM better | tie | tie |" in text  # MSE: lower is better, equal here
    assert "![object discovery curves" in text
    tables = [line for line in text.splitlines() if line.startswith("| ---")]
    assert len(tables) == 4


def test_paired_ratio_pairs_runs_by_seed() -> None:
    first = [{"seed": 1, "ce": 90.0}, {"seed": 0, "ce": 40.0}]
    second = [{"seed": 0, "ce": 50.0}, {"seed": 1, "ce": 100.0}]
    ratio = smm.paired_ratio(first, second, "ce")
    assert ratio["mean"] == pytest.approx(0.85) and ratio["std"] == pytest.approx(0.0707107, rel=1e-5)


@pytest.mark.slow
def test_smm_bench_runs_tiny(tmp_path) -> None:
    assert cli.main(["smm", "--tiny", "--out", str(tmp_path)]) == 0
    data = json.loads(result_file(tmp_path, "smm", "json").read_text())
    r = data["result"]
    assert data["command"].startswith("python -m bench smm")
    assert set(r["set_prediction"]["methods"]) == {"SMM", "Slot Attention"}
    assert len(r["set_prediction"]["methods"]["SMM"]["runs"]) == len(smm.TINY.seeds)
    steps = [c["step"] for c in r["discovery"]["methods"]["SMM"]["curve"]]
    assert steps == [0, 2, 4]
    slate = r["slate"]["methods"]["SMM"]
    assert len(slate["runs"]) == len(smm.TINY.seeds) and all(run["mse_generated"] > 0 for run in slate["runs"])
    assert r["slate"]["ce_ratio"]["mean"] > 0
    gmm = r["clustering"]["methods"]["GMM"]
    assert [run["seed"] for run in gmm["runs"]] == list(smm.TINY.seeds)
    assert all(-1.0 <= run["grouper_fg_ari_untrained"] <= 1.0 and 0.0 <= run["grouper_mbo"] <= 1.0
               for run in gmm["runs"])
    assert r["clustering"]["command"] == data["command"]
    # One section again: it replaces that section and keeps the others (with the command that made each).
    before = json.loads(result_file(tmp_path, "smm", "json").read_text())["result"]
    assert cli.main(["smm", "--tiny", "--out", str(tmp_path), "slate"]) == 0
    after = json.loads(result_file(tmp_path, "smm", "json").read_text())
    assert after["result"]["discovery"] == before["discovery"]
    assert after["result"]["slate"]["command"] == after["command"] != before["slate"]["command"]
    text = result_file(tmp_path, "smm", "md").read_text()
    assert "Sections made by" in text and text.split("\n\n", 1)[1].startswith("###")
    try:
        import matplotlib  # noqa: F401 - the `bench` extra; CI installs only `test`
    except ImportError:
        assert r["plot"] is None and "matplotlib" in r["plot_missing"]
    else:
        assert (tmp_path / "smm_vs_sa_discovery.png").stat().st_size > 0
