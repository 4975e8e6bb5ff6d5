"""The DeepSpeed training loop equals a plain PyTorch loop step by step (tests/reference_training.py): same data
order, plans, LR schedule and clipping; dense, EST with the sparse optimizer step (against MaskedAdamW, per-element
counts, the default learning-rate power) and EST with the dense AdamW step (against torch AdamW over zero-filled
gradients); ZeRO-1/2/3 on 1 and 2 processes. A difference here is DeepSpeed (or our wiring of it) training
something other than the method."""
import pytest

from dist_utils import launch, read_metrics, tiny_shards, train_flags, train_losses  # noqa: F401
from est_megatron.config import SubnetConfig
from est_megatron.data import build_datasets
from est_megatron.data.tokenizer import spec_from_args
from est_megatron.subnet.plan import PlanSampler
from est_megatron.subnet.schedule import parse_schedule
from est_megatron.training.arguments import parse_args
from est_megatron.training.trainer import build_model_config
from est_megatron.training.optimizer_setup import WarmupDecay
from reference_training import reference_losses

STEPS = 6
CASES = [  # (method, --est-optimizer, ZeRO stage, processes): every stage, mode and process count appears once
    ("dense", "sparse", 1, 2), ("est", "sparse", 2, 2), ("est", "sparse", 3, 2), ("est", "dense", 2, 1)]


def plain_loop(argv, method, est_optimizer):
    args = parse_args(argv)
    cfg = build_model_config(args, spec_from_args(args).load().vocab_size)
    samples = (args.train_steps * args.global_batch_size, args.eval_iters * args.global_batch_size, 0)
    train, _, _ = build_datasets(args.data_path, args.split, args.seq_length, args.seed, samples,
                                 cache_dir=args.data_cache_dir)
    sampler = PlanSampler(cfg, SubnetConfig().resolved(cfg),
                          parse_schedule(args.est_schedule).resolve(args.train_steps), args.seed)
    multiplier = WarmupDecay(args.lr_warmup_steps, args.train_steps, args.min_lr / args.lr, args.lr_decay_style)
    return reference_losses(cfg, args.seed, train, (lambda step: None) if method == "dense" else sampler.plan,
                            args.train_steps, args.global_batch_size, args.micro_batch_size,
                            lambda step: args.lr * multiplier(step), args.clip_grad,
                            "masked" if method == "est" and est_optimizer == "sparse" else "adamw", args.est_lr_power)


@pytest.mark.parametrize("method,est_optimizer,zero,nproc", CASES)
def test_deepspeed_loop_equals_plain_loop(method, est_optimizer, zero, nproc, tiny_shards, tmp_path):  # noqa: F811
    argv = train_flags(tiny_shards, tmp_path, zero=zero, steps=STEPS,
                       **{"--method": method, "--est-optimizer": est_optimizer,
                          "--est-schedule": "0.5,1:0.5,0.5,0.5/1,1,1"})
    result = launch(argv, nproc=nproc)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    records = read_metrics(tmp_path / "logs")
    assert all("grad_norm" in r for r in records if "loss" in r and "event" not in r)
    losses = train_losses(records)
    assert losses == pytest.approx(plain_loop(argv, method, est_optimizer), rel=2e-5)
