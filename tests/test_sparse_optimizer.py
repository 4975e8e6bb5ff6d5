"""The sparse AdamW step: what a plan does not train stays bit for bit (value and both moments, no weight decay),
what it trains gets AdamW's update with its own step count, on plain parameters, on ZeRO-style flat partitions cut
anywhere, and under DeepSpeed ZeRO-1/2/3, tensor and pipeline parallelism (tests/sparse_step_worker.py)."""
import copy
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from dist_utils import REPO, free_port
from est_megatron.config import SubnetConfig, model_preset
from est_megatron.model.transformer import Transformer
from est_megatron.subnet.plan import PlanSampler
from est_megatron.subnet.schedule import parse_schedule
from est_megatron.optim import selected_adamw, selected_adamw_c, torch_routes
from est_megatron.optim.param_state import Segment, Unit, rectangles
from est_megatron.optim.partitions import own_segments
from est_megatron.optim.sparse_adamw import SparseAdamW
from reference_training import MaskedAdamW, decay_groups, lr_factors, trained_masks

HYPER = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8)


def tiny_setup(seed=5, bias=False):
    cfg = model_preset("tiny", bias=bias)
    sampler = PlanSampler(cfg, SubnetConfig().resolved(cfg),
                          parse_schedule("0.5,0.8,1:0.5,0.5,0.5/0.5,0.5,1/1,1,1").resolve(10), seed)
    tokens = torch.randint(0, cfg.vocab_size, (4, 17), generator=torch.Generator().manual_seed(seed))
    return cfg, sampler, tokens


def sparse_optimizer(model, segments=None, groups=None, lr_power=0.0):
    opt = SparseAdamW(groups or decay_groups(model, 0.1), weight_decay=0.1, lr_power=lr_power, **HYPER)
    opt.bind(list(model.named_parameters()), list(model.layers), segments or own_segments(list(model.parameters())))
    return opt


def synthetic_grads(model, plan, seed):
    """Random gradients, zero outside the plan as the model's own would be: the same for any copy of the model, so
    comparisons over many steps do not feed rounding differences back through the loss."""
    generator = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        p.grad = torch.randn(p.shape, generator=generator) * 1e-3 * trained_masks(model, plan)[name]


def backward(model, tokens, plan):
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model(tokens[:, :-1], plan=plan, labels=tokens[:, 1:]).backward()


CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"))


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("bias,route", [(False, "kernel"), (True, "kernel"), (False, "torch"), (False, "views"),
                                        (False, "copies")])
def test_one_step_leaves_the_rest_and_matches_adamw_inside(bias, route, device, monkeypatch):
    """`route`: how the trained rows are updated on `device`: selected_adamw's kernel (C on the CPU, Triton on
    CUDA), or with the kernel off torch's routes: their defaults (long runs of rows as views of the fused kernel,
    scattered rows copied out and back), every run of rows as a view, or every block's rows copied."""
    if route == "kernel":
        used = []
        monkeypatch.setattr(selected_adamw, "adamw_blocks_",
                            lambda *a, run=selected_adamw.adamw_blocks_: used.append(1) or run(*a))
    else:
        monkeypatch.setattr(selected_adamw, "available", lambda like: False)
    if route == "views":
        monkeypatch.setitem(torch_routes.PIECE_ELEMENTS, device, 1)
    if route == "copies":
        monkeypatch.setitem(torch_routes.PIECE_ELEMENTS, device, 1 << 30)
    cfg, sampler, tokens = tiny_setup(bias=bias)
    tokens = tokens.to(device)
    model = Transformer(cfg, None, 3).to(device)
    reference = copy.deepcopy(model)
    opt = sparse_optimizer(model)
    adamw = torch.optim.AdamW(decay_groups(reference, 0.1), fused=True, **HYPER)  # as SparseAdamW on whole tensors
    backward(model, tokens, None)  # a dense first step: every moment becomes non-zero
    backward(reference, tokens, None)
    opt.set_plan(None)
    opt.step()
    adamw.step()

    plan = sampler.plan(0)
    before = {n: (p.detach().clone(), opt.state[p]["exp_avg"].clone(), opt.state[p]["exp_avg_sq"].clone())
              for n, p in model.named_parameters()}
    backward(model, tokens, plan.to(device))
    backward(reference, tokens, plan.to(device))
    opt.set_plan(plan)
    opt.step()
    adamw.step()
    masks = trained_masks(model, plan)
    untouched = 0
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        mask = masks[name].to(device)
        got = (p.detach(), opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"])
        want = (q.detach(), adamw.state[q]["exp_avg"], adamw.state[q]["exp_avg_sq"])
        for g, b, w in zip(got, before[name], want):
            assert torch.equal(g[~mask], b[~mask]), name
            torch.testing.assert_close(g[mask], w[mask], rtol=1e-5, atol=1e-8)
        untouched += int((~mask).sum())
    if route == "kernel":
        assert used, "the kernel route never ran the kernel (is a C compiler installed?)"
    assert untouched > 0.4 * sum(p.numel() for name, p in model.named_parameters() if name.startswith("layers"))


@pytest.mark.parametrize("lr_power", [0.0, 1.0])
def test_per_unit_counts_equal_a_per_element_reference_over_stages(lr_power):
    """Eight steps through all three stages: every element equals MaskedAdamW (per-element counts), with the
    learning rate of sampled units scaled by their sampling rate to `lr_power` or not."""
    cfg, sampler, _ = tiny_setup(seed=9)
    model = Transformer(cfg, None, 4)
    reference = copy.deepcopy(model)
    opt = sparse_optimizer(model, lr_power=lr_power)
    masked = MaskedAdamW(reference, weight_decay=0.1, **HYPER)
    for step in range(8):
        plan = sampler.plan(step)
        synthetic_grads(model, plan, step)
        synthetic_grads(reference, plan, step)
        opt.set_plan(plan)
        opt.step()
        masked.step(trained_masks(reference, plan), factors=lr_factors(reference, plan, lr_power))
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)
        torch.testing.assert_close(opt.state[p]["exp_avg"], masked.state[name][0], rtol=1e-5, atol=1e-9, msg=name)
    counts = opt.state_dict()["unit_steps"]
    assert counts["embed.weight"].tolist() == [8]
    assert len(set(counts["layers.0.attn.qkv.weight"].tolist())) > 1  # rows were trained unequally often


