"""The sampled subnetwork forward/backward against an independent masking reference (zeroed heads and columns on
the dense model), so the gather path is checked by code that shares none of it."""
import math

import pytest
import torch
import torch.nn.functional as F

from est_megatron.config import SubnetConfig, model_preset
from est_megatron.model.transformer import Transformer
from est_megatron.subnet.plan import DENSE_LAYER, PlanSampler, StepPlan
from est_megatron.subnet.schedule import parse_schedule

torch.backends.cuda.matmul.allow_tf32 = False

CASES = {
    "llama-gqa": dict(preset="tiny", whole_groups=False),
    "llama-gqa-whole-groups": dict(preset="tiny", whole_groups=True),
    "llama-mha": dict(preset="tiny", whole_groups=False, overrides=dict(num_query_groups=4)),
    "gpt2": dict(preset="tiny-gpt2", whole_groups=False),
}


def build(case, seed=0, rates=(0.5, 0.5, 0.5), rescale=True):
    spec = CASES[case]
    cfg = model_preset(spec["preset"], **spec.get("overrides", {}))
    torch.manual_seed(seed)
    model = Transformer(cfg).double()
    schedule = parse_schedule("10:{},{},{}".format(*rates)).resolve(10)
    sampler = PlanSampler(cfg, SubnetConfig(whole_groups=spec["whole_groups"], rescale=rescale), schedule, seed=seed)
    return cfg, model, sampler


def reference_forward(model, cfg, input_ids, plan):
    """The full model with unsampled heads/columns zeroed and module outputs scaled as the plan says (1/p or 1),
    written from scratch from the paper's eqs. 5-7 (no index_select, no shared code with the model's blocks)."""
    b, s = input_ids.shape
    d, hq, hkv, dh, g = cfg.hidden_size, cfg.num_attention_heads, cfg.num_query_groups, cfg.head_dim, \
        cfg.heads_per_group
    x = model.embed.weight[input_ids]
    if not cfg.is_llama:
        x = x + model.pos_embed.weight[:s]
    pos = torch.arange(s, dtype=torch.float64)
    inv = 1.0 / cfg.rope_theta ** (torch.arange(0, dh, 2, dtype=torch.float64) / dh)
    ang = torch.outer(pos, inv)
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()

    def norm(mod, t):
        if cfg.is_llama:
            return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * mod.weight
        return F.layer_norm(t, (d,), mod.weight, mod.bias, cfg.norm_eps)

    def rope(t):
        t1, t2 = t[..., : dh // 2], t[..., dh // 2:]
        return t * cos + torch.cat([-t2, t1], -1) * sin

    causal = torch.ones(s, s, dtype=torch.bool).tril()
    for li, layer in enumerate(model.layers):
        lp = plan.layers[li]
        if not lp.active:
            continue
        h = norm(layer.attn_norm, x)
        w = layer.attn.qkv.weight.view(hkv, g + 2, dh, d)
        bias = None if layer.attn.qkv.bias is None else layer.attn.qkv.bias.view(hkv, g + 2, dh)
        heads_out = []
        for head in range(hq):
            grp, slot = divmod(head, g)
            q = h @ w[grp, slot].T
            k = h @ w[grp, g].T
            v = h @ w[grp, g + 1].T
            if bias is not None:
                q, k, v = q + bias[grp, slot], k + bias[grp, g], v + bias[grp, g + 1]
            if cfg.is_llama:
                q, k = rope(q), rope(k)
            att = (q @ k.transpose(-1, -2)) / math.sqrt(dh)
            att = att.masked_fill(~causal, float("-inf")).softmax(-1)
            keep = lp.query_heads is None or head in lp.query_heads.tolist()
            heads_out.append(att @ v * (1.0 if keep else 0.0))
        ctx = torch.cat(heads_out, -1)
        attn = ctx @ layer.attn.out.weight * lp.head_scale
        if layer.attn.out.bias is not None:
            attn = attn + layer.attn.out.bias
        x = x + attn
        h = norm(layer.mlp_norm, x)
        up = h @ layer.mlp.up.weight.T
        if layer.mlp.up.bias is not None:
            up = up + layer.mlp.up.bias
        if cfg.is_llama:
            gate, val = up.chunk(2, -1)
            act = F.silu(gate) * val
        else:
            act = 0.5 * up * (1 + torch.tanh(math.sqrt(2 / math.pi) * (up + 0.044715 * up ** 3)))
        mask = torch.zeros(cfg.ffn_hidden_size, dtype=torch.float64)
        if lp.mlp_columns is None:
            mask[:] = 1
        else:
            mask[lp.mlp_columns] = 1
        mlp = (act * mask) @ layer.mlp.down.weight * lp.mlp_scale
        if layer.mlp.down.bias is not None:
            mlp = mlp + layer.mlp.down.bias
        x = x + mlp
    x = norm(model.final_norm, x)
    return x @ model.output_weight.T


def tokens(cfg, seed=1, b=2, s=12):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (b, s), generator=gen)


