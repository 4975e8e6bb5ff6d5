"""Training-step speed of EST subnetworks against the dense model, and against the FLOPs model's ideal.

    python tools/bench/step_speed.py --model bench-cpu --seq-length 256 --micro-batch-size 8 --reps 3 --warmup 1
    python tools/bench/step_speed.py --model tinyllama-1.1b --seq-length 2048 --micro-batch-size 8 --device cuda

A step is what training does per micro-batch: draw a fresh plan (PlanSampler.plan, index building included),
forward, backward, the optimizer step, zero_grad. The optimizer is training's: the sparse AdamW step that leaves
what the plan does not train untouched (--est-optimizer sparse, the default), or AdamW over all parameters with the
missing gradients of skipped layers zero-filled, as ZeRO's flat buffers hold them (--est-optimizer dense). After
each timed step, untimed, AdamW over all parameters steps the same gradients too, so the optimizer table puts the
two optimizer steps side by side. The sparse step corrects each row and column by the steps that trained it; in a
bench of a few dozen steps those counts are small and unequal, which keeps it off torch's fused kernel, while in a
long run they are all past the few hundred steps after which one correction serves every unit. So the table shows
the sparse step twice: with the bench's own counts (fresh, as at a run's start) and, on the same plan and
gradients, with every count advanced by --steady-steps (as long into a run; the counts are put back after).
Variants run interleaved (dense, stage 1, stage 2, ...) after warm-up, so a machine whose speed drifts affects all
of them alike; each figure is the median over --reps.

Ideal speedup = dense_step_flops / step_flops(realised plan) from est_megatron.subnet.flops; efficiency =
measured speedup / ideal. Peak memory: on CUDA `torch.cuda.max_memory_allocated` during the step; on CPU the
running sum of torch's own allocation/free records (torch.profiler with profile_memory=True, one extra untimed
step per variant) on top of what was allocated before the step (parameters and AdamW moments), i.e. exactly the
bytes torch's CPU allocator handed out, independent of how glibc caches them.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from typing import Dict, List, Optional, Tuple


import torch

from est_megatron.bench.compile_ab import measure_compile_ab, print_compile_ab
from est_megatron.config import MODEL_PRESETS, SubnetConfig, model_preset
from est_megatron.errors import UsageError, exit_on_usage_error
from est_megatron.model.regional_compile import DEFAULT_BACKEND
from est_megatron.model.transformer import Transformer
from est_megatron.optim.partitions import own_segments
from est_megatron.optim.sparse_adamw import SparseAdamW
from est_megatron.subnet.flops import dense_step_flops, step_flops
from est_megatron.subnet.plan import PlanSampler
from est_megatron.subnet.schedule import parse_schedule
from est_megatron.training.methods import DEFAULT_LR_POWER
from est_megatron.training.metrics import peak_tflops
from est_megatron.help_format import HelpFormatter

STAGES = {"stage1": (0.5, 0.5, 0.5), "stage2": (0.5, 0.5, 1.0)}


# ---------------------------------------------------------------------------------------------------- set-up
def resolve_device(name: Optional[str]) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for but CUDA is not available; use --device cpu")
    return device


def resolve_dtype(name: Optional[str], device: torch.device) -> torch.dtype:
    """bf16 on CUDA by default (autocast over fp32 master weights, as mixed-precision training runs), fp32 on CPU."""
    if name is None:
        name = "bf16" if device.type == "cuda" else "fp32"
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[name]


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_sampler(cfg, rates, seed: int) -> PlanSampler:
    """A one-stage schedule at `rates`: every step draws a fresh plan, as in that stage of training."""
    schedule = parse_schedule("1:{},{},{}".format(*rates)).resolve(1)
    return PlanSampler(cfg, SubnetConfig(), schedule, seed)


def build_optimizer(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over all parameters, with torch's fused kernel where this build has one for the device: what training
    steps the dense model with."""
    params = list(model.parameters())
    try:
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1)


