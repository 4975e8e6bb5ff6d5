"""The pretraining loop around the DeepSpeed engine.

Per step t: rank 0 draws the method's plan for t, broadcasts it (one packed int64 tensor), and every rank runs all
`gradient_accumulation_steps` micro-batches of the step with that plan (engine.backward / engine.step); DeepSpeed
reduces gradients, clips, steps AdamW and the LR schedule at the accumulation boundary. Then: log, validate (dense
model), checkpoint, and stop on --exit-interval or a SIGTERM/SIGUSR1 (saved first, exit status 0).

Parameters outside the plan: a skipped layer's parameters get no gradient at all (`.grad` None), unsampled rows
of a sampled block get zeros. ZeRO-1/2 fill missing gradients with zeros in their flat buffers, so AdamW sees a
zero gradient (its moments decay, weight decay applies) exactly like a dense optimizer over zero-filled grads.
ZeRO-3 keeps gradient partitions in a flat buffer that is *copied into* at the first micro-batch and never
cleared: a parameter skipped in this step would be updated with its stale gradient of an earlier step. We zero
that buffer before each step's first backward (`_clear_stale_zero3_grads`), which makes ZeRO-3 train exactly like
ZeRO-1/2 (tests/test_training_zero.py compares the three stages' losses).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist

from est_megatron.config import ModelConfig, SubnetConfig, model_preset, MODEL_PRESETS
from est_megatron.errors import UsageError
from est_megatron.parallel.build import build_model
from est_megatron.parallel.state import ParallelState
from est_megatron.subnet.broadcast import broadcast_plan, check_plan_consistency
from est_megatron.subnet.flops import dense_step_flops, step_flops
from est_megatron.training import checkpoint as ckpt
from est_megatron.training.distributed import init_distributed, teardown
from est_megatron.training.methods import MethodContext, build_method
from est_megatron.training.metrics import MetricsLogger, memory_gb, peak_tflops
from est_megatron.training.optim import build_lr_scheduler, build_optimizer, load_ds_config, zero_stage

_STOP_SIGNAL = {"signum": None}


def _on_signal(signum, frame):
    _STOP_SIGNAL["signum"] = signum


def install_signal_handlers() -> None:
    """SIGTERM / SIGUSR1 only set a flag; the loop saves at the end of the current step and exits 0."""
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, _on_signal)


def padded_vocab(tokenizer_vocab: int, preset_vocab: int, multiple: int) -> int:
    """Megatron's --make-vocab-size-divisible-by padding; a tokenizer matching the preset keeps its exact size."""
    if tokenizer_vocab == preset_vocab:
        return tokenizer_vocab
    return -(-tokenizer_vocab // multiple) * multiple


def build_model_config(args, tokenizer_vocab: int) -> ModelConfig:
    preset = MODEL_PRESETS[args.model]
    positions = args.max_position_embeddings or preset["max_position_embeddings"]
    return model_preset(args.model, num_layers=args.num_layers, hidden_size=args.hidden_size,
                        ffn_hidden_size=args.ffn_hidden_size, num_attention_heads=args.num_attention_heads,
                        num_query_groups=args.num_query_groups,
                        vocab_size=padded_vocab(tokenizer_vocab, preset["vocab_size"],
                                                args.make_vocab_size_divisible_by),
                        max_position_embeddings=max(positions, args.seq_length))


def _clear_stale_zero3_grads(engine) -> None:
    buffer = getattr(engine.optimizer, "grad_partitions_flat_buffer", None)
    if buffer is not None:
        buffer.zero_()


def check_replicas(engine, device, group=None) -> None:
    """Raise unless every rank of `group` (the data-parallel replicas) holds the same parameters (float64 sum and
    sum of squares, MIN == MAX). Under ZeRO-3 only the parameters every rank holds whole (the persistent small
    ones) are replicas; gathering the others here would break ZeRO-3's parameter-persistence bookkeeping."""
    params = [p for p in engine.module.parameters() if p.numel() == getattr(p, "ds_numel", p.numel())]
    local = torch.stack([sum(p.detach().double().sum() for p in params),
                         sum(p.detach().double().square().sum() for p in params)]).to(device)
    low, high = local.clone(), local.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN, group=group)
    dist.all_reduce(high, op=dist.ReduceOp.MAX, group=group)
    if not torch.equal(low, high):
        raise RuntimeError(f"parameters differ across ranks (checksums {low.tolist()} .. {high.tolist()})")