def test_dense_plan_is_bitwise_the_dense_model():
    cfg, model, _ = build("llama-gqa")
    dense_plan = StepPlan(0, 0, tuple(DENSE_LAYER for _ in range(cfg.num_layers)), (1.0, 1.0, 1.0))
    sampler = PlanSampler(cfg, SubnetConfig(), parse_schedule("dense").resolve(5), seed=3)
    ids = tokens(cfg)
    expected = model(ids)
    assert torch.equal(model(ids, dense_plan), expected)
    assert sampler.plan(2).is_dense
    assert torch.equal(model(ids, sampler.plan(2)), expected)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("rates", [(0.5, 0.5, 0.5), (0.5, 0.5, 1.0), (0.75, 0.25, 1.0)])
@pytest.mark.parametrize("rescale", [True, False])
def test_sampled_forward_matches_masking_reference(case, rates, rescale):
    cfg, model, sampler = build(case, rates=rates, rescale=rescale)
    ids = tokens(cfg)
    for step in (0, 1):
        plan = sampler.plan(step)
        assert not plan.is_dense
        got = model(ids, plan)
        want = reference_forward(model, cfg, ids, plan)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradients_match_reference_and_unsampled_are_zero(case):
    cfg, model, sampler = build(case, rates=(0.5, 0.5, 1.0))
    ids = tokens(cfg)
    plan = sampler.plan(4)
    labels = tokens(cfg, seed=9)
    loss = F.cross_entropy(model(ids, plan).view(-1, cfg.vocab_size), labels.view(-1))
    grads = torch.autograd.grad(loss, list(model.parameters()))
    ref_loss = F.cross_entropy(reference_forward(model, cfg, ids, plan).view(-1, cfg.vocab_size), labels.view(-1))
    ref_grads = torch.autograd.grad(ref_loss, list(model.parameters()))
    for (name, _), got, want in zip(model.named_parameters(), grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12, msg=name)

    g, dh = cfg.heads_per_group, cfg.head_dim
    by_name = dict(zip([n for n, _ in model.named_parameters()], grads))
    for li, lp in enumerate(plan.layers):
        qkv_grad = by_name[f"layers.{li}.attn.qkv.weight"].view(cfg.num_query_groups, g + 2, dh, -1)
        out_grad = by_name[f"layers.{li}.attn.out.weight"].view(cfg.num_attention_heads, dh, cfg.hidden_size)
        kept = set(lp.query_heads.tolist())
        for head in range(cfg.num_attention_heads):
            grp, slot = divmod(head, g)
            q_zero = bool((qkv_grad[grp, slot] == 0).all())
            o_zero = bool((out_grad[head] == 0).all())
            assert q_zero == o_zero == (head not in kept), (li, head)
        kept_groups = {h // g for h in kept}
        for grp in range(cfg.num_query_groups):
            assert bool((qkv_grad[grp, g:] == 0).all()) == (grp not in kept_groups)
        cols = set(lp.mlp_columns.tolist())
        down_grad = by_name[f"layers.{li}.mlp.down.weight"]
        for col in range(cfg.ffn_hidden_size):
            assert bool((down_grad[col] == 0).all()) == (col not in cols)


def test_skipped_layer_is_identity_and_gets_no_gradient():
    cfg, model, sampler = build("llama-gqa", rates=(1.0, 1.0, 0.5))
    plan = sampler.plan(0)
    skipped = [i for i, lp in enumerate(plan.layers) if not lp.active]
    assert len(skipped) == cfg.num_layers // 2
    ids = tokens(cfg)
    captured = {}
    for i, layer in enumerate(model.layers):
        layer.register_forward_hook(lambda mod, inp, out, i=i: captured.__setitem__(i, (inp[0], out)))
    model(ids, plan).sum().backward()
    assert set(captured) == set(plan.active_layers)
    for i in skipped:
        assert all(p.grad is None for p in model.layers[i].parameters())
    for i in plan.active_layers:
        assert all(p.grad is not None for p in model.layers[i].parameters())

    # identity: removing the skipped layers from a dense model gives the same output
    active = torch.nn.ModuleList(model.layers[i] for i in plan.active_layers)
    full = model.layers
    model.layers = active
    try:
        dense_without_skipped = model(ids)
    finally:
        model.layers = full
    assert torch.equal(model(ids, plan), dense_without_skipped)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", sorted(CASES))
def test_cuda_bf16_sampled_step_matches_reference(case):
    """The CUDA path (bf16 autocast over fp32 weights, SDPA/flash-attn on the gathered heads) against the fp64
    masking reference on the CPU: logits and gradients within bf16 rounding, unsampled gradients exactly zero."""
    cfg, model, sampler = build(case, rates=(0.5, 0.5, 1.0))
    plan, ids, labels = sampler.plan(4), tokens(cfg, s=64), tokens(cfg, seed=9, s=64)
    cuda_model = Transformer(cfg).cuda()
    cuda_model.load_state_dict(model.state_dict())
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = cuda_model(ids.cuda(), plan.to("cuda"))
    loss = F.cross_entropy(logits.float().view(-1, cfg.vocab_size), labels.cuda().view(-1))
    grads = torch.autograd.grad(loss, list(cuda_model.parameters()))
    want = reference_forward(model, cfg, ids, plan)
    ref_loss = F.cross_entropy(want.view(-1, cfg.vocab_size), labels.view(-1))
    ref_grads = torch.autograd.grad(ref_loss, list(model.parameters()))

    def relative(a, b):
        a, b = a.detach().double().cpu(), b.detach()
        return float((a - b).norm() / b.norm().clamp_min(1e-30))

    assert relative(logits, want) < 2e-2
    for (name, _), got, ref in zip(model.named_parameters(), grads, ref_grads):
        assert relative(got, ref) < 5e-2, name
    by_name = dict(zip([n for n, _ in model.named_parameters()], grads))
    for li, lp in enumerate(plan.layers):
        down = by_name[f"layers.{li}.mlp.down.weight"]
        unsampled = torch.ones(cfg.ffn_hidden_size, dtype=torch.bool)
        unsampled[lp.mlp_columns] = False
        assert bool((down[unsampled.cuda()] == 0).all()), li


@pytest.mark.parametrize("tied", [False, True])
def test_output_projection_runs_as_its_own_module(tied):
    """The logits come from a module of their own that reads the output (or tied embedding) weight, so ZeRO-3
    gathers that weight for the logits only; it adds no parameter and no state-dict entry."""
    cfg = model_preset("tiny", tie_embeddings=tied)
    model = Transformer(cfg, seed=0)
    reads = []
    model.output_projection.register_forward_hook(lambda module, args, out: reads.append(out.shape))
    ids = torch.randint(0, cfg.vocab_size, (2, 8))
    logits = model(ids)
    assert reads == [logits.shape]
    assert not list(model.output_projection.parameters())
    assert not any(key.startswith("output_projection") for key in model.state_dict())
    assert model.output_weight is (model.embed.weight if tied else model.lm_head.weight)
