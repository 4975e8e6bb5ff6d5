"""FLOPs model: the paper's savings, exact dense FLOPs against independent formulas, plans, and tools/est_plan.py."""
import importlib.util
import json
import os

import pytest

from est_megatron.config import SubnetConfig, model_preset
from est_megatron.subnet.flops import (SubnetCounts, dense_step_flops, paper_relative_cost,
                                       schedule_savings, step_flops)
from est_megatron.subnet.plan import PlanSampler, unpack
from est_megatron.subnet.schedule import parse_schedule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_est_plan():
    spec = importlib.util.spec_from_file_location("est_plan", os.path.join(ROOT, "tools", "est_plan.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("model,schedule,steps,percent", [
    ("gpt2-124m", "gpt2", 150000, 26.7),
    ("tinyllama-1.1b", "tinyllama", 60000, 25.0),
    ("gpt2-124m", "one-stage", 150000, 50.0),
    ("gpt2-124m", "two-stage-a", 150000, 16.7),
    ("gpt2-124m", "two-stage-b", 150000, 23.3),
    ("gpt2-124m", "two-stage-c", 150000, 30.0),
    ("gpt2-124m", "three-stage-layers", 150000, 26.7),
    ("gpt2-124m", "table1", 150000, 41.7),
])
def test_paper_savings_match_the_paper(model, schedule, steps, percent):
    cfg = model_preset(model)
    savings = schedule_savings(cfg, parse_schedule(schedule).resolve(steps))
    assert abs(100 * savings.paper_saving - percent) < 0.05
    # embeddings and the LM head are never sampled, so the exact saving is lower
    assert 0 < savings.exact_saving < savings.paper_saving


def test_exact_tinyllama_saving_is_a_little_below_the_paper():
    savings = schedule_savings(model_preset("tinyllama-1.1b"), parse_schedule("tinyllama").resolve(60000))
    assert 0.5 < 100 * (savings.paper_saving - savings.exact_saving) < 3.0
    assert [s.realised for s in savings.stages] == [s.nominal for s in savings.stages]  # 0.5 is exact here
    assert [s.steps for s in savings.stages] == [10000, 15000, 35000]


def test_dense_tinyllama_matches_a_formula_from_the_parameter_count():
    cfg = model_preset("tinyllama-1.1b")
    d, layers, vocab = cfg.hidden_size, cfg.num_layers, cfg.vocab_size
    # every parameter but the embedding table and the RMSNorm weights is a matmul weight used once per token
    matmul_params = cfg.num_parameters() - vocab * d - (2 * layers + 1) * d
    for batch, seq in [(1, 2048), (3, 512)]:
        tokens = batch * seq
        expected = 3 * (2 * tokens * matmul_params + 4 * batch * seq * seq * d * layers)
        assert dense_step_flops(cfg, batch, seq) == expected
    # 6 * 2048 * 1,034,420,224 matmul weights + 12 * 2048^3 * 22 for the attention scores
    assert dense_step_flops(cfg, 1, 2048) == 12_710_955_712_512 + 2_267_742_732_288


def test_dense_gpt2_matches_megatron_formula():
    """Narayanan et al. (2021): 72 B s L h^2 (1 + s / 6h + V / 12hL) for GPT with ffn = 4h."""
    cfg = model_preset("gpt2-124m")
    h, layers, vocab = cfg.hidden_size, cfg.num_layers, cfg.vocab_size
    for batch, seq in [(1, 1024), (8, 256)]:
        expected = 72 * batch * seq * layers * h * h * (1 + seq / (6 * h) + vocab / (12 * h * layers))
        assert dense_step_flops(cfg, batch, seq) == pytest.approx(expected, rel=1e-12)
        assert dense_step_flops(cfg, 1, seq) / seq == pytest.approx(expected / (batch * seq), rel=1e-12)


def test_skipping_half_the_layers_halves_only_the_layer_part():
    cfg = model_preset("tinyllama-1.1b")
    batch, seq = 2, 1024
    outside = step_flops(cfg, SubnetCounts(32, 4, 5632, 0), batch, seq)
    assert outside == 3 * 2 * batch * seq * cfg.hidden_size * cfg.vocab_size  # only the LM head
    dense = dense_step_flops(cfg, batch, seq)
    half = step_flops(cfg, SubnetCounts(32, 4, 5632, 11), batch, seq)
    assert half == outside + (dense - outside) // 2