def _all_reduce_mean(values: list, device) -> list:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def build_data(args, dist_info):
    """Tokenizer, datasets (rank 0 builds the index caches first, the others then read them)."""
    from est_megatron.data import build_datasets
    from est_megatron.data.tokenizer import SentencePieceTokenizer
    tokenizer = SentencePieceTokenizer(args.tokenizer_model)
    num_samples = (args.train_steps * args.global_batch_size, args.eval_iters * args.global_batch_size, 0)

    def build():
        return build_datasets(args.data_path, args.split, args.seq_length, args.seed, num_samples,
                              cache_dir=args.data_cache_dir)

    error = None
    datasets = None
    if dist_info["rank"] == 0:
        try:
            datasets = build()
        except UsageError as err:
            error = err
    flag = torch.tensor([error is not None], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        flag = flag.cuda()
    dist.all_reduce(flag)
    if error is not None:
        raise error
    if int(flag):
        raise UsageError("rank 0 could not build the datasets (see its error above)")
    if datasets is None:
        datasets = build()
    return tokenizer, datasets


def split_tokens(batch: torch.Tensor):
    """Pretraining batches are (batch, seq+1) tokens: inputs and next-token labels."""
    return batch[:, :-1], batch[:, 1:]


@dataclass(frozen=True)
class DataHooks:
    """Where batches come from: pretraining shards by default; launch/finetune.py plugs in SFT data here."""

    build_data: Callable  # (args, dist_info) -> (tokenizer, (train, valid, test))
    collate: Callable  # list of samples -> batch
    split: Callable = split_tokens  # batch -> (input_ids, labels)


def pretraining_hooks() -> DataHooks:
    from est_megatron.data.sampler import collate
    return DataHooks(build_data, collate, split_tokens)


def evaluate(engine, dataset, args, dp_rank, dp_size, device, hooks: DataHooks, pipe_plans=None) -> Optional[float]:
    """Mean validation loss of the dense model over the first --eval-iters global batches (same each time)."""
    if dataset is None or args.eval_iters == 0:
        return None
    from est_megatron.data.sampler import PretrainingSampler
    accumulation = args.global_batch_size // (args.micro_batch_size * dp_size)
    sampler = PretrainingSampler(len(dataset), 0, args.micro_batch_size, dp_rank, dp_size)
    total, count = 0.0, 0
    engine.eval()
    with torch.no_grad():
        for i, indices in enumerate(sampler):
            if i >= args.eval_iters * accumulation:
                break
            inputs, labels = hooks.split(hooks.collate([dataset[j] for j in indices]).to(device))
            if pipe_plans is not None:  # pipeline stages read the plan from the holder: the dense model
                pipe_plans.set(None)
                total += float(engine.eval_batch(iter([(inputs, labels)]), num_micro_batches=1))
            else:
                total += float(engine(inputs, plan=None, labels=labels))
            count += 1
    engine.train()
    mean_total, mean_count = _all_reduce_mean([total, count], device)
    return mean_total / max(mean_count, 1e-9)


def _json_args(args) -> dict:
    return {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, type(None)))}


def pretrain(args, hooks: Optional[DataHooks] = None) -> int:
    """Run training from parsed arguments (and data hooks, default pretraining shards); returns the exit status."""
    install_signal_handlers()
    info = init_distributed(args.local_rank)
    engine = None
    clean = False
    try:
        engine = _train(args, info, hooks or pretraining_hooks())
        clean = True
    finally:
        teardown(engine, barrier=clean)
    return 0


