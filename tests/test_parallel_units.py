"""Single-process checks of the parallel pieces: layout errors, plan localisation, weight sharding
(the loss: tests/test_chunked_loss.py)."""
import pytest
import torch

from est_megatron.config import SubnetConfig, model_preset
from est_megatron.errors import UsageError
from est_megatron.model.transformer import Transformer
from est_megatron.model.init import full_part, initialize_from_seed
from est_megatron.subnet.plan import PlanSampler
from est_megatron.subnet.schedule import parse_schedule
from est_megatron.tensor_parallel.layout import validate_layout
from est_megatron.tensor_parallel.plan_localization import localize_plan
from est_megatron.tensor_parallel.sharding import is_tensor_parallel, shard


@pytest.mark.parametrize("kwargs, flag", [
    (dict(tensor_parallel=3), "attention heads"),
    (dict(model="tiny", overrides=dict(num_attention_heads=8, num_query_groups=2, hidden_size=64),
          tensor_parallel=4), "key/value heads"),
    (dict(pipeline_parallel=3), "--pipeline-model-parallel-size 3 does not divide the 4 layers"),
    (dict(tensor_parallel=2, pipeline_parallel=2, world_size=6), "world size 6"),
    (dict(pipeline_parallel=2, zero_stage=2), "ZeRO stage 2"),
    (dict(pipeline_parallel=2, zero_stage=3), "ZeRO stage 3"),
    (dict(tensor_parallel=2, subnet=SubnetConfig(mlp_strata=1)), "--est-mlp-strata"),
    (dict(pipeline_parallel=2, subnet=SubnetConfig(layer_strata=1)), "--est-layer-strata"),
    (dict(model="tiny-gpt2", tensor_parallel=4, subnet=SubnetConfig(head_strata=2)), "--est-head-strata"),
])
def test_invalid_layouts_name_the_flag(kwargs, flag):
    cfg = model_preset(kwargs.pop("model", "tiny"), **kwargs.pop("overrides", {}))
    with pytest.raises(UsageError, match=flag.replace("-", r"\-")) as err:
        validate_layout(cfg, subnet_cfg=kwargs.pop("subnet", None), **kwargs)
    assert "\n" not in str(err.value)


def test_valid_layouts_pass():
    validate_layout(model_preset("tinyllama-1.1b"), 4, 2, world_size=16, subnet_cfg=SubnetConfig(layer_strata=2),
                    zero_stage=1)  # 22 layers: the default single layer stratum needs --est-layer-strata 2
    validate_layout(model_preset("tiny"), 2, 2, world_size=8, subnet_cfg=SubnetConfig(), zero_stage=1)


@pytest.mark.parametrize("model, whole", [("tinyllama-1.1b", False), ("tinyllama-1.1b", True), ("tiny-gpt2", True)])
def test_localised_plans_are_balanced_and_cover_the_global_plan(model, whole):
    cfg = model_preset(model)
    tp = 2
    sampler = PlanSampler(cfg, SubnetConfig(whole_groups=whole), parse_schedule("1:0.5,0.5,0.5").resolve(4), 3)
    plan = sampler.plan(1)
    local = [localize_plan(plan, cfg, r, tp) for r in range(tp)]
    q_per, g_per, f_per = cfg.num_attention_heads // tp, cfg.num_query_groups // tp, cfg.ffn_hidden_size // tp
    for i, layer in enumerate(plan.layers):
        parts = [p.layers[i] for p in local]
        assert len({p.query_heads.numel() for p in parts}) == 1 and len({p.mlp_columns.numel() for p in parts}) == 1
        assert torch.equal(torch.cat([p.query_heads + r * q_per for r, p in enumerate(parts)]), layer.query_heads)
        assert torch.equal(torch.cat([p.mlp_columns + r * f_per for r, p in enumerate(parts)]), layer.mlp_columns)
        if layer.kv_heads is not None:
            assert torch.equal(torch.cat([p.kv_heads + r * g_per for r, p in enumerate(parts)]), layer.kv_heads)
        assert all(p.head_scale == layer.head_scale and p.mlp_scale == layer.mlp_scale for p in parts)
        assert all(p.query_heads.max() < q_per and p.mlp_columns.max() < f_per for p in parts)


@pytest.mark.parametrize("model", ["tiny", "tiny-gpt2"])
def test_shards_reassemble_the_seeded_full_weights(model):
    cfg = model_preset(model, vocab_size=511)  # not divisible by 2: the last shard is padded
    full = Transformer(cfg)
    initialize_from_seed(full.named_parameters(), cfg, 5)
    expected = {**full_part(cfg, "embed", 5), **full_part(cfg, "layers.1", 5), **full_part(cfg, "head", 5)}
    state = full.state_dict()
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name
        parts = [shard(name, tensor, cfg, r, 2) for r in range(2)]
        if not is_tensor_parallel(name):
            assert all(torch.equal(p, tensor) for p in parts)
        elif name in ("embed.weight", "lm_head.weight"):
            assert torch.equal(torch.cat(parts)[:511], tensor) and not torch.cat(parts)[511:].any()
        elif name.endswith("mlp.up.weight") and cfg.is_llama:  # [gate; up] -> [gate_r; up_r] per rank
            f = cfg.ffn_hidden_size
            gates = torch.cat([p[: f // 2] for p in parts])
            ups = torch.cat([p[f // 2:] for p in parts])
            assert torch.equal(torch.cat([gates, ups]), tensor)
        else:  # QKV groups, input rows of the output and down projections
            assert torch.equal(torch.cat(parts), tensor)