def test_flat_partitions_cut_mid_row_equal_the_parameters():
    """ZeRO-like: both decay groups flattened and cut into 3 'ranks' at arbitrary elements (mid-row, mid-parameter);
    stepping the partitions equals stepping the parameters (a misplaced element would be off by about lr)."""
    cfg, sampler, _ = tiny_setup(seed=2)
    model = Transformer(cfg, None, 6)
    plain = copy.deepcopy(model)
    plain_opt = sparse_optimizer(plain)

    groups, flats, segments = [], [], {}
    for group in decay_groups(model, 0.1):
        total = sum(p.numel() for p in group["params"])
        cuts = [0, total // 3 + 17, 2 * total // 3 - 5, total]
        for lo, hi in zip(cuts, cuts[1:]):
            flat = torch.zeros(hi - lo)
            offset = 0
            segs = []
            for p in group["params"]:
                a, b = max(lo, offset), min(hi, offset + p.numel())
                if a < b:
                    segs.append(Segment(id(p), a - lo, a - offset, b - a))
                    flat[a - lo: b - lo] = p.detach().reshape(-1)[a - offset: b - offset]
                offset += p.numel()
            segments[id(flat)] = segs
            flats.append((flat, segs))
            groups.append({"params": [flat], "weight_decay": group["weight_decay"]})
    opt = SparseAdamW(groups, weight_decay=0.1, **HYPER)
    opt.bind(list(model.named_parameters()), list(model.layers), segments)
    by_id = {id(p): p for p in model.parameters()}
    for step in range(5):
        plan = sampler.plan(step)
        synthetic_grads(model, plan, step)
        synthetic_grads(plain, plan, step)
        for flat, segs in flats:
            flat.grad = torch.zeros_like(flat)
            for seg in segs:
                flat.grad[seg.offset: seg.offset + seg.numel] = \
                    by_id[seg.param].grad.reshape(-1)[seg.start: seg.start + seg.numel]
        opt.set_plan(plan)
        plain_opt.set_plan(plan)
        opt.step()
        plain_opt.step()
        for flat, segs in flats:  # DeepSpeed copies the partitions back into the parameters
            for seg in segs:
                by_id[seg.param].data.reshape(-1)[seg.start: seg.start + seg.numel] = \
                    flat[seg.offset: seg.offset + seg.numel]
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):  # equal up to the rounding of the
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)  # bias correction (float vs tensor)


@pytest.mark.parametrize("shape", [(7, 5), (9,)])
def test_rectangles_tile_any_range(shape):
    unit = Unit("w", shape, 0)
    numel = 1
    for n in shape:
        numel *= n
    index = torch.arange(numel).reshape(shape if len(shape) > 1 else (shape[0], 1))
    for start in range(numel):
        for length in (1, 4, numel - start):
            if length > numel - start:
                continue
            covered = []
            for offset, rows, cols, row_slice in rectangles(start, length, unit):
                flat = torch.arange(start + offset, start + offset + rows * cols).view(rows, cols)
                covered.append(flat.reshape(-1))
                row0, col0 = divmod(start + offset, unit.row_length)
                assert torch.equal(flat, index[row0: row0 + rows, col0: col0 + cols])
                assert (row_slice.start, row_slice.stop) == (row0, row0 + rows)
            assert torch.equal(torch.cat(covered), torch.arange(start, start + length))


