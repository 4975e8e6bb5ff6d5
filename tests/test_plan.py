"""Plan generation: reproducible from (seed, step), balanced counts, pack/unpack; presets and config errors."""
import subprocess
import sys

import pytest
import torch

from est_megatron.config import ModelConfig, SubnetConfig, model_preset
from est_megatron.errors import UsageError
from est_megatron.subnet.plan import PlanSampler, packed_capacity, unpack
from est_megatron.subnet.schedule import parse_schedule


def sampler_for(preset, schedule="tinyllama", steps=60, seed=7, **subnet):
    cfg = model_preset(preset)
    return cfg, PlanSampler(cfg, SubnetConfig(**subnet), parse_schedule(schedule).resolve(steps), seed)


def layer_indices(plan):
    return [(lp.active, None if lp.query_heads is None else lp.query_heads.tolist(),
             None if lp.mlp_columns is None else lp.mlp_columns.tolist()) for lp in plan.layers]


def test_plans_are_a_pure_function_of_seed_and_step():
    _, a = sampler_for("tinyllama-1.1b")
    _, b = sampler_for("tinyllama-1.1b")
    assert layer_indices(a.plan(3)) == layer_indices(b.plan(3))
    assert layer_indices(b.plan(5)) == layer_indices(a.plan(5))  # order of calls does not matter
    assert layer_indices(a.plan(3)) != layer_indices(a.plan(4))
    _, other_seed = sampler_for("tinyllama-1.1b", seed=8)
    assert layer_indices(other_seed.plan(3)) != layer_indices(a.plan(3))


def test_layers_are_sampled_independently():
    _, sampler = sampler_for("tinyllama-1.1b")
    plan = sampler.plan(0)
    heads = {tuple(lp.query_heads.tolist()) for lp in plan.layers}
    cols = {tuple(lp.mlp_columns.tolist()) for lp in plan.layers}
    assert len(heads) > 1 and len(cols) == len(plan.layers)


