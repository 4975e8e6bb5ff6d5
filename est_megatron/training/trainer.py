"""The trainer: one run from parsed flags to the last step, around the DeepSpeed engine.

Per step t: rank 0 asks the method (a `SubnetMethod`) for the plan of t, broadcasts it (one packed int64 tensor),
and every rank runs all `gradient_accumulation_steps` micro-batches of the step with that plan (engine.backward /
engine.step); DeepSpeed reduces gradients, clips, steps the optimizer and the LR schedule at the accumulation
boundary. Then: log, validate (dense model, `training.validation`), checkpoint, and stop on --exit-interval or a
SIGTERM/SIGINT/SIGUSR1 (saved first, exit status 0). Batches come from `DataHooks` (`training.data_hooks`); their
DataLoader workers end with the loop (`training.loader`); packed documents are kept apart on request
(`training.packed_documents`). Every phase names itself to `training.watchdog`, which
ends a rank whose phase outlasts --distributed-timeout-minutes (exit status 3, with its stacks).

Parameters outside the plan: a skipped layer's parameters get no gradient at all (`.grad` None), unsampled rows
of a sampled block get zeros; the sparse optimizer step (`optim.sparse_adamw`) leaves them untouched. Under
ZeRO-3 the step first clears the stale gradient buffer (`training.zero3_grads`).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from typing import Optional

import torch

from est_megatron import host_heap
from est_megatron.config import ModelConfig, model_preset, MODEL_PRESETS
from est_megatron.data.sampler import PretrainingSampler
from est_megatron.errors import UsageError
from est_megatron.checkpoint.reader import load_est_weights
from est_megatron.checkpoint.tags import read_latest
from est_megatron.model.attention import flash_attn_func
from est_megatron.model.recompute import Recompute
from est_megatron.model.regional_compile import CompileWatch, compile_layers
from est_megatron.optim.sparse_adamw import SparseAdamW
from est_megatron.parallel.build import build_model
from est_megatron.parallel.state import ParallelState
from est_megatron.subnet.broadcast import broadcast_plan, check_plan_consistency
from est_megatron.subnet.flops import dense_step_flops, step_flops
from est_megatron.tensor_parallel.output_layer import loss_kernel
from est_megatron.training import checkpoint as ckpt, preemption, watchdog
from est_megatron.training.arguments import resolve_precision
from est_megatron.training.compile_flag import check_compile_layout
from est_megatron.training.data_hooks import DataHooks, pretraining_hooks
from est_megatron.training.distributed import all_reduce_mean, init_distributed, is_communication_failure, teardown
from est_megatron.training.health import SkipCounter, TooManySkippedSteps, check_replicas, parameters_finite
from est_megatron.training.loader import TrainingBatches
from est_megatron.training.methods import MethodContext, build_method, method_options, subnet_config
from est_megatron.training.metrics import MetricsLogger, memory_gb, peak_tflops
from est_megatron.training.metrics_file import start_metrics_file
from est_megatron.training.ds_config import (ZERO3_AUTO_KEYS, load_ds_config, resolve_zero3_auto, zero3_setting,
                                             zero_stage)
from est_megatron.training.packed_documents import PackedDocuments, model_batch, pipeline_batch
from est_megatron.training.optimizer_setup import (bind_sparse_optimizer, build_lr_scheduler, build_optimizer,
                                                   describe_lr_schedule)
from est_megatron.training.preflight import check_directories, checkpoint_bytes
from est_megatron.training.resume import check_resume
from est_megatron.training.step_flags import StepFlags
from est_megatron.training.validation import validation_losses
from est_megatron.training.zero3_grads import check_zero3_internals, clear_stale_zero3_grads


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


def _json_args(args) -> dict:
    return {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, type(None)))}


def pretrain(args, hooks: Optional[DataHooks] = None) -> int:
    """Run training from parsed arguments (and data hooks, default pretraining shards); returns 0 once the run has
    ended as asked. Errors raise (a UsageError is one line and status 2 at the entry point); a stalled rank
    exits with status 3 from `training.watchdog`."""
    preemption.install_signal_handlers()
    watchdog.start(args.distributed_timeout_minutes * 60, int(os.environ.get("RANK", 0)))
    watchdog.doing("start-up: the process group and DeepSpeed's communication op")
    info = init_distributed(args.local_rank, args.distributed_timeout_minutes)
    watchdog.stall_if_asked(info["rank"], 0)
    trainer = None
    clean = False
    try:
        trainer = Trainer(args, info, hooks or pretraining_hooks())
        trainer.train()
        clean = True
        watchdog.doing("tear-down (the last barrier)")
    except Exception as err:
        if is_communication_failure(err):  # a peer stalled or died: its own log has the first error
            watchdog.end_run(f"failed in a collective ({str(err).strip().splitlines()[0][:200]})", err)
        raise
    finally:
        teardown(None if trainer is None else trainer.engine, barrier=clean)
        watchdog.stop()
        preemption.release_wakeup_fd()
    return 0


@dataclass
class Progress:
    """Where the run stands: with DeepSpeed's own state, what a checkpoint restores to continue exactly."""

    step: int = 0
    consumed: int = 0  # global samples
    flops_done: int = 0  # FLOPs of the trained subnetworks (and any method overhead)
    dense_done: int = 0  # FLOPs the same steps would have cost dense
    stage: Optional[int] = None  # numbered from 1, as the paper does

    @property
    def flops_saved_frac(self) -> float:
        return 1.0 - self.flops_done / max(self.dense_done, 1)


