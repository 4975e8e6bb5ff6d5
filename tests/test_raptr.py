"""RAPTR plans: scheduled depth, balanced strata, always-kept first/last layers, residual scale, packing."""
import pytest
import torch

from est_megatron.config import SubnetConfig, model_preset
from est_megatron.errors import UsageError
from est_megatron.model.transformer import Transformer
from est_megatron.subnet.plan import unpack
from est_megatron.subnet.raptr import RaptrMethod, parse_raptr_schedule

CFG12 = model_preset("tiny", num_layers=12)


def planner(text, steps=100, keep=True, scale=False, strata=None, cfg=CFG12):
    subnet = SubnetConfig(layer_strata=strata)
    resolved = parse_raptr_schedule(text).resolve(cfg, subnet, steps, keep_first_last=keep)
    return RaptrMethod(cfg, subnet, resolved, seed=3, keep_first_last=keep, scale_residual=scale)


@pytest.mark.parametrize("text", ["6,8,10,12:0.25,0.5,0.75,1", "quarters"])
def test_depth_follows_the_schedule_and_keeps_first_and_last(text):
    p = planner(text)
    assert p.schedule.depths == (6, 8, 10, 12)
    seen = set()
    for step in range(100):
        plan = p.plan(step)
        active = plan.active_layers
        assert len(active) == (6, 8, 10, 12)[step // 25]
        assert plan.stage == step // 25 and plan.rates == (1.0, 1.0, len(active) / 12)
        assert 0 in active and 11 in active
        # balanced: 2 strata of 6 layers (default for 12 layers) keep equal counts
        assert sum(i < 6 for i in active) == len(active) // 2
        seen.add(active)
        assert all(layer.query_heads is None and layer.mlp_columns is None for layer in plan.layers)
    assert len(seen) > 30  # redrawn every step
    assert p.plan(99).is_dense and p.plan(7).active_layers == p.plan(7).active_layers  # pure function of step


def test_without_keep_first_last_every_layer_is_drawn_uniformly():
    p = planner("6,12:0.5,1", steps=2000, keep=False, strata=1)
    counts = torch.zeros(12)
    for step in range(1000):
        counts[list(p.plan(step).active_layers)] += 1
    assert counts.min() > 380 and counts.max() < 620  # each layer kept with p = 1/2


def test_residual_scale_is_inverse_keep_probability():
    p = planner("6,12:0.5,1", scale=True, strata=1)
    plan = p.plan(0)
    for i, layer in enumerate(plan.layers):
        if layer.active:
            assert layer.residual_scale == (1.0 if i in (0, 11) else 10 / 4)
    p = planner("6,12:0.5,1", keep=False, scale=True, strata=1)
    assert {layer.residual_scale for layer in p.plan(0).layers if layer.active} == {12 / 6}
    assert all(layer.residual_scale == 1.0 for layer in planner("6,12:0.5,1").plan(0).layers)


def test_plan_packs_and_the_model_honours_the_residual_scale():
    cfg = model_preset("tiny", num_layers=4)
    p = planner("2,4:0.5,1", keep=False, scale=True, strata=1, cfg=cfg)
    plan = p.plan(1)
    back = unpack(plan.pack(cfg), cfg)
    assert back.active_layers == plan.active_layers
    assert [layer.residual_scale for layer in back.layers] == [layer.residual_scale for layer in plan.layers]
    torch.manual_seed(0)
    model = Transformer(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 8))
    # reference: run the kept layers by hand with scaled branches
    x = model.embed(ids)
    for i in plan.active_layers:
        layer = model.layers[i]
        x = x + 2.0 * layer.attn(layer.attn_norm(x))
        x = x + 2.0 * layer.mlp(layer.mlp_norm(x))
    expected = torch.nn.functional.linear(model.final_norm(x), model.output_weight)
    torch.testing.assert_close(model(ids, plan=back), expected)


@pytest.mark.parametrize("text, match", [
    ("5,12:0.5,1", "multiple"), ("8,6:0.5,1", "decrease"), ("6,8:0.5", "boundaries"), ("nope", "unknown"),
    ("6,14:0.5,1", "outside")])
def test_bad_schedules_are_usage_errors(text, match):
    with pytest.raises(UsageError, match=match):
        planner(text)