def test_tinyllama_stage_counts_are_balanced():
    cfg, sampler = sampler_for("tinyllama-1.1b")
    stage1 = sampler.plan(0)
    assert stage1.rates == (0.5, 0.5, 0.5)
    assert len(stage1.active_layers) == 11
    g = cfg.heads_per_group
    for lp in stage1.layers:
        q = lp.query_heads.tolist()
        assert q == sorted(q) and len(set(q)) == len(q) == 16
        assert lp.kv_heads is None  # every key/value head stays
        for grp in range(cfg.num_query_groups):
            assert sum(1 for h in q if h // g == grp) == g // 2
        cols = lp.mlp_columns
        assert cols.numel() == 2816 and torch.equal(cols, cols.sort().values)
        stratum = cfg.ffn_hidden_size // 8
        assert torch.bincount(cols // stratum, minlength=8).tolist() == [stratum // 2] * 8
        assert lp.head_scale == 1.0 and lp.mlp_scale == 1.0  # unscaled unless SubnetConfig.rescale
    stage2 = sampler.plan(10)
    assert stage2.stage == 1 and len(stage2.active_layers) == 22 and stage2.rates == (0.5, 0.5, 1.0)
    stage3 = sampler.plan(25)
    assert stage3.is_dense and all(lp.query_heads is None and lp.mlp_columns is None for lp in stage3.layers)


def test_rescale_scales_kept_outputs_by_the_inverse_rate():
    cfg, sampler = sampler_for("tinyllama-1.1b", schedule="1:0.25,0.5,1", steps=4, rescale=True)
    plan = sampler.plan(0)
    assert plan.rates == (0.25, 0.5, 1.0)
    assert all(lp.head_scale == 4.0 and lp.mlp_scale == 2.0 for lp in plan.layers)


def test_whole_group_sampling_keeps_groups_whole_and_balanced():
    cfg, sampler = sampler_for("tinyllama-1.1b", whole_groups=True)
    for lp in sampler.plan(1).layers:
        kv = lp.kv_heads.tolist()
        assert len(kv) == 2 and kv[0] in (0, 1) and kv[1] in (2, 3)  # one group from each of 2 strata
        expected = [grp * cfg.heads_per_group + i for grp in kv for i in range(cfg.heads_per_group)]
        assert lp.query_heads.tolist() == expected


def test_layer_strata_balance_the_skipped_layers():
    cfg, sampler = sampler_for("gpt2-124m", schedule="gpt2", steps=150)
    assert sampler.subnet.layer_strata == 2
    for step in range(5):
        active = sampler.plan(step).active_layers
        assert sum(1 for i in active if i < 6) == sum(1 for i in active if i >= 6) == 3


@pytest.mark.parametrize("preset,kw", [("tinyllama-1.1b", {}), ("tinyllama-1.1b", {"whole_groups": True}),
                                       ("gpt2-124m", {}), ("tiny", {}), ("tiny", {"rescale": True})])
@pytest.mark.parametrize("step", [0, 20, 50])
def test_pack_unpack_round_trip(preset, kw, step):
    cfg, sampler = sampler_for(preset, **kw)
    plan = sampler.plan(step)
    packed = plan.pack(cfg)
    assert packed.dtype == torch.int64 and packed.numel() == packed_capacity(cfg)
    back = unpack(packed, cfg)
    assert (back.step, back.stage, back.rates) == (plan.step, plan.stage, plan.rates)
    for a, b in zip(plan.layers, back.layers):
        assert a.active == b.active and a.head_scale == b.head_scale and a.mlp_scale == b.mlp_scale
        for attr in ("query_heads", "kv_heads", "mlp_columns"):
            x, y = getattr(a, attr), getattr(b, attr)
            assert (x is None and y is None) or torch.equal(x, y)
    assert back.checksum(cfg) == plan.checksum(cfg)
    assert sampler.plan(step + 1).checksum(cfg) != plan.checksum(cfg) or plan.is_dense


def test_preset_parameter_counts_are_exact():
    assert model_preset("tinyllama-1.1b").num_parameters() == 1_100_048_384
    assert model_preset("gpt2-124m").num_parameters() == 124_439_808
    assert model_preset("llama2-7b").num_parameters() == 6_738_415_616


@pytest.mark.parametrize("preset", ["tiny", "tiny-gpt2"])
def test_parameter_count_matches_the_built_model(preset):
    from est_megatron.model.transformer import Transformer
    cfg = model_preset(preset)
    assert sum(p.numel() for p in Transformer(cfg).parameters()) == cfg.num_parameters()


@pytest.mark.parametrize("fields,needle", [
    (dict(hidden_size=100, num_attention_heads=3), "hidden_size 100 is not divisible by num_attention_heads 3"),
    (dict(num_attention_heads=4, num_query_groups=3, hidden_size=64), "num_query_groups 3"),
    (dict(num_layers=0), "num_layers must be positive"),
    (dict(flavour="bert"), "flavour"),
])
def test_impossible_model_config_names_the_field(fields, needle):
    with pytest.raises(UsageError, match=needle):
        ModelConfig(**fields).validate()


def test_strata_that_do_not_divide_are_rejected():
    with pytest.raises(UsageError, match="mlp_strata 5 does not divide ffn_hidden_size 176; set --est-mlp-strata"):
        SubnetConfig(mlp_strata=5).resolved(model_preset("tiny"))


def test_unknown_preset_is_one_line():
    with pytest.raises(UsageError, match="unknown model preset 'gpt5'"):
        model_preset("gpt5")


def test_usage_error_reaches_the_user_as_one_line():
    code = ("from est_megatron.errors import exit_on_usage_error\nfrom est_megatron.config import model_preset\n"
            "exit_on_usage_error(lambda: model_preset('tiny', hidden_size=66))()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: hidden_size 66 is not divisible by num_attention_heads 4; choose sizes with an integer head "
        "dimension"]
