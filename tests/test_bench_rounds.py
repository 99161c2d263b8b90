"""benchmarks/rounds.py: speed.py's engines in rounds, in turn; ratios taken within each round."""

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("rounds", Path(__file__).parent.parent / "benchmarks" / "rounds.py")
rounds = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rounds)


def test_engines_run_in_turn_the_order_reversed_each_round():
    calls = []
    runs = rounds.in_rounds(["a", "b", "c"], 3, lambda label: calls.append(label) or {"x": len(calls)})
    assert calls == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert [r["round"] for r in runs["b"]] == [0, 1, 2] and [r["x"] for r in runs["c"]] == [3, 4, 9]


def test_a_failed_run_is_left_out_and_an_engine_that_never_ran_is_absent():
    seen = []

    def run(label):
        seen.append(label)
        if label == "dead" or (label == "b" and seen.count("b") == 2):  # b fails in its second round
            return None
        return {"v": 1.0}

    runs = rounds.in_rounds(["a", "b", "dead"], 3, run)
    assert "dead" not in runs and len(runs["a"]) == 3 and [r["round"] for r in runs["b"]] == [0, 2]


def test_figures_are_medians_and_ratios_are_taken_within_each_round():
    a = rounds.combined([{"tokens_per_s": v, "round": i, "output": "a.txt"} for i, v in enumerate([10.0, 20.0, 30.0])])
    b = rounds.combined([{"tokens_per_s": v, "round": i, "output": "b.txt"} for i, v in enumerate([10.0, 10.0, 20.0])])
    assert a["tokens_per_s"] == 20.0 and b["tokens_per_s"] == 10.0 and a["output"] == "a.txt" and "round" not in a
    # per round 1.0, 2.0, 1.5: the median 1.5, not the ratio of the medians (2.0)
    assert rounds.ratio(a, b, "tokens_per_s") == (1.5, 1.0, 2.0)
    assert rounds.shown(a, b, "tokens_per_s") == "1.50x (1.00x-2.00x over 3 rounds)"
    b["rounds"] = b["rounds"][:1]  # b ran in round 0 only: only that round compares
    assert rounds.ratio(a, b, "tokens_per_s") == (1.0, 1.0, 1.0)


def test_figures_without_rounds_compare_as_they_are():
    old, new = {"tokens_per_s": 5.0}, {"tokens_per_s": 10.0}
    assert rounds.ratio(new, old, "tokens_per_s") == pytest.approx((2.0, 2.0, 2.0))
    assert rounds.shown(new, old, "tokens_per_s") == "2.00x"
