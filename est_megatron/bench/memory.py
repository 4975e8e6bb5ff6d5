"""Peak memory per rank of DeepSpeed training under ZeRO-1/2/3 on 1 and 2 processes: host RSS on the CPU, the CUDA
allocator's peak on GPUs.

    python tools/bench/memory.py --zero 1,2,3 --nproc 1,2
    python tools/bench/memory.py --hidden-size 768 --num-layers 8 --zero 3 --nproc 2 --recompute full

Each (ZeRO stage, process count) is one `torchrun` run on gloo (CPU, fp32) that does what training does: the model
from `build_model` (inside deepspeed.zero.Init under ZeRO-3), AdamW from `build_optimizer`, the DeepSpeed config
from ds_configs/zeroN.json through `load_ds_config`, then --steps optimizer steps of EST stage 1 (0.5, 0.5, 0.5),
stage 2 (0.5, 0.5, 1) and dense (rates as the tinyllama schedule), each step --accumulation micro-batches of random
tokens. The workers run with glibc returning every freed block of 1 MiB or more (MALLOC_MMAP_THRESHOLD_=1048576), so
that RSS counts the live tensors, as a GPU's allocated-bytes counter does, and not the freed blocks glibc's heap
would otherwise keep for reuse (--glibc-heap measures with those: more, by an amount that depends on which tensors
exceed glibc's 32 MiB threshold, that is on the shapes). Every rank reads its high-water RSS (getrusage ru_maxrss,
which counts memory that glibc has since returned, so it is the true peak) after imports and process-group start
(the runtime baseline), after the model is built (start-up), after `deepspeed.initialize` and after each stage; a
stage's peak is the high-water mark at its end, so stages run smallest first. With --device cuda (the default
where torch sees a GPU) each process takes one GPU, NCCL and bf16, and reads torch.cuda.max_memory_allocated instead;
the planner then counts whole reduce buckets and bf16 weights. The table prints the largest rank's
figures, and beside each the peak est_megatron.planning.memory predicts for it (the planner behind
tools/memory_plan.py, given the measured baseline as its fixed runtime overhead) and predicted / measured. A stage's
prediction is the largest phase so far: the first stage's step is the run's first, before which the Adam moments do
not exist. Keep --steps at 2 or more: ZeRO-3 records the order modules run in during a stage's first step and only
from the second on prefetches and keeps gathered weights for the backward pass, as training does.

Under ZeRO-3 a last line checks the rank's peak against the bound 1/N of the model states + activations + a fixed
runtime overhead, whose terms it prints: the runtime baseline and the two buffers the DeepSpeed config sizes (the
reduce buckets, and the gathered weights: the running one and the stage3_max_live_parameters budget, two layers
with ds_configs/zero3.json's "auto"). --ds-config measures another config (e.g. DeepSpeed's defaults for the
stage3_* keys) and plans with its sizes.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from types import SimpleNamespace

from est_megatron import host_heap
from est_megatron.errors import UsageError, exit_on_usage_error
from est_megatron.help_format import HelpFormatter
from est_megatron.training.arguments import DS_CONFIG_DIR

STAGES = (("est stage 1", (0.5, 0.5, 0.5)), ("est stage 2", (0.5, 0.5, 1.0)), ("dense", (1.0, 1.0, 1.0)))
GIB = 2 ** 30


def peak_rss() -> int:
    """This process' high-water resident set size in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def add_shape_args(p: argparse.ArgumentParser) -> None:
    """The model shape: a ~200M-parameter Llama by default (fits 2 ZeRO-1 ranks in a 23 GB machine)."""
    p.add_argument("--model", default="bench-cpu", help="model preset the shape flags override")
    p.add_argument("--num-layers", type=int, default=12, help="transformer layers")
    p.add_argument("--hidden-size", type=int, default=1024, help="hidden size")
    p.add_argument("--ffn-hidden-size", type=int, default=2816, help="MLP intermediate size")
    p.add_argument("--num-attention-heads", type=int, default=16, help="query heads")
    p.add_argument("--num-query-groups", type=int, default=4, help="key/value heads")
    p.add_argument("--vocab-size", type=int, default=32000, help="vocabulary")
    p.add_argument("--seq-length", type=int, default=256, help="tokens per sequence")
    p.add_argument("--micro-batch-size", type=int, default=2, help="sequences per micro-batch")