def test_step_counts_travel_in_the_state_dict():
    cfg, sampler, tokens = tiny_setup()
    model = Transformer(cfg, None, 3)
    opt = sparse_optimizer(model)
    for step in range(2):
        backward(model, tokens, sampler.plan(step))
        opt.set_plan(sampler.plan(step))
        opt.step()
    saved = opt.state_dict()
    fresh = sparse_optimizer(copy.deepcopy(model))
    fresh.load_state_dict(saved)
    for name, count in fresh.state_dict()["unit_steps"].items():
        assert torch.equal(count, saved["unit_steps"][name]), name


@pytest.mark.parametrize("layout,nproc", [
    ("--zero 2", 1), ("--zero 1", 2), ("--zero 3", 2), ("--zero 1 --tp 2", 2), ("--zero 1 --pp 2", 2)])
def test_deepspeed_sparse_step_element_by_element(layout, nproc):
    worker = os.path.join(REPO, "tests", "sparse_step_worker.py")
    cmd = [sys.executable, worker] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         worker]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    result = subprocess.run(cmd + layout.split(), env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert output.count("SPARSE STEP OK") == nproc, output[-3000:]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton (in torch's CUDA builds)")
def test_gpu_route_under_the_triton_interpreter():
    """The GPU route (selected_adamw's kernel over just the trained units, this step's device tables) run on the CPU
    by Triton's interpreter: the one-step, multi-stage and mid-row-partition tests above pass through it."""
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    selection = "(one_step and cpu and kernel) or per_unit_counts or partitions_cut_mid_row"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", selection],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "5 passed" in result.stdout, result.stdout[-3000:] + result.stderr[-2000:]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton (in torch's CUDA builds)")
@pytest.mark.parametrize("param_dtype,grad_dtype", [("fp32", "fp32"), ("bf16", "bf16"), ("fp32", "bf16")])
def test_gpu_kernel_compiles_for_a_hopper_gpu(param_dtype, grad_dtype):
    """What the interpreter does not check: Triton compiles the kernel to a cubin (sm_90), no GPU needed."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {"blocks": "*i64", "scalars": "*fp32", "tiles": "*i64", "decay": "fp32",
                 "beta1": "fp32", "beta2": "fp32", "eps": "fp32", "P_DTYPE": "constexpr", "G_DTYPE": "constexpr",
                 "BLOCK_R": "constexpr", "BLOCK_C": "constexpr"}
    dtypes = {"fp32": tl.float32, "bf16": tl.bfloat16}
    source = ASTSource(fn=selected_adamw._adamw_blocks_kernel, signature=signature,
                       constexprs={"P_DTYPE": dtypes[param_dtype], "G_DTYPE": dtypes[grad_dtype],
                                   "BLOCK_R": selected_adamw.BLOCK_ROWS, "BLOCK_C": selected_adamw.BLOCK_COLS})
    assert triton.compile(source, target=GPUTarget("cuda", 90, 32)).asm["cubin"]


def test_without_a_c_compiler_the_cpu_kernel_warns_and_steps_fall_back(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "false")  # a "compiler" that fails every build
    monkeypatch.setenv("EST_MEGATRON_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(selected_adamw_c, "_library", None)
    with pytest.warns(UserWarning, match="could not be built"):
        assert not selected_adamw.available(torch.zeros(2, 2))
    assert not list(tmp_path.glob("*.so"))


def test_step_bias_correction_counts_every_step_for_every_unit():
    """The LazyAdam ablation: one count for all units, the optimizer's steps, so early rare rows move less."""
    cfg, sampler, _ = tiny_setup(seed=4)
    models = [Transformer(cfg, None, 2) for _ in range(2)]
    opts = [SparseAdamW(decay_groups(m, 0.1), weight_decay=0.1, bias_correction=mode, **HYPER)
            for m, mode in zip(models, ("unit", "step"))]
    for model, opt in zip(models, opts):
        opt.bind(list(model.named_parameters()), list(model.layers), own_segments(list(model.parameters())))
        for step in range(3):
            synthetic_grads(model, sampler.plan(step), step)
            opt.set_plan(sampler.plan(step))
            opt.step()
    assert all(set(c.tolist()) == {3} for c in opts[1].state_dict()["unit_steps"].values())
    unit_qkv, step_qkv = (dict(m.named_parameters())["layers.0.attn.qkv.weight"] for m in models)
    assert not torch.allclose(unit_qkv, step_qkv)
