"""Two optimizer steps of DeepSpeed on a tiny Llama, checked element by element (run by tests/test_sparse_optimizer.py
under torchrun or plain python; prints "SPARSE STEP OK" on success).

Step 1 trains the dense model at learning rate 0 (every Adam moment becomes non-zero, the weights stay, so both
steps' gradients agree with the reference to rounding), step 2 a sampled EST plan at 1e-2. Every rank rebuilds
the single-process model from the same seed and steps it with torch.optim.AdamW on the same batch, as reference.
After step 2, with --est-optimizer sparse, an element outside the plan must hold exactly its value and both moments
after step 1 (bit for bit, read back through DeepSpeed's safe_get_* API) and an element inside must equal
torch.optim.AdamW's second step. (--est-optimizer dense, AdamW over zero-filled gradients, is held to a plain
torch loop by tests/test_loop_reference.py.)
"""
import argparse
import os
import sys
from types import SimpleNamespace

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from est_megatron.config import SubnetConfig, model_preset  # noqa: E402
from est_megatron.model.transformer import Transformer  # noqa: E402
from est_megatron.parallel.build import build_model  # noqa: E402
from est_megatron.parallel.pipeline import global_named_parameters  # noqa: E402
from est_megatron.parallel.state import ParallelState  # noqa: E402
from est_megatron.subnet.plan import PlanSampler  # noqa: E402
from est_megatron.subnet.schedule import parse_schedule  # noqa: E402
from est_megatron.tensor_parallel.sharding import shard  # noqa: E402
from reference_training import decay_groups, trained_masks  # noqa: E402
from est_megatron.training.distributed import init_distributed, teardown  # noqa: E402
from est_megatron.training.zero3_grads import clear_stale_zero3_grads  # noqa: E402
from est_megatron.training.ds_config import load_ds_config, resolve_zero3_auto  # noqa: E402
from est_megatron.training.optimizer_setup import bind_sparse_optimizer, build_optimizer  # noqa: E402

SEED, SEQ, MICRO, GLOBAL = 11, 16, 2, 4


def options():
    return SimpleNamespace(method="est", est_optimizer="sparse", est_bias_correction="unit", est_lr_power=0.0,
                           lr=1e-2, min_lr=1e-2,
                           adam_beta1=0.9, adam_beta2=0.95, adam_eps=1e-6, weight_decay=0.1,
                           global_batch_size=GLOBAL, micro_batch_size=MICRO, clip_grad=0.0)


def step_one_at_rest(optimizer):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: float(step > 0))


def reference(cfg, batches, plan):
    """(masks of plan, state after step 1, state after step 2) of the single-process model under torch AdamW."""
    model = Transformer(cfg, None, SEED)
    opts = options()
    adamw = torch.optim.AdamW(decay_groups(model, opts.weight_decay), fused=True, lr=opts.lr,
                              betas=(opts.adam_beta1, opts.adam_beta2), eps=opts.adam_eps)
    schedule = step_one_at_rest(adamw)
    states = []
    for step_plan in (None, plan):
        adamw.zero_grad(set_to_none=False)  # a skipped layer steps on zeros, as under DeepSpeed
        for inputs, labels in batches:
            (model(inputs, plan=step_plan, labels=labels) / len(batches)).backward()
        adamw.step()
        schedule.step()
        states.append({name: (p.detach().clone(), adamw.state[p]["exp_avg"].clone(),
                              adamw.state[p]["exp_avg_sq"].clone()) for name, p in model.named_parameters()})
    return trained_masks(model, plan), states[0], states[1]