def model_config(args):
    from est_megatron.config import model_preset
    return model_preset(args.model, num_layers=args.num_layers, hidden_size=args.hidden_size,
                        ffn_hidden_size=args.ffn_hidden_size, num_attention_heads=args.num_attention_heads,
                        num_query_groups=args.num_query_groups, vocab_size=args.vocab_size,
                        max_position_embeddings=max(args.seq_length, 16))


def train_args(args, dp_size: int) -> SimpleNamespace:
    """The training flags `load_ds_config` and `build_optimizer` read."""
    return SimpleNamespace(global_batch_size=args.micro_batch_size * dp_size * args.accumulation,
                           micro_batch_size=args.micro_batch_size, clip_grad=1.0, weight_decay=0.1, lr=1e-4,
                           adam_beta1=0.9, adam_beta2=0.95, adam_eps=1e-8, method="dense", est_optimizer="dense",
                           recompute_activations=False, recompute_granularity=args.recompute,
                           recompute_num_layers=None)


def peak_bytes(cuda: bool) -> int:
    """The high-water mark the bench reads: this rank's peak CUDA allocation on a GPU, its peak RSS on the CPU."""
    if cuda:
        import torch
        return torch.cuda.max_memory_allocated()
    return peak_rss()


def worker(args) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    from est_megatron.model.recompute import Recompute
    from est_megatron.parallel.state import initialize_model_parallel
    import deepspeed
    from est_megatron.config import SubnetConfig
    from est_megatron.parallel.build import build_model
    from est_megatron.subnet.plan import PlanSampler
    from est_megatron.subnet.schedule import parse_schedule
    from est_megatron.training.distributed import teardown
    from est_megatron.training.ds_config import load_ds_config, resolve_zero3_auto
    from est_megatron.training.optimizer_setup import build_optimizer

    import torch._dynamo  # noqa: F401  every run has it from its first optimizer on (torch.optim imports it): runtime
    state = initialize_model_parallel(1, 1, backend="nccl" if cuda else "gloo")
    dp = state.get_data_parallel_world_size()
    marks = {"baseline": peak_bytes(cuda)}
    cfg = model_config(args)
    targs = train_args(args, dp)
    ds_config = load_ds_config(config_path(args, args.zero), targs, dp, "bf16" if cuda else "fp32")
    ds_config = resolve_zero3_auto(ds_config, cfg)
    model, _ = build_model(cfg, state, 1234, zero_stage=args.zero, ds_config=ds_config,
                           recompute=Recompute.from_args(targs))
    if cuda and args.zero != 3:  # ZeRO-3 builds on the GPU (deepspeed.zero.Init); the others as training does
        model.cuda()
    marks["start-up"] = peak_bytes(cuda)
    with host_heap.large_frees_returned(args.zero == 3):  # as training does
        engine, *_ = deepspeed.initialize(model=model, optimizer=build_optimizer(model, targs), config=ds_config,
                                          mpu=state)
    marks["initialize"] = peak_bytes(cuda)
    gen = torch.Generator().manual_seed(dist.get_rank())
    for name, rates in STAGES:
        sampler = PlanSampler(cfg, SubnetConfig(), parse_schedule("1:{},{},{}".format(*rates)).resolve(1), 1234)
        for step in range(args.steps):
            plan = None if rates == (1.0, 1.0, 1.0) else sampler.plan(step)
            if args.zero == 3:
                engine.optimizer.grad_partitions_flat_buffer.zero_()
            for _ in range(args.accumulation):
                tokens = torch.randint(0, cfg.vocab_size, (args.micro_batch_size, args.seq_length + 1),
                                       generator=gen).to(engine.device)
                loss = engine(tokens[:, :-1], plan=plan, labels=tokens[:, 1:])
                engine.backward(loss)
                engine.step()
        marks[name] = peak_bytes(cuda)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, marks)
    if dist.get_rank() == 0:
        with open(args.out, "w") as f:
            json.dump(gathered, f)
    teardown(engine)  # exiting with live gloo groups aborted a rank in 1 of 15 runs ("terminate called ...")