class Trainer:
    """One run: builds the layout, data, model, method and DeepSpeed engine (resuming from --load), then `train()`
    runs the steps: plan, micro-batches, logs, validation, checkpoints, stop on a signal or --exit-interval."""

    def __init__(self, args, info, hooks: DataHooks):
        import deepspeed

        self.args, self.hooks = args, hooks
        self.rank, self.world, self.device = info["rank"], info["world_size"], info["device"]
        tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
        self.layout = ParallelState(tp, pp)  # Megatron order: TP ranks adjacent, then DP, then PP
        self.dp_size, self.dp_rank = self.layout.get_data_parallel_world_size(), self.layout.get_data_parallel_rank()
        cuda = torch.cuda.is_available()
        precision = resolve_precision(args, cuda, cuda and torch.cuda.is_bf16_supported())
        ds_config = load_ds_config(args.deepspeed_config, args, self.dp_size, precision)
        self.zero_stage = zero_stage(ds_config)
        self.accumulation = ds_config["gradient_accumulation_steps"]
        check_compile_layout(args, self.zero_stage,
                             flash_attn_func is not None and cuda and precision in ("bf16", "fp16"))

        watchdog.doing("start-up: building the datasets (rank 0 first)")
        self.tokenizer, (self.train_ds, self.valid_ds, self.test_ds) = hooks.build_data(args, info)
        self.packing = PackedDocuments.from_args(args, self.tokenizer)  # None: the flags are off
        full_state = None
        if getattr(args, "init_from", None):  # the model's shape is the checkpoint's (a resumed --load overrides)
            self.model_cfg, full_state = load_est_weights(args.init_from)
            if self.tokenizer.vocab_size > self.model_cfg.vocab_size:
                raise UsageError(f"the tokenizer has {self.tokenizer.vocab_size} tokens but --init-from "
                                 f"{args.init_from} has a vocabulary of {self.model_cfg.vocab_size}; use the "
                                 "checkpoint's tokenizer")
        else:
            self.model_cfg = build_model_config(args, self.tokenizer.vocab_size)
        subnet_cfg = subnet_config(args, self.model_cfg)
        self.method = build_method(args.method, MethodContext(self.model_cfg, subnet_cfg, args.train_steps,
                                                              args.seed, method_options(args)))
        if (tp > 1 or pp > 1) and self.method.needs_whole_model:
            raise UsageError(f"--method {args.method} needs the whole model on one rank; use "
                             "--tensor-model-parallel-size 1 and --pipeline-model-parallel-size 1")
        self.layout_record = {"world_size": self.world, "tp": tp, "pp": pp, "dp": self.dp_size,
                              "zero_stage": self.zero_stage}
        self.resume_from = self._check_resume() if args.load else None
        check_directories([("--save", args.save, checkpoint_bytes(self.model_cfg.num_parameters())),
                           ("--log-dir", args.log_dir if self.rank == 0 else None, 0)])
        torch.manual_seed(args.seed)
        ds_config = resolve_zero3_auto(ds_config, self.model_cfg, tp)
        self.zero_config = ds_config.get("zero_optimization", {})
        watchdog.doing("start-up: building the model and the DeepSpeed engine")
        model, self.pipe_step_plan = build_model(self.model_cfg, self.layout, args.seed, subnet_cfg,
                                                 self.zero_stage, full_state, Recompute.from_args(args), ds_config,
                                                 None if self.packing is None else self.packing.resets)
        optimizer = build_optimizer(model, args)
        with host_heap.large_frees_returned(self.zero_stage == 3):  # ZeRO-3 gathers each weight whole in turn
            self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                        lr_scheduler=build_lr_scheduler(optimizer, args),
                                                        config=ds_config, dist_init_required=False,
                                                        mpu=None if pp > 1 else self.layout)
        self.sparse_optimizer = optimizer if isinstance(optimizer, SparseAdamW) else None
        if self.sparse_optimizer is not None:
            bind_sparse_optimizer(optimizer, self.engine, model, self.model_cfg, self.layout)
        if self.zero_stage == 3:
            check_zero3_internals(self.engine)

        self.progress = Progress()
        self.skips = SkipCounter(args.max_skipped_steps)
        if self.resume_from is not None:
            tag, state = self.resume_from
            watchdog.doing(f"start-up: loading checkpoint {os.path.join(args.load, tag)}")
            ckpt.restore(self.engine, args.load, tag, load_rng=not args.no_load_rng)
            self.progress = Progress(state["step"], state["consumed_samples"], state["flops_done"],
                                     state["dense_flops_done"], state["stage"])
            self.skips.total = state.get("skipped_steps", 0)
        metrics_note = start_metrics_file(args.log_dir, self.progress.step) if self.rank == 0 else None
        self.log = MetricsLogger(args.log_dir, self.rank == 0, args.progress, args.train_steps, self.progress.step,
                                 args.tensorboard_dir, args.wandb_project)
        self.log.arguments(_json_args(args))
        if metrics_note:
            self.log.line(metrics_note)
        self.compile_watch = None
        if args.compile:
            limit = compile_layers(self.engine.module, self.method.num_stages, args.compile_backend)
            self.compile_watch = CompileWatch(limit, self.log.line)
        self._announce(precision)

    def _check_resume(self):
        """(tag, saved state) of --load's verified latest checkpoint if it fits this run (UsageError if not)."""
        found = ckpt.find_checkpoint(self.args.load)
        if found is not None:
            tag, saved = found
            where = os.path.join(self.args.load, tag)
            ckpt.check_model_matches(saved["model"], self.model_cfg, where)
            check_resume(self.args, saved, self.tokenizer.sha256, self.layout_record, where, self.hooks.order_version)
        return found

    def _announce(self, precision: str) -> None:
        args, log, step = self.args, self.log, self.progress.step
        tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
        log.line(f"est_megatron: {args.model} {self.model_cfg.num_parameters():,} parameters (vocab "
                 f"{self.model_cfg.vocab_size}), method {args.method}, {self.world} ranks (tp {tp} x pp {pp} x dp "
                 f"{self.dp_size}), ZeRO-{self.zero_stage}, batch "
                 f"{args.global_batch_size} = micro {args.micro_batch_size} x dp {self.dp_size} x accumulation "
                 f"{self.accumulation}, seq {args.seq_length}")
        log.line(f"precision: {precision}" + ("" if args.precision else " (--bf16/--fp16/--fp32 not given: bf16 on "
                                              "a GPU that has it, else fp32; the DeepSpeed config's sections are "
                                              "overridden)"))
        log.line(self._describe_loss())
        if self.zero_stage == 3:
            live, reuse = (zero3_setting(self.zero_config, key) for key in ZERO3_AUTO_KEYS)
            log.line(f"ZeRO-3: prefetches up to {live:,} parameters (stage3_max_live_parameters); keeps a weight "
                     f"gathered when it is used again within {reuse:,} (stage3_max_reuse_distance)")
        log.line(describe_lr_schedule(args))
        log.line(self.method.describe())
        if self.packing is not None:
            log.line(self.packing.describe())
        if self.compile_watch is not None:
            log.line(f"compile: each transformer layer under torch.compile (backend {args.compile_backend}, static "
                     f"shapes; a stage compiles on its first step), at most {self.compile_watch.limit} graphs of "
                     "the layer, then eager")
        if self.sparse_optimizer is not None:
            log.line(f"optimizer: sparse AdamW (what a step's plan does not train keeps its values and moments; "
                     f"bias correction by {self.sparse_optimizer.bias_correction} step counts)")
        else:
            log.line(f"optimizer: {type(self.engine.basic_optimizer).__name__} over every parameter")
        if getattr(args, "init_from", None) and not step:
            log.line(f"initialised from {args.init_from}")
        if step:
            log.line(f"resumed from {args.load} at step {step} ({self.progress.consumed} samples consumed)")
        elif args.load:
            log.line(f"no checkpoint in {args.load}; starting from scratch")

    def _describe_loss(self) -> str:
        if self.args.pipeline_model_parallel_size > 1:
            return "loss: the last pipeline stage's whole logits, then cross-entropy"
        if loss_kernel(self.device, self.args.tensor_model_parallel_size) == "liger":
            return "loss: Liger-Kernel's fused linear cross-entropy (the whole logits never exist)"
        return "loss: output layer and cross-entropy in chunks of tokens (the whole logits never exist)"

    def train(self) -> None:
        args, progress, log = self.args, self.progress, self.log
        if progress.step >= args.train_steps:
            log.line(f"the run is complete ({progress.step} of {args.train_steps} steps); nothing to train")
            log.close()
            return
        sampler = PretrainingSampler(len(self.train_ds), progress.consumed, args.micro_batch_size, self.dp_rank,
                                     self.dp_size)
        with TrainingBatches(self.train_ds, sampler, self.hooks.collate, args.num_workers,
                             pin_memory=self.device.type == "cuda") as batches:
            self._train_steps(batches)
        if self.test_ds is not None and progress.step >= args.train_steps:
            watchdog.doing("the test evaluation")
            self._validate("test")
        if self.rank == 0 and args.log_dir:
            log.record({"event": "end", "step": progress.step, "flops_saved_frac": progress.flops_saved_frac,
                        "checkpoint": args.save})
        log.close()

    def _train_steps(self, batches) -> None:
        """The steps from where the run stands to --train-steps, a stop request or --exit-interval."""
        args, progress, log = self.args, self.progress, self.log
        preemption.training_started()
        self.dense_per_step = dense_step_flops(self.model_cfg, args.global_batch_size, args.seq_length)
        self._reset_interval()
        last_eval = None
        self.logged_loss = "-"  # the progress bar shows the last logged loss: no host read of a step's loss
        flags = StepFlags(self.device)
        while progress.step < args.train_steps:
            watchdog.stall_if_asked(self.rank, progress.step + 1)
            skipped_before = self.engine.skipped_steps
            plan, step_loss = self._train_step(batches)
            rates = plan.rates if plan is not None else (1.0, 1.0, 1.0)
            step = progress.step
            exiting = args.exit_interval is not None and step % args.exit_interval == 0
            saving = bool(args.save) and step % args.save_interval == 0
            logging_step = step % args.log_interval == 0
            settle = logging_step or step == args.train_steps or exiting or saving

            watchdog.doing(f"step {step}: agreeing on the stop and non-finite flags (all-reduce)")
            flags.post(step, preemption.stop_reason() is not None, step_loss,
                       self.engine.skipped_steps != skipped_before)
            stopping = self._take_outcomes(flags.collect(settle))
            if stopping and not settle:  # the save on stopping counts this step's outcome too
                stopping = self._take_outcomes(flags.collect(True)) or stopping
            at_end = step == args.train_steps or exiting or stopping

            if logging_step or at_end:
                watchdog.doing(f"step {step}: logging (all-reduce of the loss)")
                self._log_interval(rates)
            log.advance(1, loss=self.logged_loss, stage=progress.stage)
            if (step % args.eval_interval == 0 or (at_end and not stopping)) and last_eval != step:
                watchdog.doing(f"step {step}: validation")
                self._validate()
                last_eval = step
            if args.save and (at_end or (saving and not self.skips.consecutive)):
                watchdog.doing(f"step {step}: saving the checkpoint")
                self._save()  # not periodically while steps are being skipped: older checkpoints stay
            if stopping:  # the reason read again: a signal that reached this rank inside the step's collectives
                # (after its flag was posted, before a peer's) has run its handler by now
                log.line(f"step {step}: stopping on {preemption.stop_reason() or 'a stop request on a peer rank'}"
                         + (" (checkpoint saved)" if args.save else ""))
                break
            if exiting and step < args.train_steps:
                log.line(f"step {step}: --exit-interval {args.exit_interval} reached, stopping")
                break

    def _take_outcomes(self, outcomes) -> bool:
        """Count the agreed steps' skips (in step order); whether any of them asked to stop."""
        for outcome in outcomes:
            self._count_skip(outcome.step, outcome.skipped)
        return any(outcome.stop_requested for outcome in outcomes)

    def _count_skip(self, step: int, skipped: bool) -> None:
        """Count a skipped step; at --max-skipped-steps consecutive ones, record why and stop (non-zero exit)."""
        if skipped:
            self.log.line(f"step {step}: skipped (non-finite loss or gradient overflow; {self.skips.consecutive + 1} "
                          f"in a row, {self.skips.total + 1} in all)")
        try:
            self.skips.update(step, skipped)
        except TooManySkippedSteps:
            self.log.record({"event": "stopped", "reason": "skipped_steps", "step": step,
                             "skipped_steps": self.skips.total, "consecutive": self.skips.consecutive})
            self.log.close()
            raise

    def _train_step(self, batches):
        """Plan (drawn on rank 0, broadcast), all micro-batches with it, the optimizer step; (plan, summed loss)."""
        args, progress, engine, device = self.args, self.progress, self.engine, self.device
        step = progress.step + 1
        watchdog.doing(f"step {step}: loading the first batch")
        first = next(batches).to(device, non_blocking=True)
        if self.rank == 0 or self.zero_stage == 3:  # ZeRO-3's forward is collective
            watchdog.doing(f"step {step}: the method's preparation ({args.method})")
            self.method.prepare(progress.step, engine.module, self.hooks.split(first)[0])
        watchdog.doing(f"step {step}: broadcasting the plan")
        plan = broadcast_plan(self.method.plan(progress.step) if self.rank == 0 else None, self.model_cfg)
        if args.check_plan_consistency:
            check_plan_consistency(plan, self.model_cfg)
        self._note_stage(plan)

        device_plan = plan.to(device) if plan is not None else None
        if self.sparse_optimizer is not None:  # the optimizer step leaves what this plan does not train untouched
            self.sparse_optimizer.set_plan(device_plan)  # the forward's plan objects: one SubnetIndex per layer
        if self.zero_stage == 3:
            clear_stale_zero3_grads(engine)
        self.interval["lr"] = engine.get_lr()[0]
        micro_batches = (model_batch(self.packing, *self.hooks.split(
            first if micro == 0 else next(batches).to(device, non_blocking=True)))
            for micro in range(self.accumulation))
        step_loss = torch.zeros((), dtype=torch.float64, device=device)
        if self.pipe_step_plan is not None:  # the pipeline engine runs all micro-batches; its stages read the plan here
            watchdog.doing(f"step {step}: pipeline forward/backward (send/receive between stages) and optimizer step")
            self.pipe_step_plan.set(device_plan)
            step_loss += engine.train_batch(pipeline_batch(*batch) for batch in micro_batches).detach().double() \
                * self.accumulation
        else:
            watchdog.doing(f"step {step}: forward/backward and optimizer step (gradient reduction)")
            for inputs, labels, documents in micro_batches:
                loss = engine(inputs, plan=device_plan, labels=labels, documents=documents)
                engine.backward(loss)
                engine.step()
                step_loss += loss.detach().double()
        norm = engine.get_global_grad_norm()  # DeepSpeed's, before clipping, of this optimizer step
        self.interval["grad_norm"] = norm  # a device tensor under some ZeRO stages: read at the log interval

        flops = step_flops(self.model_cfg, plan, args.global_batch_size, args.seq_length)
        # SAT's importance pre-pass, on each rank that ran it
        flops += self.method.overhead_flops(progress.step) * (self.world if self.zero_stage == 3 else 1)
        progress.step += 1
        progress.consumed += args.global_batch_size
        progress.flops_done += flops
        progress.dense_done += self.dense_per_step
        self.interval["loss"] += step_loss / self.accumulation
        self.interval["steps"] += 1
        self.interval["flops"] += flops
        return plan, step_loss

    def _note_stage(self, plan) -> None:
        stage = plan.stage + 1 if plan is not None else 1
        if self.progress.stage is not None and stage != self.progress.stage:
            rates = plan.rates if plan is not None else (1.0, 1.0, 1.0)
            self.log.line(f"step {self.progress.step}: stage transition {self.progress.stage} -> {stage}, rates "
                          f"(pH, pM, pL) = ({rates[0]:g}, {rates[1]:g}, {rates[2]:g})")
            self.log.record({"event": "stage_transition", "step": self.progress.step, "stage": stage,
                             "rates": list(rates), **self._compile_counts()})
        self.progress.stage = stage

    def _compile_counts(self) -> dict:
        """--compile's graphs and recompiles so far (nothing without --compile)."""
        return {} if self.compile_watch is None else self.compile_watch.record()

    def _reset_interval(self) -> None:
        self.interval = dict(loss=torch.zeros((), dtype=torch.float64, device=self.device), steps=0, flops=0,
                             lr=None, grad_norm=None, start=time.perf_counter())

    def _log_interval(self, rates) -> None:
        args, progress, interval = self.args, self.progress, self.interval
        peak = peak_tflops(args.peak_tflops)
        loss = all_reduce_mean([float(interval["loss"])], self.device)[0] / interval["steps"]
        self.logged_loss = f"{loss:.3f}"
        elapsed = max(time.perf_counter() - interval["start"], 1e-9)
        tflops = interval["flops"] / elapsed / self.world / 1e12
        record = {"step": progress.step, "loss": loss, "lr": interval["lr"], "stage": progress.stage,
                  "p_heads": rates[0], "p_mlp": rates[1], "p_layers": rates[2],
                  "tokens_per_sec": interval["steps"] * args.global_batch_size * args.seq_length / elapsed,
                  "tflops": tflops, "mfu": tflops / peak if peak else None,
                  "flops_saved_frac": progress.flops_saved_frac, "memory_gb": memory_gb(),
                  "consumed_samples": progress.consumed, "step_time_s": elapsed / interval["steps"],
                  "grad_norm": None if interval["grad_norm"] is None else float(interval["grad_norm"]),
                  "tokens": progress.consumed * args.seq_length,
                  "flops": progress.flops_done, "skipped_steps": self.skips.total, **self._compile_counts()}
        if args.check_plan_consistency:
            check_replicas(self.engine, self.device, self.layout.get_data_parallel_group())
            record["replicas_identical"] = True
        self.log.record(record)
        self.log.scalars(progress.step, {k: v for k, v in record.items() if k != "step"}, "train")
        self.log.loss_series("train", loss, record["tokens"], progress.flops_done)
        mfu = f" mfu {record['mfu'] * 100:.1f}%" if peak else ""
        self.log.line(f"step {progress.step:>7}/{args.train_steps} | loss {loss:.4f} | lr {interval['lr']:.3e} | "
                      f"stage {progress.stage} p=({rates[0]:.3g},{rates[1]:.3g},{rates[2]:.3g}) | "
                      f"{record['tokens_per_sec']:,.0f} tok/s | {tflops:.3g} TFLOP/s{mfu} | FLOPs saved "
                      f"{record['flops_saved_frac'] * 100:.1f}% | mem {record['memory_gb']:.2f} GiB")
        self._reset_interval()

    def _validate(self, kind: str = "valid") -> None:
        """Dense-model loss on the validation data (the test data at the end); corpora given apart
        (--valid-data-path / --test-data-path) are each reported, then their weighted mean."""
        step, data = self.progress.step, self.valid_ds if kind == "valid" else self.test_ds
        key, title = ("val", "validation") if kind == "valid" else ("test", "test")

        val, by_corpus = validation_losses(self.engine, data, self.args, self.dp_rank, self.dp_size, self.device,
                                           self.hooks, self.pipe_step_plan, self.packing)
        if val is not None:
            ppl = math.exp(min(val, 80.0))
            record = {"step": step, f"{key}_loss": val, f"{key}_ppl": ppl}
            line = f"step {step:>7}: {title} loss {val:.4f} | perplexity {ppl:.2f}"
            if by_corpus:
                record[f"{key}_loss_by_corpus"] = by_corpus
                record[f"{key}_ppl_by_corpus"] = {name: math.exp(min(v, 80.0)) for name, v in by_corpus.items()}
                line += "".join(f" | {name} {v:.4f} (ppl {record[f'{key}_ppl_by_corpus'][name]:.2f})"
                                for name, v in by_corpus.items())
                for name, v in by_corpus.items():
                    self.log.scalars(step, {"loss": v, "ppl": record[f"{key}_ppl_by_corpus"][name]},
                                     f"{kind}/{name}")
            self.log.record(record)
            self.log.scalars(step, {"loss": val, "ppl": ppl}, kind)
            self.log.loss_series(kind, val, self.progress.consumed * self.args.seq_length, self.progress.flops_done)
            self.log.line(line)
        self.interval["start"] = time.perf_counter()  # validation time is not training throughput

    def _save(self) -> None:
        args, progress = self.args, self.progress
        if not parameters_finite(self.engine):
            kept = read_latest(args.save)
            raise UsageError(f"step {progress.step}: the parameters are not finite, so no checkpoint is written"
                             + (f" (the last one, {os.path.join(args.save, kept)}, is kept)" if kept else "")
                             + "; lower --lr, keep --clip-grad on, or resume from an earlier checkpoint")
        state = {"step": progress.step, "consumed_samples": progress.consumed, "flops_done": progress.flops_done,
                 "dense_flops_done": progress.dense_done, "stage": progress.stage,
                 "skipped_steps": self.skips.total, "layout": self.layout_record,
                 "model": dataclasses.asdict(self.model_cfg), "method": args.method,
                 "schedule": args.est_schedule, "seed": args.seed, "tokenizer_sha256": self.tokenizer.sha256,
                 "data_order": self.hooks.order_version,
                 "args": _json_args(args)}
        tag = ckpt.save_checkpoint(self.engine, args.save, progress.step, state, args.keep_checkpoints)
        self.log.line(f"step {progress.step:>7}: saved checkpoint {os.path.join(args.save, tag)}")
        self.interval["start"] = time.perf_counter()
