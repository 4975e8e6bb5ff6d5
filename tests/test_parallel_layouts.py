"""TP x PP and TP x DP runs through DeepSpeed (ZeRO-1, gloo, CPU) match the single-process run. (TP and PP
alone, through the launcher: tests/test_parallel_training.py.)

Each layout trains the same tiny models from the same seed on the same global batches for 3 steps, with a dense
schedule and a stage-1 EST schedule (0.5, 0.5, 0.5), and reports per-step losses, global gradient norms and
whether every rank held the identical plan. The file is also the worker that torchrun starts.
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
MICRO_BATCHES = 2  # gradient accumulation steps per optimizer step (the pipeline's micro-batches)
SCHEDULES = {"dense": "dense", "half": "1:0.5,0.5,0.5"}


def global_batch(cfg, step):
    import torch
    gen = torch.Generator().manual_seed(10_000 + step)
    tokens = torch.randint(0, 32, (GLOBAL_BATCH, SEQ + 1), generator=gen) * (cfg.vocab_size // 32)  # learnable
    return tokens[:, :-1], tokens[:, 1:]


def micro_batches(cfg, step, dp_rank, dp_size):
    """This data-parallel rank's micro-batches of the step's global batch."""
    ids, labels = global_batch(cfg, step)
    per_rank = GLOBAL_BATCH // dp_size
    ids, labels = ids[dp_rank * per_rank:(dp_rank + 1) * per_rank], labels[dp_rank * per_rank:(dp_rank + 1) * per_rank]
    return list(zip(ids.chunk(MICRO_BATCHES), labels.chunk(MICRO_BATCHES)))


def worker(args):
    import deepspeed
    import torch
    import torch.distributed as dist

    from est_megatron.config import SubnetConfig, model_preset
    from est_megatron.model.transformer import Transformer
    from est_megatron.parallel.pipeline import build_pipeline_model
    from est_megatron.parallel.state import initialize_model_parallel
    from est_megatron.subnet.broadcast import broadcast_plan, check_plan_consistency
    from est_megatron.subnet.plan import PlanSampler
    from est_megatron.subnet.schedule import parse_schedule
    from est_megatron.tensor_parallel.plan_localization import PlanHolder
    from est_megatron.training.distributed import teardown

    torch.set_num_threads(1)
    state = initialize_model_parallel(args.tp, args.pp, backend="gloo")
    dp_size, dp_rank = state.get_data_parallel_world_size(), state.get_data_parallel_rank()
    results = {}
    for model_name in args.models.split(","):
        cfg = model_preset(model_name)
        for schedule in args.schedules.split(","):
            sampler = PlanSampler(cfg, SubnetConfig(), parse_schedule(SCHEDULES[schedule]).resolve(STEPS), SEED)
            ds_config = {"train_micro_batch_size_per_gpu": GLOBAL_BATCH // (dp_size * MICRO_BATCHES),
                         "gradient_accumulation_steps": MICRO_BATCHES, "zero_optimization": {"stage": 1},
                         "gradient_clipping": 1.0, "zero_allow_untested_optimizer": True, "steps_per_print": 10 ** 6}
            plans = PlanHolder(cfg, state.tp_rank, state.tp_size)
            if args.pp > 1:
                model = build_pipeline_model(cfg, state, plans, seed=SEED)
                mpu = None
            else:
                model = Transformer(cfg, state.tp_group, seed=SEED)
                mpu = state
            optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
            engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config, mpu=mpu)
            losses, norms, checksums = [], [], []
            for step in range(STEPS):
                plan = broadcast_plan(sampler.plan(step) if dist.get_rank() == 0 else None, cfg)
                check_plan_consistency(plan, cfg)
                checksums.append(plan.checksum(cfg))
                batches = micro_batches(cfg, step, dp_rank, dp_size)
                if args.pp > 1:
                    plans.set(plan)
                    loss = engine.train_batch(iter(batches)).detach().float()  # already the data-parallel mean
                else:
                    loss = torch.zeros(())
                    for ids, labels in batches:
                        micro_loss = engine(ids, plan=plan, labels=labels)
                        engine.backward(micro_loss)
                        engine.step()
                        loss += micro_loss.detach() / len(batches)
                    dist.all_reduce(loss, group=state.get_data_parallel_group())
                    loss /= dp_size
                losses.append(float(loss))
                norms.append(float(engine.get_global_grad_norm()))
            results[f"{model_name}/{schedule}"] = {"losses": losses, "norms": norms, "plans": checksums}
            engine.destroy()
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, results)
    if dist.get_rank() == 0:
        with open(args.out, "w") as f:
            json.dump(gathered, f)
    teardown()  # exiting with live gloo groups can abort ("terminate called without an active exception")


def run_layout(tmp_path, procs, tp=1, pp=1, models="tiny", schedules="dense,half"):
    out = tmp_path / f"tp{tp}_pp{pp}_n{procs}.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
           os.path.abspath(__file__), "--worker", f"--tp={tp}", f"--pp={pp}", f"--models={models}",
           f"--schedules={schedules}", f"--out={out}"]
    # generous: a cold cache makes DeepSpeed compile its CPU communication op first (about 90 s)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    with open(out) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """TP=1 x PP=1 x DP=1: the reference every layout must reproduce."""
    return run_layout(tmp_path_factory.mktemp("base"), 1, models="tiny,tiny-gpt2")[0]


def assert_matches(ranks, baseline):
    for results in ranks:
        for key, got in results.items():
            want = baseline[key]
            assert got["plans"] == want["plans"], key  # every rank of the world held the reference's plan
            assert got["losses"] == pytest.approx(want["losses"], abs=1e-5, rel=0), key
            assert got["norms"] == pytest.approx(want["norms"], rel=1e-5, abs=1e-7), key


def test_baseline_trains_and_plans_differ_by_schedule(baseline):
    for model in ("tiny", "tiny-gpt2"):
        dense, half = baseline[f"{model}/dense"], baseline[f"{model}/half"]
        assert dense["losses"][-1] < dense["losses"][0]
        assert dense["losses"][1:] != pytest.approx(half["losses"][1:], abs=1e-4)
        assert len(set(half["plans"])) == STEPS  # a fresh subnetwork every step


def test_tensor_2_by_pipeline_2_matches_single_process(baseline, tmp_path):
    assert_matches(run_layout(tmp_path, 4, tp=2, pp=2, models="tiny,tiny-gpt2"), baseline)


def test_tensor_2_by_data_2_matches_single_process(baseline, tmp_path):
    assert_matches(run_layout(tmp_path, 4, tp=2), baseline)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--models", default="tiny")
    parser.add_argument("--schedules", default="dense,half")
    parser.add_argument("--out", required=True)
    worker(parser.parse_args())