def config_path(args, zero: int) -> str:
    return args.ds_config or os.path.join(DS_CONFIG_DIR, f"zero{zero}.json")


def bench_plan(args, cfg, zero: int, nproc: int, baseline: int):
    """The planner's MemoryPlan of a run: fp32 on `nproc` ranks, the buffer sizes of the DeepSpeed config it used,
    the measured baseline as the fixed runtime overhead, one activation plan per measured stage."""
    from est_megatron.config import SubnetConfig
    from est_megatron.subnet.flops import SubnetCounts
    from est_megatron.subnet.plan import PlanSampler
    from est_megatron.subnet.schedule import parse_schedule
    from est_megatron.planning.memory import PlannedRun, plan_memory
    from est_megatron.planning.training_run import ZeroLayout
    from est_megatron.training.ds_config import resolve_zero3_auto
    sampler = PlanSampler(cfg, SubnetConfig(), parse_schedule("1:1,1,1").resolve(1), 1234)
    stages = [(name, SubnetCounts.from_sampler(sampler, rates)) for name, rates in STAGES]
    with open(config_path(args, zero)) as f:
        layout = ZeroLayout.from_section(resolve_zero3_auto(json.load(f), cfg).get("zero_optimization", {}))
    planned = PlannedRun(dp=nproc, zero=zero, bf16=args.device == "cuda", micro_batch_size=args.micro_batch_size,
                         seq_length=args.seq_length, micro_batches=args.accumulation, recompute=args.recompute,
                         reduce_bucket=layout.reduce_bucket, zero3_retained=layout.retained)
    return plan_memory(cfg, planned, stages, overhead_bytes=baseline, device=args.device)


def predicted_peaks(plan, steps: int) -> dict:
    """The plan's high-water mark at the end of each measured phase (bytes)."""
    first = plan.phases(STAGES[0][0], first_step=True)
    peaks = {"start-up": first["start-up"], "initialize": max(first["start-up"], first["initialize"])}
    high = max(first.values())
    for index, (name, _) in enumerate(STAGES):
        if index or steps > 1:  # a step after the run's first
            high = max([high] + list(plan.phases(name).values()))
        peaks[name] = high
    return peaks


def zero3_bound(plan) -> dict:
    """The terms of ZeRO-3's per-rank bound (bytes): this rank's 1/N of the model states (weights, gradients, fp32
    master weights, Adam moments), the largest stage's activations, and the fixed runtime overhead: the runtime
    (the measured baseline) and two buffers whose size the DeepSpeed config sets, not the model's parameter count
    or N: the reduce buckets (reduce_bucket_size) and the gathered weights (the running one and what
    stage3_max_live_parameters lets the prefetcher keep)."""
    terms = dict(states=plan.weights + plan.gradients + plan.master + plan.moments,
                 activations=max(acts.peak for acts in plan.activations.values()), runtime=plan.overhead,
                 reduce_buckets=plan.reduce_buffer, gathered=max(plan.stage_gathered.values()))
    return dict(terms, bound=sum(terms.values()))


def run(args, zero: int, nproc: int) -> list:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "marks.json")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "est_megatron.bench.memory", "--worker", f"--zero={zero}", f"--out={out}"]
        cmd += [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                if k in WORKER_FLAGS and v is not None]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        if not args.glibc_heap and args.device == "cpu":
            env["MALLOC_MMAP_THRESHOLD_"] = str(host_heap.RETURNED_BLOCK)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"ZeRO-{zero} on {nproc} processes failed:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
        with open(out) as f:
            return json.load(f)


WORKER_FLAGS = ("model", "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                "num_query_groups", "vocab_size", "seq_length", "micro_batch_size", "steps", "accumulation",
                "threads", "recompute", "ds_config", "device")


