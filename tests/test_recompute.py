"""Activation recompute (selective and full) gives the gradients of the stored-activation run, bit for bit, under
an EST plan, on one process and under tensor parallelism (TP=2, gloo); and it does keep fewer activations.

The file is also the worker that torchrun starts for the TP=2 case.
"""
import argparse
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from est_megatron.config import SubnetConfig, model_preset
from est_megatron.errors import UsageError
from est_megatron.model.recompute import Recompute
from est_megatron.model.transformer import Transformer
from est_megatron.subnet.plan import PlanSampler
from est_megatron.subnet.schedule import parse_schedule

SEED = 1234
SETTINGS = {"none": Recompute(), "selective": Recompute("selective"), "full": Recompute("full"),
            "full-2": Recompute("full", 2)}


def est_plan(cfg, rates=(0.5, 0.5, 0.5)):
    schedule = parse_schedule("1:{},{},{}".format(*rates)).resolve(4)
    return PlanSampler(cfg, SubnetConfig(), schedule, SEED).plan(1)


def batch(cfg):
    gen = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, cfg.vocab_size, (2, 17), generator=gen)
    return tokens[:, :-1], tokens[:, 1:]


def gradients(cfg, setting, plan, tp_group=None):
    """Gradients of one forward/backward and the bytes autograd saved for the backward pass."""
    model = Transformer(cfg, tp_group, seed=SEED)
    SETTINGS[setting].apply(model)
    ids, labels = batch(cfg)
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(ids, plan=plan, labels=labels)
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, sum(saved)


@pytest.mark.parametrize("preset", ["tiny", "tiny-gpt2"])
def test_recompute_gives_identical_gradients_under_an_est_plan(preset):
    cfg = model_preset(preset)
    plan = est_plan(cfg)
    assert not plan.is_dense and not all(layer.active for layer in plan.layers)
    reference, stored = gradients(cfg, "none", plan)
    for setting in ("selective", "full", "full-2"):
        grads, saved = gradients(cfg, setting, plan)
        assert grads.keys() == reference.keys()
        for name, grad in reference.items():
            assert torch.equal(grads[name], grad), (setting, name)
        assert saved < stored, setting  # recompute does drop activations
    dense, _ = gradients(cfg, "none", None)
    assert any(not torch.equal(dense[n], g) for n, g in reference.items())  # the plan mattered


def test_recompute_flags_are_checked():
    def args(**kw):
        return SimpleNamespace(**dict(dict(recompute_activations=False, recompute_granularity=None,
                                           recompute_num_layers=None), **kw))

    assert Recompute.from_args(args(recompute_activations=True)) == Recompute("selective")
    assert Recompute.from_args(args(recompute_granularity="full", recompute_num_layers=3)) == Recompute("full", 3)
    with pytest.raises(UsageError, match="needs --recompute-granularity full"):
        Recompute.from_args(args(recompute_num_layers=2))
    with pytest.raises(UsageError, match="conflicts"):
        Recompute.from_args(args(recompute_activations=True, recompute_granularity="full"))
    with pytest.raises(UsageError, match="exceeds the 4 transformer layers"):
        Recompute("full", 5).apply(Transformer(model_preset("tiny"), seed=SEED))


def worker():
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    group = dist.new_group([0, 1])
    for preset in ("tiny", "tiny-gpt2"):
        cfg = model_preset(preset)
        plan = est_plan(cfg)
        reference, stored = gradients(cfg, "none", plan, group)
        for setting in ("selective", "full", "full-2"):
            grads, saved = gradients(cfg, setting, plan, group)
            for name, grad in reference.items():
                if not torch.equal(grads[name], grad):
                    raise SystemExit(f"rank {dist.get_rank()}: {preset} {setting} gradient of {name} differs")
            if saved >= stored:
                raise SystemExit(f"{preset} {setting}: recompute kept {saved} bytes, no less than {stored}")
    dist.destroy_process_group()


def test_recompute_gives_identical_gradients_under_tensor_parallelism():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.abspath(__file__), "--worker"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.parse_args()
    worker()