@pytest.mark.parametrize("whole_groups", [False, True])
@pytest.mark.parametrize("rates", [(0.5, 0.5, 0.5), (1.0, 1.0, 0.5), (0.5, 0.5, 1.0), (1.0, 1.0, 1.0)])
def test_sampled_plans_count_like_their_realised_counts(rates, whole_groups):
    cfg = model_preset("tiny")
    sampler = PlanSampler(cfg, SubnetConfig(whole_groups=whole_groups),
                          parse_schedule(f"1:{','.join(map(str, rates))}").resolve(10), seed=3)
    plan = sampler.plan(4)
    counts = SubnetCounts.from_sampler(sampler, rates)
    flops = step_flops(cfg, counts, 2, 32)
    assert step_flops(cfg, plan, 2, 32) == flops
    assert step_flops(cfg, unpack(plan.pack(cfg), cfg), 2, 32) == flops
    assert counts.rates(cfg) == plan.rates


def test_gqa_keeps_key_value_heads_unless_whole_groups_are_sampled():
    cfg = model_preset("tinyllama-1.1b")
    batch, seq = 1, 2048
    inside = step_flops(cfg, SubnetCounts(16, 4, 5632, 22), batch, seq)
    whole = step_flops(cfg, SubnetCounts(16, 2, 5632, 22), batch, seq)
    # K and V projections of the two dropped key/value heads, forward and backward, in every layer
    assert inside - whole == 3 * 22 * 2 * batch * seq * cfg.hidden_size * 2 * 2 * cfg.head_dim


def test_paper_relative_cost_weighs_mha_and_mlp_by_shape():
    gpt2 = model_preset("gpt2-124m")  # C_H = 4d^2, C_M = 8d^2
    assert paper_relative_cost(gpt2, (0.5, 1.0, 1.0)) == pytest.approx(10 / 12)
    assert paper_relative_cost(gpt2, (1.0, 0.5, 0.5)) == pytest.approx(0.5 * 8 / 12)
    llama = model_preset("tinyllama-1.1b")  # C_H = d (2d + 2 * 256), C_M = 3 d * 5632
    assert paper_relative_cost(llama, (1.0, 0.5, 1.0)) == pytest.approx((4608 + 8448) / (4608 + 16896))
    assert paper_relative_cost(llama, (0.5, 0.5, 0.5)) == 0.25


def test_realised_rates_are_reported_next_to_nominal():
    cfg = model_preset("tinyllama-1.1b")
    savings = schedule_savings(cfg, parse_schedule("1:0.3,0.3,0.3").resolve(100))
    stage = savings.stages[0]
    assert stage.nominal == (0.3, 0.3, 0.3)
    # 0.3 of 8 heads per group -> 2; of each of 8 column strata of 704 -> 211; of 22 layers -> 7
    assert stage.realised == (8 / 32, 8 * 211 / 5632, 7 / 22)
    assert stage.paper_cost == pytest.approx(0.3 * 0.3)


def test_est_plan_prints_parameters_stages_and_totals(capsys):
    est_plan = load_est_plan()
    est_plan.main(["--model", "tinyllama-1.1b", "--schedule", "tinyllama", "--train-steps", "60000"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("model tinyllama-1.1b: 1,100,048,384 parameters (vocabulary 32,000)")
    rows = [line.split() for line in out if line.lstrip()[:1].isdigit()]
    assert [row[:4] for row in rows] == [["1", "[0,", "10000)", "10,000"], ["2", "[10000,", "25000)", "15,000"],
                                         ["3", "[25000,", "60000)", "35,000"]]
    assert rows[0][4:8] == ["0.5/0.5", "0.5/0.5", "0.5/0.5", "0.2500"]
    assert out[-1] == "total saving: 25.0% by the paper's formula (eq. 8-10), 23.3% by exact FLOPs"

    est_plan.main(["--model", "gpt2-124m", "--schedule", "gpt2", "--train-steps", "150000"])
    out = capsys.readouterr().out.splitlines()
    assert "124,439,808 parameters" in out[0]
    assert out[-1].startswith("total saving: 26.7% by the paper's formula")


def test_est_plan_absolute_schedule_defaults_train_steps_and_prints_json(capsys):
    load_est_plan().main(["--model", "gpt2-124m", "--schedule", "20k,70k,150k:0.5,0.5,0.5/0.5,0.5,1/1,1,1",
                          "--seq-length", "512", "--micro-batch-size", "4", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["train_steps"] == 150000 and report["seq"] == 512 and report["batch"] == 4
    assert round(100 * report["paper_saving"], 1) == 26.7
    assert report["dense_step_flops"] == dense_step_flops(model_preset("gpt2-124m"), 4, 512)


@pytest.mark.parametrize("argv,needle", [
    (["--schedule", "20k,10k,150k:1,1,1/1,1,1/1,1,1"], "strictly increase"),
    (["--schedule", "gpt2"], "pass --train-steps"),
    (["--schedule", "gpt2", "--train-steps", "100", "--seq-length", "4096"], "--seq-length 4096"),
])
def test_est_plan_bad_input_is_one_line(capsys, argv, needle):
    with pytest.raises(SystemExit) as exit_info:
        load_est_plan().main(["--model", "gpt2-124m"] + argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and err.count("\n") == 1