class Stepper:
    """One model, its optimizer and a fixed batch; `step(sampler)` runs a whole training step."""

    def __init__(self, cfg, device, dtype, batch: int, seq: int, seed: int, sparse: bool = True,
                 steady_steps: int = 0):
        torch.manual_seed(seed)
        self.cfg, self.device, self.dtype = cfg, device, dtype
        self.model = Transformer(cfg).to(device)
        self.params = list(self.model.parameters())
        self.dense_optimizer = build_optimizer(self.model, device)
        self.optimizer = self.dense_optimizer
        if sparse:  # training's default for a subnetwork method
            self.optimizer = SparseAdamW(self.params, lr=1e-4, weight_decay=0.1, lr_power=DEFAULT_LR_POWER)
            self.optimizer.bind(list(self.model.named_parameters()), list(self.model.layers),
                                own_segments(self.params))
        self.optimizer_time = 0.0  # seconds of the last step's optimizer step
        self.steady_steps = steady_steps if sparse else 0  # > 0: `compare_adamw` also times the steady state
        generator = torch.Generator().manual_seed(seed)
        tokens = torch.randint(0, cfg.vocab_size, (batch, seq + 1), generator=generator).to(device)
        self.inputs, self.labels = tokens[:, :-1], tokens[:, 1:]
        self.count = 0
        self.last_plan = None

    def step(self, sampler: Optional[PlanSampler], inputs=None, labels=None) -> float:
        """One whole training step (`run`, then zero_grad); returns the loss."""
        loss = self.run(sampler, inputs, labels)
        self.zero_grad()
        return loss

    def run(self, sampler: Optional[PlanSampler], inputs=None, labels=None) -> float:
        """A training step up to and including the optimizer step, gradients kept for `compare_adamw`; `sampler`
        None runs the model with plan=None (no EST machinery at all)."""
        plan = None
        if sampler is not None:
            plan = sampler.plan(self.count)
            if plan is not None and self.device.type != "cpu":
                plan = plan.to(self.device)
        self.count += 1
        self.last_plan = plan
        with autocast(self.device, self.dtype):
            loss = self.model(self.inputs if inputs is None else inputs, plan,
                                labels=self.labels if labels is None else labels)
        loss.backward()
        if self.optimizer is not self.dense_optimizer:
            self.optimizer.set_plan(None if plan is None else plan.to("cpu"))
        else:
            self.zero_fill()
        self.optimizer_time = timed(self.device, self.optimizer.step)
        return loss.item()

    def zero_fill(self) -> None:
        for p in self.params:  # a skipped layer has no gradient: ZeRO zero-fills it, AdamW still steps it
            if p.grad is None:
                p.grad = torch.zeros_like(p)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.dense_optimizer.zero_grad(set_to_none=True)

    def compare_adamw(self) -> Tuple[float, Optional[float]]:
        """After `run`, outside the timed step: seconds of AdamW over all parameters on the same gradients (the
        step's own optimizer time when that is AdamW) and of the sparse step in the steady state (None unless
        steady_steps); then zero_grad."""
        steady_time = self.steady_step() if self.steady_steps else None
        if self.optimizer is self.dense_optimizer:
            dense_time = self.optimizer_time
        else:
            self.zero_fill()
            dense_time = timed(self.device, self.dense_optimizer.step)
        self.zero_grad()
        return dense_time, steady_time

    def steady_step(self) -> float:
        """Seconds of the sparse step on the last plan and gradients with every unit's step count advanced by
        steady_steps, as that many steps later in a run; the counts are put back after."""
        saved = {key: record.counts.clone() for key, record in self.optimizer.records.items()}
        self.optimizer.set_counts({key: count + self.steady_steps for key, count in saved.items()})
        self.optimizer.set_plan(None if self.last_plan is None else self.last_plan.to("cpu"))
        seconds = timed(self.device, self.optimizer.step)
        self.optimizer.set_counts(saved)
        return seconds


def write_json(path: Optional[str], result: dict) -> None:
    """--json PATH: the printed results, machine-readable (nothing when no path is given)."""
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)


def timed(device: torch.device, fn) -> float:
    return timed2(device, fn)[0]


def timed2(device: torch.device, fn):
    """(wall seconds, this process' CPU seconds) of `fn`; CPU time is steadier on a shared machine."""
    synchronize(device)
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu


