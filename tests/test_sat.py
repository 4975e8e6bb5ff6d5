"""SAT: importance metrics against hand-computed values, top-k, sampling distribution, LORS, balanced plans."""
import itertools
import math

import numpy as np
import pytest
import torch

from est_megatron.config import SubnetConfig, model_preset
from est_megatron.errors import UsageError
from est_megatron.model.transformer import Transformer
from est_megatron.subnet.plan import unpack
from est_megatron.subnet.sat import (InputStats, SatConfig, SatPlanner, column_scores, head_scores,
                                     importance_flops, layer_input_stats, lors_rate, neuron_scores, select)

W = torch.tensor([[1.0, -2.0], [3.0, 0.0], [0.0, 1.0]])  # 3 neurons (rows) over 2 input features
X = torch.tensor([[1.0, 2.0], [3.0, -2.0]])  # 2 tokens: mean (2, 0), per-feature L2 (sqrt 10, sqrt 8)
STATS = InputStats(X.mean(0), X.norm(dim=0))


@pytest.mark.parametrize("metric, expected", [
    ("uniform", [1.0, 1.0, 1.0]),
    ("magnitude", [math.sqrt(5), 3.0, 1.0]),
    ("wanda", [math.sqrt(10) + 2 * math.sqrt(8), 3 * math.sqrt(10), math.sqrt(8)]),
    ("maxip", [2.0, 6.0, 0.0]),
])
def test_neuron_scores_match_hand_computed_values(metric, expected):
    torch.testing.assert_close(neuron_scores(W, STATS, metric), torch.tensor(expected))


def test_head_and_column_scores_aggregate_q_k_v_and_gate_up():
    cfg = model_preset("tiny", hidden_size=8, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=6)
    hd = cfg.head_dim  # 2; fused rows per group: q0, q1, k, v (2 rows each)
    qkv = torch.arange(2 * 4 * hd * 8, dtype=torch.float32).view(-1, 8) % 7 - 3
    rows = qkv.norm(dim=1).view(2, 4, hd).sum(-1)  # magnitude score per (group, slot)
    heads, groups = head_scores(cfg, qkv, None, "magnitude")
    for h in range(4):
        g, slot = divmod(h, 2)
        assert heads[h] == pytest.approx(float(rows[g, slot] + rows[g, 2] + rows[g, 3]), rel=1e-6)
    torch.testing.assert_close(groups, rows.sum(1))
    up = torch.randn(12, 8)
    stats = InputStats(torch.randn(8), torch.rand(8))
    per_row = (up @ stats.mean).abs()
    torch.testing.assert_close(column_scores(cfg, up, stats, "maxip"), per_row[:6] + per_row[6:])


def test_stats_are_the_normed_layer_inputs():
    cfg = model_preset("tiny")
    torch.manual_seed(0)
    model = Transformer(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 8))
    stats = layer_input_stats(model, ids)
    x = model.embed(ids)
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            a = layer.attn_norm(x)
            torch.testing.assert_close(stats[i][0].mean, a.reshape(-1, 64).mean(0))
            torch.testing.assert_close(stats[i][0].l2, a.reshape(-1, 64).norm(dim=0))
            x = x + layer.attn(a)
            m = layer.mlp_norm(x)
            torch.testing.assert_close(stats[i][1].mean, m.reshape(-1, 64).mean(0))
            x = x + layer.mlp(m)


def test_topk_keeps_the_highest_scores_in_every_stratum():
    scores = torch.tensor([[0.1, 5.0, 3.0, -1.0], [7.0, 0.0, 2.0, 9.0]])
    assert select(scores, 2, "topk", 1.0, None).tolist() == [1, 2, 4, 7]


def test_sampling_follows_softmax_without_replacement():
    """Pairs drawn (keep 2 of 4) against the exact Plackett-Luce pair probabilities of softmax(s / T).

    Chi-square with 5 degrees of freedom (6 pairs); the critical value at significance 0.001 is 20.515.
    """
    logits = torch.tensor([0.0, 0.5, 1.0, 2.0])
    for temperature in (1.0, 2.0):
        p = torch.softmax(logits.double() / temperature, 0).numpy()
        pairs = list(itertools.combinations(range(4), 2))
        expected = np.array([p[i] * p[j] / (1 - p[i]) + p[j] * p[i] / (1 - p[j]) for i, j in pairs])
        assert expected.sum() == pytest.approx(1.0)
        rng = np.random.default_rng(1234)
        draws = 20000
        # every row is its own stratum: `draws` independent draws in one call
        chosen = (select(logits.repeat(draws, 1), 2, "sampling", temperature, rng) % 4).view(draws, 2)
        observed = np.array([int(((chosen[:, 0] == i) & (chosen[:, 1] == j)).sum()) for i, j in pairs])
        chi2 = ((observed - draws * expected) ** 2 / (draws * expected)).sum()
        assert chi2 < 20.515, (temperature, chi2)
        # and the statistic is sensitive: the wrong temperature is rejected
        q = torch.softmax(logits.double() / (3.0 - temperature), 0).numpy()
        wrong = np.array([q[i] * q[j] / (1 - q[i]) + q[j] * q[i] / (1 - q[j]) for i, j in pairs])
        assert ((observed - draws * wrong) ** 2 / (draws * wrong)).sum() > 20.515