def gather(engine, named):
    """{name: (fp32 value, exp_avg, exp_avg_sq)} of this rank's (TP-local) parameters, via DeepSpeed's API."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state
    if hasattr(engine.optimizer, "_hp_optimizer_states_linked"):
        # ZeRO-1/2 links the moments to the parameters after stepping its first group only, when the second
        # group's moments do not exist yet; link again now that every group has them
        engine.optimizer._hp_optimizer_states_linked = False
        engine.optimizer._lazy_init_hp_params_optimizer_state()
    return {name: tuple(t.detach().clone().reshape(getattr(p, "ds_shape", p.shape)) for t in (
        safe_get_full_fp32_param(p), safe_get_full_optimizer_state(p, "exp_avg"),
        safe_get_full_optimizer_state(p, "exp_avg_sq"))) for name, p in named}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--zero", type=int, default=2)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    args = parser.parse_args()
    import deepspeed

    info = init_distributed()
    cfg = model_preset("tiny")
    layout = ParallelState(args.tp, args.pp)
    dp_size, dp_rank = layout.get_data_parallel_world_size(), layout.get_data_parallel_rank()
    subnet = SubnetConfig().resolved(cfg)
    plan = PlanSampler(cfg, subnet, parse_schedule("1:0.5,0.5,0.5").resolve(10), SEED).plan(1)
    tokens = torch.randint(0, cfg.vocab_size, (GLOBAL, SEQ + 1), generator=torch.Generator().manual_seed(SEED))
    all_batches = [(chunk[:, :-1], chunk[:, 1:]) for chunk in tokens.split(MICRO)]
    masks, after_1, after_2 = reference(cfg, all_batches, plan)

    opts = options()
    ds_config = resolve_zero3_auto(load_ds_config(os.path.join(REPO, "ds_configs", f"zero{args.zero}.json"), opts,
                                                  dp_size, False), cfg, args.tp)
    model, plans = build_model(cfg, layout, SEED, subnet, args.zero, ds_config=ds_config)
    optimizer = build_optimizer(model, opts)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                           lr_scheduler=step_one_at_rest(optimizer), config=ds_config,
                                           dist_init_required=False, mpu=None if args.pp > 1 else layout)
    bind_sparse_optimizer(optimizer, engine, model, cfg, layout)
    named = global_named_parameters(model) if args.pp > 1 else list(model.named_parameters())
    accumulation = GLOBAL // (MICRO * dp_size)
    mine = [all_batches[dp_rank + dp_size * i] for i in range(accumulation)]  # the sampler's interleaving
    states = []
    for step_plan in (None, plan):
        optimizer.set_plan(step_plan)
        if args.zero == 3:
            clear_stale_zero3_grads(engine)  # as the training loop does: a skipped layer's gradient is zero
        if args.pp > 1:
            plans.set(step_plan)
            engine.train_batch(iter(mine))
        else:
            for inputs, labels in mine:
                engine.backward(engine(inputs, plan=step_plan, labels=labels))
                engine.step()
        states.append(gather(engine, named))

    failures, untouched = [], 0
    for name, _ in named:
        local = lambda full: shard(name, full, cfg, layout.tp_rank, layout.tp_size)  # noqa: E731
        mask = local(masks[name])
        for what, got, before, expected in zip(("value", "exp_avg", "exp_avg_sq"), states[1][name],
                                               states[0][name], (local(t) for t in after_2[name])):
            if not torch.equal(got[~mask], before[~mask]):
                failures.append(f"{name} {what}: changed outside the plan")
            # rounding differences in the reduced gradients, amplified where |grad| is near eps, stay far below a
            # misplaced update (about lr = 1e-2) or a wrong bias correction (a factor near 2)
            atol = 1e-3 * opts.lr if what == "value" else 1e-4 * float(expected.abs().max())
            if not torch.allclose(got[mask], expected[mask], rtol=1e-4, atol=atol):
                err = (got[mask] - expected[mask]).abs().max().item()
                failures.append(f"{name} {what}: differs from AdamW inside the plan (max error {err:.3g})")
        untouched += int((~mask).sum())
    if not untouched:
        failures.append("the plan trains every element: nothing was checked outside it")
    if failures:
        print("\n".join(failures[:20]), flush=True)
        raise SystemExit(1)
    print(f"SPARSE STEP OK rank {info['rank']}: {len(named)} tensors, {untouched} elements outside the plan",
          flush=True)
    teardown(engine)


if __name__ == "__main__":
    main()