def cpu_step_peak_bytes(fn) -> int:
    """Peak bytes torch's CPU allocator holds during `fn` above what it held at the start."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def resident_bytes(stepper: Stepper) -> int:
    """Parameters and optimizer state: what every variant holds before its step starts."""
    total = sum(p.numel() * p.element_size() for p in stepper.params)
    for state in stepper.optimizer.state.values():
        total += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
    return total


# ---------------------------------------------------------------------------------------------- measurements
def measure_steps(stepper: Stepper, variants: Dict[str, Optional[PlanSampler]], warmup: int, reps: int,
                  profile_rows: int = 0) -> Dict[str, dict]:
    """Interleaved timing of every variant, then one memory-measured step each."""
    device = stepper.device
    times: Dict[str, List[float]] = {name: [] for name in variants}
    cpu_times: Dict[str, List[float]] = {name: [] for name in variants}
    optimizer_times: Dict[str, List[tuple]] = {name: [] for name in variants}  # (sparse, AdamW, steady sparse)
    for rep in range(warmup + reps):
        for name, sampler in variants.items():
            wall, cpu = timed2(device, lambda: stepper.run(sampler))
            dense_optimizer, steady = stepper.compare_adamw()
            if rep >= warmup:
                times[name].append(wall)
                cpu_times[name].append(cpu)
                optimizer_times[name].append((stepper.optimizer_time, dense_optimizer, steady))
    results = {}
    for name, sampler in variants.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            stepper.step(sampler)
            peak = torch.cuda.max_memory_allocated(device)
        else:
            peak = resident_bytes(stepper) + cpu_step_peak_bytes(lambda: stepper.step(sampler))
        if profile_rows:
            print_profile(stepper, name, sampler, profile_rows)
        results[name] = dict(step_time_s=statistics.median(times[name]), step_times_s=times[name],
                             optimizer_time_s=statistics.median(t[0] for t in optimizer_times[name]),
                             adamw_time_s=statistics.median(t[1] for t in optimizer_times[name]),
                             steady_optimizer_time_s=None if not stepper.steady_steps else
                             statistics.median(t[2] for t in optimizer_times[name]),
                             cpu_time_s=statistics.median(cpu_times[name]), peak_memory_bytes=peak,
                             plan=stepper.last_plan)
    return results


def print_profile(stepper: Stepper, name: str, sampler, rows: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        stepper.step(sampler)
    print(f"\n== profile: {name} ==")
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=rows,
                                                              max_name_column_width=48,
                                                              max_shapes_column_width=60))


def measure_modules(cfg, device, dtype, seq: int, batch_sizes: List[int], warmup: int, reps: int,
                    seed: int) -> List[dict]:
    """The paper's Tables 8/9: forward time of one layer's MHA, MLP and the whole layer, dense vs sampled
    (heads and columns at 0.5, a fresh gather per call as in training), for several micro-batch sizes."""
    torch.manual_seed(seed)
    model = Transformer(cfg).to(device)
    layer = model.layers[0]
    plan = make_sampler(cfg, (0.5, 0.5, 1.0), seed).plan(0)
    layer_plan = plan.layers[0] if device.type == "cpu" else plan.layers[0].to(device)
    modules = {
        "mha": lambda x, p: layer.attn(layer.attn_norm(x), p),
        "mlp": lambda x, p: layer.mlp(layer.mlp_norm(x), p),
        "layer": lambda x, p: layer(x, p),
    }
    rows = []
    for batch in batch_sizes:
        x = torch.randn(batch, seq, cfg.hidden_size, device=device)
        row = dict(micro_batch_size=batch)
        for name, fn in modules.items():
            times = {"dense": [], "est": []}
            for rep in range(warmup + reps):
                for key, p in (("dense", None), ("est", layer_plan)):
                    with autocast(device, dtype):
                        elapsed = timed(device, lambda: fn(x, p))
                    if rep >= warmup:
                        times[key].append(elapsed)
            dense, est = statistics.median(times["dense"]), statistics.median(times["est"])
            row[name] = dict(dense_ms=1e3 * dense, est_ms=1e3 * est, speedup=dense / est)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------------ CLI
def add_common_args(p: argparse.ArgumentParser) -> None:
    """The model, shape, device and output flags every step benchmark takes."""
    p.add_argument("--model", default="bench-cpu", help=f"model preset ({', '.join(MODEL_PRESETS)})")
    p.add_argument("--seq-length", type=int, default=None, help="tokens per sequence (default: the context)")
    p.add_argument("--micro-batch-size", type=int, default=8, help="sequences per step")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--seed", type=int, default=1234, help="seeds the weights, the data and the plans")
    p.add_argument("--json", default=None, help="also write the results to this file")


def setup(args):
    """(model config, sequence length, device, dtype) from the common flags, checked."""
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = model_preset(args.model)
    seq = args.seq_length or cfg.max_position_embeddings
    if not 0 < seq <= cfg.max_position_embeddings:
        raise UsageError(f"--seq-length {seq} must be in 1..{cfg.max_position_embeddings} for {args.model}")
    device = resolve_device(args.device)
    return cfg, seq, device, resolve_dtype(args.dtype, device)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_common_args(p)
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds of every variant first")
    p.add_argument("--reps", type=int, default=3, help="timed rounds; figures are medians")
    p.add_argument("--compile", action="store_true",
                   help="also time the step with every transformer layer compiled, as training's --compile, "
                        "against eager per method and stage, and the first (compiling) step")
    p.add_argument("--compile-backend", default=DEFAULT_BACKEND, help="torch.compile backend of --compile")
    p.add_argument("--est-optimizer", choices=("sparse", "dense"), default="sparse",
                   help="the optimizer step timed: training's sparse AdamW step, or AdamW over all parameters")
    p.add_argument("--steady-steps", type=int, default=1000,
                   help="also time the sparse step with every unit's step count advanced by this many steps, as "
                        "long into a run (0: only the bench's own counts)")
    p.add_argument("--no-est-machinery", action="store_true",
                   help="also time the dense step with plan=None and compare it with the dense StepPlan step")
    p.add_argument("--modules", action="store_true", help="add MHA/MLP/layer forward times (paper Tables 8/9)")
    p.add_argument("--module-batch-sizes", default="1,2,4,8",
                   help="micro-batch sizes of the --modules table")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: by GPU name)")
    p.add_argument("--profile", type=int, default=0, metavar="ROWS",
                   help="print a torch.profiler table of this many rows for one step of each variant")
    return p


def check(args) -> None:
    for flag in ("micro_batch_size", "reps"):
        if getattr(args, flag) <= 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    for flag in ("warmup", "steady_steps"):
        if getattr(args, flag) < 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")


def parse_batch_sizes(text: str) -> List[int]:
    try:
        sizes = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) <= 0:
        raise UsageError(f"--module-batch-sizes {text!r} must be positive integers separated by commas, e.g. 1,2,4,8")
    return sizes


def summarise(cfg, results: Dict[str, dict], batch: int, seq: int, peak: Optional[float]) -> dict:
    dense_flops = dense_step_flops(cfg, batch, seq)
    dense = results["dense"]

    def entry(r, flops):
        t = r["step_time_s"]
        out = dict(step_time_s=t, step_times_s=r["step_times_s"], step_time_min_s=min(r["step_times_s"]),
                   optimizer_time_s=r["optimizer_time_s"], adamw_time_s=r["adamw_time_s"],
                   optimizer_vs_adamw=r["optimizer_time_s"] / r["adamw_time_s"],
                   steady_optimizer_time_s=r["steady_optimizer_time_s"],
                   steady_optimizer_vs_adamw=None if r["steady_optimizer_time_s"] is None else
                   r["steady_optimizer_time_s"] / r["adamw_time_s"],
                   cpu_time_s=r["cpu_time_s"],
                   tokens_per_s=batch * seq / t,
                   tflops=flops / t / 1e12, peak_memory_bytes=r["peak_memory_bytes"],
                   peak_memory_ratio=r["peak_memory_bytes"] / dense["peak_memory_bytes"])
        out["mfu"] = out["tflops"] / peak if peak else None
        return out

    summary = dict(dense=entry(dense, dense_flops), stages={})
    if "dense_plan_none" in results:
        summary["dense_plan_none"] = entry(results["dense_plan_none"], dense_flops)
        summary["dense_plan_overhead"] = dense["step_time_s"] / results["dense_plan_none"]["step_time_s"]
        summary["dense_plan_overhead_cpu"] = dense["cpu_time_s"] / results["dense_plan_none"]["cpu_time_s"]
    for stage, rates in STAGES.items():
        r = results[stage]
        flops = step_flops(cfg, r["plan"], batch, seq)
        e = entry(r, flops)
        e.update(rates=list(rates), realised_rates=list(r["plan"].rates),
                 speedup=dense["step_time_s"] / e["step_time_s"],
                 cpu_speedup=dense["cpu_time_s"] / e["cpu_time_s"], ideal_speedup=dense_flops / flops,
                 min_speedup=min(dense["step_times_s"]) / min(r["step_times_s"]))
        e["efficiency"] = e["speedup"] / e["ideal_speedup"]
        e["cpu_efficiency"] = e["cpu_speedup"] / e["ideal_speedup"]
        summary["stages"][stage] = e
    return summary


def print_summary(summary: dict) -> None:
    d = summary["dense"]
    gib = 2 ** 30
    print(f"{'variant':<16}{'step s':>9}{'cpu s':>8}{'tok/s':>10}{'TFLOP/s':>9}{'MFU':>7}{'speedup':>9}{'ideal':>7}"
          f"{'eff':>6}{'mem GiB':>9}{'mem/dense':>10}")

    def line(name, e):
        mfu = "-" if e["mfu"] is None else f"{e['mfu']:.3f}"
        extra = (f"{e['speedup']:>9.3f}{e['ideal_speedup']:>7.3f}{e['efficiency']:>6.2f}" if "speedup" in e
                 else f"{'':>9}{'':>7}{'':>6}")
        print(f"{name:<16}{e['step_time_s']:>9.3f}{e['cpu_time_s']:>8.2f}{e['tokens_per_s']:>10.0f}{e['tflops']:>9.3f}{mfu:>7}{extra}"
              f"{e['peak_memory_bytes'] / gib:>9.3f}{e['peak_memory_ratio']:>10.3f}")

    line("dense (plan)", d)
    if "dense_plan_none" in summary:
        line("dense plan=None", summary["dense_plan_none"])
    for stage, e in summary["stages"].items():
        line(stage, e)
    if "dense_plan_overhead" in summary:
        print(f"dense StepPlan / plan=None step time: {summary['dense_plan_overhead']:.3f} wall, "
              f"{summary['dense_plan_overhead_cpu']:.3f} CPU")
    for stage, e in summary["stages"].items():
        print(f"{stage}: by CPU time speedup {e['cpu_speedup']:.3f} (efficiency {e['cpu_efficiency']:.2f}); "
              f"by fastest rep {e['min_speedup']:.3f} (efficiency {e['min_speedup'] / e['ideal_speedup']:.2f})")
    print(f"optimizer step ({summary.get('optimizer', 'sparse')}) against AdamW over all parameters on the same "
          "gradients, ms:")
    for name, e in [("dense (plan)", d)] + list(summary["stages"].items()):
        print(f"  {name:<14}{1e3 * e['optimizer_time_s']:>9.2f} vs {1e3 * e['adamw_time_s']:>9.2f}"
              f"  ratio {e['optimizer_vs_adamw']:.3f}")
    if d["steady_optimizer_time_s"] is not None:
        print(f"the same sparse steps with every unit's step count advanced by {summary['steady_steps']} (steady "
              "state: one bias correction for all), ms:")
        for name, e in [("dense (plan)", d)] + list(summary["stages"].items()):
            print(f"  {name:<14}{1e3 * e['steady_optimizer_time_s']:>9.2f} vs {1e3 * e['adamw_time_s']:>9.2f}"
                  f"  ratio {e['steady_optimizer_vs_adamw']:.3f}")
    for row in summary.get("modules", []):
        parts = "  ".join(f"{k} {row[k]['dense_ms']:.2f}/{row[k]['est_ms']:.2f} ms ({row[k]['speedup']:.2f}x)"
                          for k in ("mha", "mlp", "layer"))
        print(f"forward, micro-batch {row['micro_batch_size']}: dense/EST  {parts}")


@exit_on_usage_error
def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    check(args)
    cfg, seq, device, dtype = setup(args)
    module_batches = parse_batch_sizes(args.module_batch_sizes) if args.modules else []

    def make_stepper() -> Stepper:
        return Stepper(cfg, device, dtype, args.micro_batch_size, seq, args.seed,
                       sparse=args.est_optimizer == "sparse", steady_steps=args.steady_steps)

    stepper = make_stepper()
    variants: Dict[str, Optional[PlanSampler]] = {"dense": make_sampler(cfg, (1.0, 1.0, 1.0), args.seed)}
    if args.no_est_machinery:
        variants["dense_plan_none"] = None
    for stage, rates in STAGES.items():
        variants[stage] = make_sampler(cfg, rates, args.seed)
    results = measure_steps(stepper, variants, args.warmup, args.reps, args.profile)
    peak = peak_tflops(args.peak_tflops) if device.type == "cuda" else args.peak_tflops
    summary = summarise(cfg, results, args.micro_batch_size, seq, peak)
    if module_batches:
        summary["modules"] = measure_modules(cfg, device, dtype, seq, module_batches, args.warmup, args.reps,
                                             args.seed)
    summary.update(optimizer=args.est_optimizer, steady_steps=stepper.steady_steps, model=args.model, seq_length=seq,
                   micro_batch_size=args.micro_batch_size, device=str(device),
                   dtype=str(dtype).replace("torch.", ""), threads=torch.get_num_threads(), warmup=args.warmup,
                   reps=args.reps, peak_tflops=peak,
                   memory_method="cuda max_memory_allocated" if device.type == "cuda" else
                   "parameters + AdamW state + peak of torch CPU allocations during the step (profiler records)")
    print_summary(summary)
    if args.compile:
        summary["compile_ab"] = measure_compile_ab(make_stepper, timed, cfg, args.seed, args.warmup, args.reps,
                                                   args.compile_backend)
        print_compile_ab(summary["compile_ab"], args.compile_backend)
    write_json(args.json, summary)
    return summary


if __name__ == "__main__":
    main()
