"""ZeRO-3 partitioned initialisation: built inside deepspeed.zero.Init, the model on 2 processes holds half of every
large parameter per rank, starts from exactly the weights of a one-process run (the seeded init, no ZeRO), and
trains to the same losses as ZeRO-3 on one process under an EST schedule.

The file is also the worker that torchrun starts.
"""
import argparse
import json
import os
import subprocess
import sys

import pytest

SEED = 1234
STEPS = 3
SEQ = 16
GLOBAL_BATCH = 4
MICRO_BATCHES = 2


def worker(args):
    import deepspeed
    import torch
    import torch.distributed as dist

    from est_megatron.config import SubnetConfig, model_preset
    from est_megatron.model.transformer import Transformer
    from est_megatron.parallel.build import build_model
    from est_megatron.parallel.state import initialize_model_parallel
    from est_megatron.subnet.broadcast import broadcast_plan
    from est_megatron.subnet.plan import PlanSampler
    from est_megatron.subnet.schedule import parse_schedule
    from est_megatron.training.distributed import teardown

    torch.set_num_threads(1)
    state = initialize_model_parallel(1, 1, backend="gloo")
    dp_size, dp_rank = state.get_data_parallel_world_size(), state.get_data_parallel_rank()
    cfg = model_preset("tiny")
    ds_config = {"train_micro_batch_size_per_gpu": GLOBAL_BATCH // (dp_size * MICRO_BATCHES),
                 "gradient_accumulation_steps": MICRO_BATCHES, "gradient_clipping": 1.0,
                 "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
                 "zero_allow_untested_optimizer": True, "steps_per_print": 10 ** 6}
    model, _ = build_model(cfg, state, SEED, zero_stage=3, ds_config=ds_config)
    local = {n: p.ds_tensor.numel() for n, p in model.named_parameters()}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=3e-3),
                                      config=ds_config, mpu=state)
    reference = Transformer(cfg, seed=SEED).state_dict()
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        same_start = all(torch.equal(p.detach(), reference[n]) for n, p in engine.module.named_parameters())

    sampler = PlanSampler(cfg, SubnetConfig(), parse_schedule("0.5,1:0.5,0.5,0.5/1,1,1").resolve(STEPS), SEED)
    losses = []
    for step in range(STEPS):
        plan = broadcast_plan(sampler.plan(step) if dist.get_rank() == 0 else None, cfg)
        engine.optimizer.grad_partitions_flat_buffer.zero_()  # as the training loop does for skipped layers
        gen = torch.Generator().manual_seed(10_000 + step)
        tokens = torch.randint(0, cfg.vocab_size, (GLOBAL_BATCH, SEQ + 1), generator=gen)
        per_rank = GLOBAL_BATCH // dp_size
        mine = tokens[dp_rank * per_rank:(dp_rank + 1) * per_rank]
        loss = torch.zeros(())
        for micro in mine.chunk(MICRO_BATCHES):
            micro_loss = engine(micro[:, :-1], plan=plan, labels=micro[:, 1:])
            engine.backward(micro_loss)
            engine.step()
            loss += micro_loss.detach() / MICRO_BATCHES
        dist.all_reduce(loss)
        losses.append(float(loss) / dp_size)
    if dist.get_rank() == 0:
        with open(args.out, "w") as f:
            json.dump({"same_start": same_start, "losses": losses, "local_numel": local,
                       "full_numel": {n: t.numel() for n, t in reference.items()}}, f)
    teardown(engine)  # exiting with live gloo groups can abort ("terminate called without an active exception")


def run(tmp_path, procs):
    out = tmp_path / f"zero3_n{procs}.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
           os.path.abspath(__file__), "--worker", f"--out={out}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    with open(out) as f:
        return json.load(f)


def test_zero3_on_two_processes_starts_and_trains_like_one(tmp_path):
    one, two = run(tmp_path, 1), run(tmp_path, 2)
    assert one["same_start"] and two["same_start"]
    for name, numel in two["full_numel"].items():
        assert two["local_numel"][name] == -(-numel // 2), name  # each rank holds its half, never the whole
    assert one["losses"][-1] < one["losses"][0]
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5, abs=1e-6)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--out", required=True)
    worker(parser.parse_args())