def _train(args, info, hooks: DataHooks):
    import deepspeed
    from torch.utils.data import DataLoader
    from est_megatron.data.sampler import PretrainingSampler

    rank, world, device = info["rank"], info["world_size"], info["device"]
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    layout = ParallelState(tp, pp)  # Megatron order: TP ranks adjacent, then DP, then PP
    dp_size, dp_rank = layout.get_data_parallel_world_size(), layout.get_data_parallel_rank()
    use_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    ds_config = load_ds_config(args.deepspeed_config, args, dp_size, use_bf16)
    stage = zero_stage(ds_config)
    accumulation = ds_config["gradient_accumulation_steps"]

    tokenizer, (train_ds, valid_ds, _) = hooks.build_data(args, info)
    if getattr(args, "init_from", None):  # the model's shape is the checkpoint's
        from est_megatron.hf import load_est_weights
        model_cfg = load_est_weights(args.init_from)[0]
        if tokenizer.vocab_size > model_cfg.vocab_size:
            raise UsageError(f"the tokenizer has {tokenizer.vocab_size} tokens but --init-from {args.init_from} "
                             f"has a vocabulary of {model_cfg.vocab_size}; use the checkpoint's tokenizer")
    else:
        model_cfg = build_model_config(args, tokenizer.vocab_size)
    subnet_cfg = SubnetConfig(whole_groups=args.est_whole_groups, head_strata=args.est_head_strata,
                              mlp_strata=args.est_mlp_strata, layer_strata=args.est_layer_strata).resolved(model_cfg)
    plan_fn = build_method(args.method, MethodContext(model_cfg, subnet_cfg, args.train_steps, args.seed, args))

    if (tp > 1 or pp > 1) and hasattr(plan_fn, "prepare"):
        raise UsageError(f"--method {args.method} needs the whole model on one rank; use "
                         "--tensor-model-parallel-size 1 and --pipeline-model-parallel-size 1")
    torch.manual_seed(args.seed)
    full_state = None
    if getattr(args, "init_from", None):  # converted or trained weights (a resumed --load overrides them)
        from est_megatron.hf import load_est_weights
        full_state = load_est_weights(args.init_from)[1]
    model, pipe_plans = build_model(model_cfg, layout, args.seed, subnet_cfg, stage, full_state)
    pipe_plans = pipe_plans if pp > 1 else None
    optimizer = build_optimizer(model, args)
    scheduler = build_lr_scheduler(optimizer, args)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config, dist_init_required=False,
                                           mpu=None if pp > 1 else layout)

    step, consumed, flops_done, dense_done, prev_stage = 0, 0, 0, 0, None
    if args.load:
        state = ckpt.load_checkpoint(engine, args.load, model_cfg)
        if state is not None:
            step, consumed = state["step"], state["consumed_samples"]
            flops_done, dense_done, prev_stage = state["flops_done"], state["dense_flops_done"], state["stage"]

    log = MetricsLogger(args.log_dir, rank == 0, args.progress, args.train_steps, step)
    log.line(f"est_megatron: {args.model} {model_cfg.num_parameters():,} parameters (vocab {model_cfg.vocab_size}), "
             f"method {args.method}, schedule {args.est_schedule}, {world} ranks (tp {tp} x pp {pp} x dp {dp_size}), "
             f"ZeRO-{stage}, "
             f"batch {args.global_batch_size} = micro {args.micro_batch_size} x dp {dp_size} x accumulation "
             f"{accumulation}, seq {args.seq_length}")
    log.line("precision: bf16 (GPU)" if use_bf16 else
             "precision: fp32 (CPU: the DeepSpeed config's bf16 section is overridden)")
    if hasattr(plan_fn, "describe"):
        log.line(plan_fn.describe())
    if getattr(args, "init_from", None) and not step:
        log.line(f"initialised from {args.init_from}")
    if step:
        log.line(f"resumed from {args.load} at step {step} ({consumed} samples consumed)")
    elif args.load:
        log.line(f"no checkpoint in {args.load}; starting from scratch")

    if step >= args.train_steps:
        log.line(f"the run is complete ({step} of {args.train_steps} steps); nothing to train")
        log.close()
        return engine

    sampler = PretrainingSampler(len(train_ds), consumed, args.micro_batch_size, dp_rank, dp_size)
    loader = DataLoader(train_ds, batch_sampler=sampler, collate_fn=hooks.collate, num_workers=args.num_workers,
                        pin_memory=device.type == "cuda")
    batches = iter(loader)
    peak = peak_tflops(args.peak_tflops)
    dense_per_step = dense_step_flops(model_cfg, args.global_batch_size, args.seq_length)
    tokens_per_step = args.global_batch_size * args.seq_length

    interval = dict(loss=torch.zeros((), dtype=torch.float64, device=device), steps=0, flops=0,
                    start=time.perf_counter())
    last_eval = None
    stop_flag = torch.zeros(1, dtype=torch.int64, device=device)
    while step < args.train_steps:
        first = next(batches).to(device, non_blocking=True)
        prepare = getattr(plan_fn, "prepare", None)
        if prepare is not None and (rank == 0 or stage == 3):  # ZeRO-3's forward is collective
            prepare(step, engine.module, hooks.split(first)[0])
        plan = broadcast_plan(plan_fn(step) if rank == 0 else None, model_cfg)
        if args.check_plan_consistency:
            check_plan_consistency(plan, model_cfg)
        stage_now = plan.stage + 1 if plan is not None else 1  # numbered from 1, as the paper does
        rates = plan.rates if plan is not None else (1.0, 1.0, 1.0)
        if prev_stage is not None and stage_now != prev_stage:
            log.line(f"step {step}: stage transition {prev_stage} -> {stage_now}, rates "
                     f"(pH, pM, pL) = ({rates[0]:g}, {rates[1]:g}, {rates[2]:g})")
            log.record({"event": "stage_transition", "step": step, "stage": stage_now, "rates": list(rates)})
        prev_stage = stage_now

        device_plan = plan.to(device) if plan is not None else None
        if stage == 3:
            _clear_stale_zero3_grads(engine)
        lr = engine.get_lr()[0]
        step_loss = torch.zeros((), dtype=torch.float64, device=device)
        if pipe_plans is not None:  # the pipeline engine runs all micro-batches; its stages read the plan here
            pipe_plans.set(device_plan)
            micro_batches = (hooks.split(first if micro == 0 else next(batches).to(device, non_blocking=True))
                             for micro in range(accumulation))
            step_loss += engine.train_batch(micro_batches).detach().double() * accumulation
        for micro in range(accumulation if pipe_plans is None else 0):
            batch = first if micro == 0 else next(batches).to(device, non_blocking=True)
            inputs, labels = hooks.split(batch)
            loss = engine(inputs, plan=device_plan, labels=labels)
            engine.backward(loss)
            engine.step()
            step_loss += loss.detach().double()
        step += 1
        consumed += args.global_batch_size
        flops = step_flops(model_cfg, plan, args.global_batch_size, args.seq_length)
        if hasattr(plan_fn, "overhead_flops"):  # e.g. SAT's importance pre-pass, on each rank that ran it
            flops += plan_fn.overhead_flops(step - 1) * (world if stage == 3 else 1)
        flops_done += flops
        dense_done += dense_per_step
        interval["loss"] += step_loss / accumulation
        interval["steps"] += 1
        interval["flops"] += flops

        stop_flag.fill_(1 if _STOP_SIGNAL["signum"] is not None else 0)
        dist.all_reduce(stop_flag, op=dist.ReduceOp.MAX)
        stopping = bool(stop_flag.item())
        exiting = args.exit_interval is not None and step % args.exit_interval == 0
        at_end = step == args.train_steps or exiting or stopping

        if step % args.log_interval == 0 or at_end:
            loss_value = _all_reduce_mean([float(interval["loss"])], device)[0] / interval["steps"]
            elapsed = max(time.perf_counter() - interval["start"], 1e-9)
            tflops = interval["flops"] / elapsed / world / 1e12
            record = {"step": step, "loss": loss_value, "lr": lr, "stage": stage_now,
                      "p_heads": rates[0], "p_mlp": rates[1], "p_layers": rates[2],
                      "tokens_per_sec": interval["steps"] * tokens_per_step / elapsed,
                      "tflops": tflops, "mfu": tflops / peak if peak else None,
                      "flops_saved_frac": 1.0 - flops_done / dense_done,
                      "memory_gb": memory_gb(), "consumed_samples": consumed,
                      "step_time_s": elapsed / interval["steps"]}
            if args.check_plan_consistency:
                check_replicas(engine, device, layout.get_data_parallel_group())
                record["replicas_identical"] = True
            log.record(record)
            log.scalars(step, {k: v for k, v in record.items() if k != "step"}, "train")
            mfu = f" mfu {record['mfu'] * 100:.1f}%" if peak else ""
            log.line(f"step {step:>7}/{args.train_steps} | loss {loss_value:.4f} | lr {lr:.3e} | stage {stage_now} "
                     f"p=({rates[0]:.3g},{rates[1]:.3g},{rates[2]:.3g}) | {record['tokens_per_sec']:,.0f} tok/s | "
                     f"{tflops:.3g} TFLOP/s{mfu} | FLOPs saved {record['flops_saved_frac'] * 100:.1f}% | "
                     f"mem {record['memory_gb']:.2f} GiB")
            interval.update(loss=torch.zeros((), dtype=torch.float64, device=device), steps=0, flops=0,
                            start=time.perf_counter())
        log.advance(1, loss=f"{float(step_loss) / accumulation:.3f}", stage=stage_now)

        if (step % args.eval_interval == 0 or (at_end and not stopping)) and last_eval != step:
            val = evaluate(engine, valid_ds, args, dp_rank, dp_size, device, hooks, pipe_plans)
            last_eval = step
            if val is not None:
                ppl = math.exp(min(val, 80.0))
                log.record({"step": step, "val_loss": val, "val_ppl": ppl})
                log.scalars(step, {"loss": val, "ppl": ppl}, "valid")
                log.line(f"step {step:>7}: validation loss {val:.4f} | perplexity {ppl:.2f}")
            interval["start"] = time.perf_counter()

        if args.save and (step % args.save_interval == 0 or at_end):
            state = {"step": step, "consumed_samples": consumed, "flops_done": flops_done,
                     "dense_flops_done": dense_done, "stage": stage_now,
                     "model": dataclasses.asdict(model_cfg), "method": args.method, "schedule": args.est_schedule,
                     "seed": args.seed, "tokenizer_sha256": tokenizer.sha256, "args": _json_args(args)}
            tag = ckpt.save_checkpoint(engine, args.save, step, state, args.keep_checkpoints)
            log.line(f"step {step:>7}: saved checkpoint {os.path.join(args.save, tag)}")
            interval["start"] = time.perf_counter()
        if stopping:
            name = signal.Signals(_STOP_SIGNAL["signum"]).name if _STOP_SIGNAL["signum"] else "a signal on a peer"
            log.line(f"step {step}: stopping on {name}" + (" (checkpoint saved)" if args.save else ""))
            break
        if exiting and step < args.train_steps:
            log.line(f"step {step}: --exit-interval {args.exit_interval} reached, stopping")
            break

    if rank == 0 and args.log_dir:
        summary = {"event": "end", "step": step, "flops_saved_frac": 1.0 - flops_done / max(dense_done, 1),
                   "checkpoint": args.save}
        log.record(summary)
    log.close()
    return engine
