"""tools/est_plan.py (est_megatron.cli.est_plan) for RAPTR (per-stage depth) and SAT (per-LORS-ladder omission
rate): rows, savings, and the costs the training run's own planners give."""
import json

import pytest

from est_megatron.cli import est_plan
from est_megatron.config import SubnetConfig, model_preset
from est_megatron.subnet.flops import SubnetCounts, dense_step_flops, step_flops
from est_megatron.subnet.raptr import RaptrMethod, parse_raptr_schedule
from est_megatron.subnet.sat import SatConfig, SatMethod, SatPlanner
from est_megatron.training.arguments import build_parser


def rows_of(out):
    return [line.split() for line in out.splitlines() if line.lstrip()[:1].isdigit()]


def run_json(capsys, argv):
    est_plan.main(argv + ["--json"])
    return json.loads(capsys.readouterr().out)


def test_raptr_rows_and_saving(capsys):
    est_plan.main(["--model", "gpt2-124m", "--method", "raptr", "--raptr-schedule", "quarters",
                   "--train-steps", "150000", "--seq-length", "1024"])
    out = capsys.readouterr().out
    rows = rows_of(out)
    assert [row[4] for row in rows] == ["6/12", "8/12", "10/12", "12/12"]
    assert [row[3] for row in rows] == ["37,500"] * 4
    cfg = model_preset("gpt2-124m")
    dense = dense_step_flops(cfg, 1, 1024)
    exact = [step_flops(cfg, SubnetCounts(12, 12, 3072, depth), 1, 1024) / dense for depth in (6, 8, 10, 12)]
    assert [float(row[-1]) for row in rows] == pytest.approx(exact, abs=5e-5)
    saving = 100 * (1 - sum(exact) / 4)
    assert out.splitlines()[-1] == (f"total saving: 25.0% by the paper's formula (eq. 8-10), {saving:.1f}% by "
                                    "exact FLOPs")


def test_raptr_costs_are_those_of_the_planner_plans(capsys):
    """Each stage's exact cost equals the FLOPs of the plans RaptrMethod draws in that stage."""
    report = run_json(capsys, ["--model", "tiny", "--method", "raptr", "--raptr-schedule", "two-stage",
                               "--train-steps", "20", "--seq-length", "16"])
    cfg = model_preset("tiny")
    resolved = parse_raptr_schedule("two-stage").resolve(cfg, SubnetConfig(), 20)
    planner = RaptrMethod(cfg, SubnetConfig(), resolved, seed=3)
    assert report["depths"] == [2, 4] and [s["steps"] for s in report["stages"]] == [10, 10]
    for stage in report["stages"]:
        for step in (stage["start"], stage["end"] - 1):
            cost = step_flops(cfg, planner.plan(step), 1, 16) / dense_step_flops(cfg, 1, 16)
            assert cost == pytest.approx(stage["exact_cost"], rel=1e-12)


def test_raptr_keep_first_last_flag_is_the_training_flag(capsys):
    """Depth 1 cannot hold the always-kept first and last layers; --raptr-no-keep-first-last allows it."""
    argv = ["--model", "tiny", "--method", "raptr", "--raptr-schedule", "1,4:0.5,1", "--train-steps", "8",
            "--est-layer-strata", "1"]
    with pytest.raises(SystemExit):
        est_plan.main(argv)
    assert "always-kept first and last layers" in capsys.readouterr().err
    est_plan.main(argv + ["--raptr-no-keep-first-last"])
    assert rows_of(capsys.readouterr().out)[0][4] == "1/4"
    training = build_parser().parse_args(["--raptr-no-keep-first-last", "--sat-r-max", "0.3"])
    tool = est_plan.build_parser().parse_args(["--model", "tiny", "--raptr-no-keep-first-last", "--sat-r-max", "0.3"])
    assert (training.raptr_keep_first_last, training.sat_r_max) == (tool.raptr_keep_first_last, tool.sat_r_max)


def test_sat_ladders_rates_and_saving(capsys):
    est_plan.main(["--model", "tinyllama-1.1b", "--method", "sat", "--train-steps", "60000"])
    out = capsys.readouterr().out
    rows = rows_of(out)
    assert [row[:5] for row in rows] == [
        ["0", "[0,", "30000)", "30,000", "0.5"], ["1", "[30000,", "33000)", "3,000", "0.375"],
        ["2", "[33000,", "39000)", "6,000", "0.25"], ["3", "[39000,", "48000)", "9,000", "0.125"],
        ["4", "[48000,", "60000)", "12,000", "0"]]
    # eq. 8 with p_H = p_M = 1 - r: 1 - (30000 * 0.5 + 3000 * 0.625 + 6000 * 0.75 + 9000 * 0.875 + 12000) / 60000
    assert out.splitlines()[-1].startswith("total saving: 31.2% by the paper's formula (eq. 8-10)")


def test_sat_costs_are_those_of_the_training_method(capsys):
    """Per ladder: the realised counts are SatPlanner's, and the exact cost plus the importance computation is
    (step FLOPs + SatMethod.overhead_flops) / dense step FLOPs at the global batch."""
    argv = ["--model", "tiny", "--method", "sat", "--train-steps", "40", "--seq-length", "16",
            "--global-batch-size", "4", "--sat-r-max", "0.5", "--sat-ladders", "2", "--sat-metric", "wanda"]
    report = run_json(capsys, argv)
    cfg = model_preset("tiny")
    planner = SatPlanner(cfg, SubnetConfig(), SatConfig(metric="wanda", r_max=0.5, ladders=2), 40, seed=0)
    method = SatMethod(planner, seq_length=16)
    dense = dense_step_flops(cfg, 4, 16)
    assert report["ladders"] == [0, 1, 2] and report["importance_cost"] > 0
    weighted = 0.0
    for stage in report["stages"]:
        step = stage["start"]
        n_q, n_col = planner.counts(step)
        assert (stage["counts"]["query_heads"], stage["counts"]["mlp_columns"]) == (n_q, n_col)
        counts = SubnetCounts(n_q, cfg.num_query_groups, n_col, cfg.num_layers)
        expected = (step_flops(cfg, counts, 4, 16) + method.overhead_flops(step)) / dense
        assert stage["exact_cost"] + (0 if planner.is_dense(step) else report["importance_cost"]) == \
            pytest.approx(expected, rel=1e-12)
        weighted += stage["steps"] * expected
    assert report["exact_saving_with_importance"] == pytest.approx(1 - weighted / 40, rel=1e-12)
    assert report["exact_saving_with_importance"] < report["exact_saving"]


@pytest.mark.parametrize("argv, message", [
    (["--method", "sat"], "--train-steps"),
    (["--method", "est"], "--est-schedule"),
    (["--method", "raptr", "--raptr-schedule", "2,4:0.5,1"], "--train-steps"),
])
def test_missing_flags_fail_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit):
        est_plan.main(["--model", "tiny"] + argv)
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_dense_is_not_a_plan_method():
    with pytest.raises(SystemExit):
        est_plan.build_parser().parse_args(["--model", "tiny", "--method", "dense"])