def measured_stages(args) -> list:
    """The ZeRO stages to run: --zero's, checked against the stage --ds-config sets."""
    if not args.ds_config:
        return [int(z) for z in (args.zero or "1,2,3").split(",")]
    from est_megatron.training.ds_config import zero_stage
    try:
        with open(args.ds_config) as f:
            stage = zero_stage(json.load(f))
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"cannot read --ds-config {args.ds_config}: {err}; pass a DeepSpeed JSON file") from None
    if args.zero not in (None, str(stage)):
        raise UsageError(f"--ds-config {args.ds_config} sets ZeRO stage {stage} but --zero is {args.zero}; drop "
                         "--zero or pass the matching stage")
    return [stage]


@exit_on_usage_error
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_shape_args(p)
    p.add_argument("--zero", help="ZeRO stages to measure, comma-separated (default: 1,2,3, or the stage of "
                                  "--ds-config)")
    p.add_argument("--ds-config", help="a DeepSpeed config to measure instead of ds_configs/zeroN.json")
    p.add_argument("--nproc", default="1,2", help="process counts to measure, comma-separated")
    p.add_argument("--steps", type=int, default=2, help="optimizer steps per stage")
    p.add_argument("--accumulation", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--recompute", choices=("selective", "full"), default=None, help="activation recompute")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--device", choices=("cpu", "cuda"),
                   help="cpu: gloo, fp32, peak RSS; cuda: one GPU per process, NCCL, bf16, peak CUDA allocation "
                        "(default: cuda where torch sees a GPU)")
    p.add_argument("--glibc-heap", action="store_true",
                   help="keep glibc's own heap thresholds: RSS then adds the freed blocks the heap keeps, which the "
                        "plan (live tensors) leaves out")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        args.zero = int(args.zero)
        worker(args)
        return 0
    stages = measured_stages(args)
    cfg = model_config(args)
    if args.device is None:
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    measured = ("bf16 on CUDA, peak allocated" if args.device == "cuda" else "fp32 on CPU, " + (
        "glibc's own heap thresholds" if args.glibc_heap else "freed blocks of 1 MiB or more returned (live)"))
    print(f"model: {cfg.num_parameters():,} parameters ({cfg.num_layers} layers, hidden {cfg.hidden_size}, vocab "
          f"{cfg.vocab_size}), micro-batch {args.micro_batch_size} x seq {args.seq_length}, recompute "
          f"{args.recompute or 'none'}, {measured}")
    print(f"{'ZeRO':>4} {'procs':>5} {'phase':>12} {'peak GiB':>13} {'above baseline GiB':>19} "
          f"{'planned GiB':>12} {'planned/measured':>17}")
    results = []
    for zero in stages:
        for nproc in (int(n) for n in args.nproc.split(",")):
            marks = run(args, zero, nproc)
            baseline = max(rank["baseline"] for rank in marks)
            plan = bench_plan(args, cfg, zero, nproc, baseline)
            planned = predicted_peaks(plan, args.steps)
            for phase in ("start-up", "initialize") + tuple(name for name, _ in STAGES):
                measured = max(rank[phase] for rank in marks)
                results.append(dict(zero=zero, nproc=nproc, phase=phase, peak_bytes=measured,
                                    baseline_bytes=baseline, planned_bytes=planned[phase]))
                print(f"{zero:>4} {nproc:>5} {phase:>12} {measured / GIB:>13.3f} {(measured - baseline) / GIB:>19.3f} "
                      f"{planned[phase] / GIB:>12.3f} {planned[phase] / measured:>17.3f}", flush=True)
            if zero == 3:
                bound = zero3_bound(plan)
                peak = max(rank[phase] for rank in marks for phase in rank)
                results.append(dict(zero=zero, nproc=nproc, phase="zero3 bound", peak_bytes=peak, **bound))
                print(f"{'':>11}ZeRO-3 bound: states / {nproc} {bound['states'] / GIB:.3f} + activations "
                      f"{bound['activations'] / GIB:.3f} + fixed overhead (runtime {bound['runtime'] / GIB:.3f}, "
                      f"reduce buckets {bound['reduce_buckets'] / GIB:.3f}, gathered weights "
                      f"{bound['gathered'] / GIB:.3f}) = {bound['bound'] / GIB:.3f} GiB; peak {peak / GIB:.3f} GiB "
                      f"= {peak / bound['bound']:.3f} x the bound", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items() if k not in ("worker", "out")},
                       "parameters": cfg.num_parameters(), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
