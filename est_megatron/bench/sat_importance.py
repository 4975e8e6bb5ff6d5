"""What SAT's importance computation costs next to the training step it plans.

    python tools/bench/sat_importance.py --model bench-cpu --seq-length 256 --micro-batch-size 8 --reps 3

Interleaved after warm-up, on the same model and batch: (a) the importance computation of one step
(`SatPlanner.scores`: the no-grad statistics pre-pass over --sat-prepass-seqs sequences and the scoring of every
head and MLP column), and (b) a whole training step (forward, backward, AdamW) of the subnetwork it selects, at
the omission rate r_max. The importance computation runs once per optimizer step, so with A micro-batches of
gradient accumulation its share of a step is (a) / (a + A * (b)). Prints medians, that share for A = 1 and
--accumulation, and the FLOPs model's ratio (importance_flops / step_flops).
"""
from __future__ import annotations

import argparse
import statistics

from est_megatron.bench import step_speed
from est_megatron.config import SubnetConfig
from est_megatron.errors import UsageError, exit_on_usage_error
from est_megatron.subnet.flops import step_flops
from est_megatron.subnet.sat import METRICS, SatConfig, SatPlanner, importance_flops
from est_megatron.help_format import HelpFormatter


class _FixedPlan:
    """A stand-in sampler for `Stepper.step`: the plan SAT selected last."""

    def __init__(self):
        self.current = None

    def plan(self, step):
        return self.current


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    step_speed.add_common_args(p)
    p.add_argument("--accumulation", type=int, default=8, help="micro-batches per optimizer step for the share")
    p.add_argument("--sat-metric", choices=METRICS, default="maxip", help="SAT importance metric")
    p.add_argument("--sat-prepass-seqs", type=int, default=1, help="sequences in the statistics pre-pass")
    p.add_argument("--sat-r-max", type=float, default=0.5, help="omission rate of the timed plan")
    p.add_argument("--warmup", type=int, default=1, help="untimed repetitions first")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions (medians are reported)")
    return p


@exit_on_usage_error
def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if min(args.micro_batch_size, args.accumulation, args.reps) <= 0 or args.warmup < 0:
        raise UsageError("--micro-batch-size, --accumulation and --reps must be positive, --warmup >= 0")
    cfg, seq, device, dtype = step_speed.setup(args)
    sat = SatConfig(metric=args.sat_metric, r_max=args.sat_r_max, ladders=0, prepass_seqs=args.sat_prepass_seqs)
    planner = SatPlanner(cfg, SubnetConfig(), sat, train_steps=1, seed=args.seed)
    stepper = step_speed.Stepper(cfg, device, dtype, args.micro_batch_size, seq, args.seed)
    selected = _FixedPlan()

    def importance():
        with step_speed.autocast(device, dtype):
            scores = planner.scores(0, stepper.model, stepper.inputs)
        selected.current = planner.select_plan(0, scores)

    importance_times, step_times = [], []
    for rep in range(args.warmup + args.reps):
        a = step_speed.timed(device, importance)
        b = step_speed.timed(device, lambda: stepper.step(selected))
        if rep >= args.warmup:
            importance_times.append(a)
            step_times.append(b)
    a, b = statistics.median(importance_times), statistics.median(step_times)
    flops_ratio = importance_flops(cfg, args.sat_prepass_seqs, seq, args.sat_metric) / step_flops(
        cfg, selected.current, args.micro_batch_size, seq)
    result = {"model": args.model, "seq_length": seq, "micro_batch_size": args.micro_batch_size,
              "metric": args.sat_metric, "prepass_seqs": args.sat_prepass_seqs, "device": str(device),
              "importance_s": a, "step_s": b, "share_one_micro_batch": a / (a + b),
              "accumulation": args.accumulation,
              "share_per_optimizer_step": a / (a + args.accumulation * b),
              "flops_ratio_per_micro_batch": flops_ratio}
    print(f"{args.model}, seq {seq}, micro-batch {args.micro_batch_size}, metric {args.sat_metric}, "
          f"pre-pass {args.sat_prepass_seqs} sequence(s), {device}")
    print(f"importance computation {a * 1e3:.1f} ms | SAT training step {b * 1e3:.1f} ms (medians of {args.reps})")
    print(f"share of a step: {result['share_one_micro_batch'] * 100:.1f}% with one micro-batch, "
          f"{result['share_per_optimizer_step'] * 100:.1f}% with {args.accumulation} micro-batches per step; "
          f"FLOPs ratio per micro-batch {flops_ratio * 100:.1f}%")
    step_speed.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