def test_lors_matches_its_formula():
    # defaults: r_max 0.5, t_d = T/2, 4 ladders of lengths 1:2:3:4 of the second half
    expected = {0: 0.5, 49: 0.5, 50: 0.375, 54: 0.375, 55: 0.25, 64: 0.25, 65: 0.125, 79: 0.125, 80: 0.0, 99: 0.0}
    for step, rate in expected.items():
        assert lors_rate(step, 100, 0.5, 50, 4) == rate, step
    # T = 1000, t_d = 400, N = 3: k(k-1) 600 <= 12 (t - 400) -> drops at 400, 500, 700
    for step, rate in {399: 0.6, 400: 0.4, 499: 0.4, 500: 0.2, 699: 0.2, 700: 0.0, 999: 0.0}.items():
        assert lors_rate(step, 1000, 0.6, 400, 3) == pytest.approx(rate), step
    assert lors_rate(999, 1000, 0.6, 400, 0) == 0.6  # no ladders: constant
    planner = SatPlanner(model_preset("tiny"), SubnetConfig(), SatConfig(), 100, seed=0)
    assert [planner.rate(s) for s in (10, 52, 60, 70, 90)] == [0.5, 0.375, 0.25, 0.125, 0.0]


@pytest.mark.parametrize("metric", ["maxip", "wanda", "magnitude", "uniform"])
def test_plan_is_balanced_deterministic_and_runs_on_the_gather_path(metric):
    cfg = model_preset("tiny")  # 4 heads in 2 groups, 176 columns in 8 strata of 22
    torch.manual_seed(0)
    model = Transformer(cfg)
    ids = torch.randint(0, cfg.vocab_size, (3, 16))
    planner = SatPlanner(cfg, SubnetConfig(), SatConfig(metric=metric), 100, seed=5)
    plan = planner.plan(3, model, ids)
    assert plan.rates == (0.5, 0.5, 1.0)
    for layer in plan.layers:
        assert (layer.query_heads // 2).tolist() == [0, 1]  # one query head per key/value group
        assert torch.bincount(layer.mlp_columns // 22, minlength=8).tolist() == [11] * 8
        assert layer.head_scale == layer.mlp_scale == 1.0  # plain omission by default
    again = planner.plan(3, model, ids)
    assert plan.checksum(cfg) == again.checksum(cfg)
    back = unpack(plan.pack(cfg), cfg)
    assert all(layer.head_scale == 1.0 for layer in back.layers)
    torch.testing.assert_close(model(ids, plan=back), model(ids, plan=plan))
    assert planner.plan(99, model, ids).is_dense


def test_topk_magnitude_plan_keeps_the_largest_columns():
    cfg = model_preset("tiny", num_layers=1)
    model = Transformer(cfg)
    planner = SatPlanner(cfg, SubnetConfig(mlp_strata=1), SatConfig(metric="magnitude", selection="topk",
                                                                    ladders=0), 10, seed=0)
    layer = planner.plan(0, model, None).layers[0]
    w = model.layers[0].mlp.up.weight
    score = w[:176].norm(dim=1) + w[176:].norm(dim=1)
    assert layer.mlp_columns.tolist() == sorted(score.topk(88).indices.tolist())


def test_importance_cost_is_small_against_a_step_and_bad_flags_fail():
    from est_megatron.subnet.flops import dense_step_flops
    cfg = model_preset("tinyllama-1.1b")
    # one sequence of 2048 tokens out of a 16-sequence micro-batch: well under a tenth of the step
    assert importance_flops(cfg, 1, 2048, "maxip") < 0.05 * dense_step_flops(cfg, 16, 2048)
    with pytest.raises(UsageError, match="sat-metric"):
        SatConfig(metric="nope").validate()
    with pytest.raises(UsageError, match="r-max"):
        SatConfig(r_max=1.0).validate()
