"""Fuzzing every shipped recipe: wrong types, missing and extra keys, unknown types,
out-of-range numbers, broken TOML, extends cycles and bad overrides. Whatever the mistake, the command line
never shows a traceback: it exits 0 (the mutation happened to be valid) or 2 with one line per problem naming
the key path (`@ $.a.b`) or the file (and the line, for TOML syntax). Mutations that are always wrong must exit 2.

Runs in-process (`slotrun.cli.main`) with `check` (structure + model build) for every recipe except those with a
timm ViT encoder, which are fuzzed at the structure level with `show` (building ViT-B per case is too slow).
"""

from __future__ import annotations

import math
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slotrun.cli import main
from slotrun.recipe import load_data

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").rglob("*.toml"))
CASES = 300  # hypothesis examples per CI run

WRONG_VALUES = ["text", 3, 2.5, True, [1, "a"], {"x": 1}, [], -7]
NUMBERS = [-1, 0, -0.5, -1e-9, float("nan"), float("inf"), float("-inf"), 1.5]
BROKEN_LINES = ["= 1", "[unclosed", 'key = "unterminated', "a = [1, 2", "b = {c = 1", "x = 1\nx = 2", "[[]]",
                "k = 1979-13-45", "dup.a = 1\ndup = 2"]
BAD_OVERRIDES = ["model..grouper=1", "=3", "1abc=2", "model.grouper.iters=[1,", 'train.lr="x', "train.steps",
                 "train.steps.deeper=1", "model.grouper=3", "train.steps=many words", "a-b.c=1", "train.lr={",
                 "model.decoder.type=nonexistent_decoder"]


def _paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a nested dict (tables and leaves)."""
    out = []
    if isinstance(data, dict):
        for key, value in data.items():
            out.append((*prefix, key))
            out += _paths(value, (*prefix, key))
    return out


def _get(data: dict, path: tuple) -> Any:
    for key in path:
        data = data[key]
    return data


def _uses_timm(recipe: Path) -> bool:
    return load_data(recipe)["model"]["encoder"]["type"] == "timm"


@st.composite
def cases(draw: st.DrawFn) -> dict[str, Any]:
    recipe = draw(st.sampled_from(RECIPES))
    data = load_data(recipe)
    kind = draw(st.sampled_from(["wrong_type", "missing", "extra", "unknown_type", "number", "broken_toml",
                                 "extends_cycle", "bad_override", "override_text"]))
    paths = _paths(data)
    case: dict[str, Any] = {"recipe": recipe, "kind": kind, "data": data, "overrides": [], "must_fail": True,
                            "text": None, "expect": None}
    if kind == "wrong_type":
        path = draw(st.sampled_from(paths))
        _set(data, path, draw(st.sampled_from(WRONG_VALUES)))
        case["must_fail"] = False
    elif kind == "missing":
        path = draw(st.sampled_from(paths))
        del _get(data, path[:-1])[path[-1]]
        case["must_fail"] = False
    elif kind == "extra":
        tables = [()] + [p for p in paths if isinstance(_get(data, p), dict)]
        table = draw(st.sampled_from(tables))
        _get(data, table)["zz_extra"] = 1
        case["expect"] = "zz_extra"
        # train.loss_weights is a map of term names: an unknown term is found when the model is built (check),
        # not by `show`
        case["free_map"] = table[-1:] == ("loss_weights",)
    elif kind == "unknown_type":
        tables = [p for p in paths if isinstance(_get(data, p), dict) and "type" in _get(data, p)]
        _get(data, draw(st.sampled_from(tables)))["type"] = "no_such_component"
        case["expect"] = "unknown"
    elif kind == "number":
        numeric = [p for p in paths if isinstance(_get(data, p), (int, float)) and not isinstance(_get(data, p), bool)]
        _set(data, draw(st.sampled_from(numeric)), draw(st.sampled_from(NUMBERS)))
        case["must_fail"] = False
    elif kind == "broken_toml":
        lines = tomli_w.dumps(data).splitlines()
        at = draw(st.integers(0, len(lines)))
        lines.insert(at, draw(st.sampled_from(BROKEN_LINES)))
        case["text"] = "\n".join(lines) + "\n"
        try:  # inside a multi-line array some "broken" lines are valid TOML values: then a key path is expected
            tomllib.loads(case["text"])
            case["expect"] = "@ $."
        except tomllib.TOMLDecodeError:
            case["expect"] = "line"
    elif kind == "extends_cycle":
        case["expect"] = "extends cycle"
    elif kind == "bad_override":
        case["overrides"] = [draw(st.sampled_from(BAD_OVERRIDES))]
    else:  # a random value for a random existing key: may be valid, may not
        path = draw(st.sampled_from([p for p in paths if not isinstance(_get(data, p), dict)]))
        value = draw(st.text(alphabet="ab1.-=[]{}\"', e", max_size=12))
        case["overrides"] = [".".join(path) + "=" + value]
        case["must_fail"] = False
    return case


def _set(data: dict, path: tuple, value: Any) -> None:
    _get(data, path[:-1])[path[-1]] = value


def _write(case: dict[str, Any], folder: Path) -> Path:
    path = folder / "mutant.toml"
    if case["kind"] == "extends_cycle":
        other = folder / "other.toml"
        other.write_text('extends = "mutant.toml"\n')
        path.write_text(f'extends = ["{case["recipe"]}", "other.toml"]\n')
        return path
    path.write_text(case["text"] if case["text"] is not None else tomli_w.dumps(case["data"]))
    return path


@settings(max_examples=CASES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(case=cases())
def test_recipe_mistakes_are_one_line_errors(case: dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(case, Path(tmp))
        command = "show" if _uses_timm(case["recipe"]) else "check"
        capsys.readouterr()
        # recipe structure is under test, not the components: check builds the model but does not run it
        status = main([command, str(path), *case["overrides"], *(["--no-run"] if command == "check" else [])])
        out, err = capsys.readouterr()
    where = f"{case['kind']} of {case['recipe'].name} {case['overrides']}:\n{out}\n{err}"
    assert "Traceback" not in out + err, where
    must_fail = case["must_fail"] and not (command == "show" and case.get("free_map"))
    assert status in ((2,) if must_fail else (0, 2)), where
    if status == 0:
        return
    if command == "check":
        problems = [line for line in err.splitlines() if line.startswith("FAIL ")]
        problems += [line for line in err.splitlines() if line.startswith("slotrun: error:")]
    else:
        problems = [line for line in err.splitlines() if line.startswith("slotrun: error:")]
    others = [line for line in err.splitlines()
              if line and not line.startswith(("slotrun: error:", "slotrun: warning:", "FAIL "))]
    assert problems and not others, where
    for line in problems:
        assert "@ $" in line or str(path) in line or "bad override" in line or "recipe not found" in line, where
    if case["expect"]:
        assert any(case["expect"] in line for line in problems), where


def test_numbers_include_non_finite() -> None:
    assert any(isinstance(n, float) and not math.isfinite(n) for n in NUMBERS)
