"""Activation recompute under pipeline parallelism (PP=2, DeepSpeed 1F1B, gloo): every setting trains to the same
losses, gradient norms and weights, bit for bit, as the stored-activation run, under EST plans that drop layers,
heads and columns. The file is also the worker that torchrun starts.
"""
import argparse
import json
import os
import subprocess
import sys

SEED = 1234
STEPS = 2
SEQ = 16
MICRO_BATCHES = 2  # in flight in the pipeline, so recomputed and stored micro-batches interleave
SETTINGS = {"none": (None, None), "selective": ("selective", None), "full": ("full", None), "full-1": ("full", 1)}


def batches(cfg, step):
    import torch
    gen = torch.Generator().manual_seed(100 + step)
    tokens = torch.randint(0, cfg.vocab_size, (2 * MICRO_BATCHES, SEQ + 1), generator=gen)
    return list(zip(tokens[:, :-1].chunk(MICRO_BATCHES), tokens[:, 1:].chunk(MICRO_BATCHES)))


def worker(out):
    import deepspeed
    import torch
    import torch.distributed as dist

    from est_megatron.config import SubnetConfig, model_preset
    from est_megatron.model.recompute import Recompute
    from est_megatron.parallel.build import build_model, global_named_parameters
    from est_megatron.parallel.state import initialize_model_parallel
    from est_megatron.subnet.plan import PlanSampler
    from est_megatron.subnet.schedule import parse_schedule
    from est_megatron.training.distributed import teardown

    torch.set_num_threads(1)
    state = initialize_model_parallel(1, 2, backend="gloo")
    results = {}
    for preset in ("tiny", "tiny-gpt2"):
        cfg = model_preset(preset)
        sampler = PlanSampler(cfg, SubnetConfig(), parse_schedule("0.5,1:0.5,0.5,0.5/0.5,0.5,1").resolve(STEPS),
                              SEED)
        for name, (granularity, layers) in SETTINGS.items():
            model, plans = build_model(cfg, state, SEED, recompute=Recompute(granularity, layers))
            marked = sum(getattr(m, "recompute", False) or getattr(m, "recompute_core", False)
                         for m in model.modules())
            config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": MICRO_BATCHES,
                      "zero_optimization": {"stage": 1}, "gradient_clipping": 1.0,
                      "zero_allow_untested_optimizer": True, "steps_per_print": 10 ** 6}
            engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=3e-3),
                                              config=config)
            losses, norms = [], []
            for step in range(STEPS):
                plans.set(sampler.plan(step))  # every rank draws the same plan from (seed, step)
                losses.append(float(engine.train_batch(iter(batches(cfg, step)))))
                norms.append(float(engine.get_global_grad_norm()))
            weights = {k: v.detach().clone() for k, v in global_named_parameters(model)}
            torch.save(weights, f"{out}.{preset}.{name}.rank{dist.get_rank()}.pt")
            results[f"{preset}/{name}"] = {"losses": losses, "norms": norms, "marked": marked}
            engine.destroy()
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, results)
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)
    teardown()


def test_recompute_matches_stored_activations_under_pipeline_parallelism(tmp_path):
    import torch
    out = str(tmp_path / "pp2.json")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.abspath(__file__), "--worker", f"--out={out}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    with open(out) as f:
        ranks = json.load(f)
    for rank, results in enumerate(ranks):
        for preset in ("tiny", "tiny-gpt2"):
            reference = results[f"{preset}/none"]
            assert reference["marked"] == 0 and reference["losses"][0] != reference["losses"][1]
            want = torch.load(f"{out}.{preset}.none.rank{rank}.pt")
            for name in ("selective", "full", "full-1"):
                got = results[f"{preset}/{name}"]
                assert got["marked"] > 0, (preset, name)  # this stage's layers really recompute
                assert got["losses"] == reference["losses"] and got["norms"] == reference["norms"], (preset, name)
                weights = torch.load(f"{out}.{preset}.{name}.rank{rank}.pt")
                assert weights.keys() == want.keys()
                for key, value in want.items():
                    assert torch.equal(weights[key], value), (preset, name, rank, key)
    full, partial = ranks[0]["tiny/full"]["marked"], ranks[0]["tiny/full-1"]["marked"]
    assert partial < full  # --recompute-num-layers 1: only the first layer of each stage


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--out")
    worker(parser.parse_args().out)
