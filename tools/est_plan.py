#!/usr/bin/env python
"""Print what an EST schedule costs: per-stage rates and step cost, and the total saving vs dense training.

    python tools/est_plan.py --model tinyllama-1.1b --schedule tinyllama --train-steps 60000
    python tools/est_plan.py --model gpt2-124m --schedule 20k,70k,150k:0.5,0.5,0.5/0.5,0.5,1/1,1,1

Costs are given twice: by the paper's simplified formula (eq. 8-10, nominal rates, MHA and MLP only) and by
exact forward+backward FLOPs (realised rates after balanced rounding, attention scores and LM head included).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from est_megatron.config import MODEL_PRESETS, SubnetConfig, model_preset  # noqa: E402
from est_megatron.errors import UsageError, exit_on_usage_error  # noqa: E402
from est_megatron.subnet.flops import schedule_savings  # noqa: E402
from est_megatron.subnet.schedule import SCHEDULE_PRESETS, parse_schedule  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=sorted(MODEL_PRESETS), help="model preset")
    p.add_argument("--schedule", required=True,
                   help=f"preset ({', '.join(SCHEDULE_PRESETS)}) or BOUNDARIES:RATES, "
                        "e.g. 20k,70k,150k:0.5,0.5,0.5/0.5,0.5,1/1,1,1")
    p.add_argument("--train-steps", type=int,
                   help="run length; required when the boundaries are fractions (presets), else the last one")
    p.add_argument("--seq-length", type=int, help="tokens per sequence (default: the model's context length)")
    p.add_argument("--micro-batch-size", type=int, default=1,
                   help="sequences per micro-batch; scales FLOPs per step, not the ratios (default 1)")
    p.add_argument("--whole-groups", action="store_true",
                   help="sample whole key/value groups instead of query heads inside every group")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return p


def _rate(p):
    return f"{p:.4g}"


def format_report(model_name, model, savings, schedule_name):
    """The human-readable report: parameter count, one row per stage, the total saving both ways."""
    lines = [f"model {model_name}: {model.num_parameters():,} parameters (vocabulary {model.vocab_size:,}), "
             f"sequence length {savings.seq}, micro-batch {savings.batch}",
             f"dense step: {savings.dense_step_flops:.4e} FLOPs forward+backward "
             f"({savings.dense_step_flops / (savings.batch * savings.seq):.4e} per token)",
             f"schedule {schedule_name} over {savings.train_steps:,} steps (rates nominal/realised):",
             f"{'stage':>5}  {'step range':>17}  {'steps':>9}  {'pH':>11}  {'pM':>11}  {'pL':>11}  "
             f"{'cost(paper)':>11}  {'cost(exact)':>11}"]
    for s in savings.stages:
        rates = "  ".join(f"{_rate(n) + '/' + _rate(r):>11}" for n, r in zip(s.nominal, s.realised))
        lines.append(f"{s.stage:>5}  {f'[{s.start}, {s.end})':>17}  {s.steps:>9,}  {rates}  "
                     f"{s.paper_cost:>11.4f}  {s.exact_cost:>11.4f}")
    lines.append(f"total saving: {100 * savings.paper_saving:.1f}% by the paper's formula (eq. 8-10), "
                 f"{100 * savings.exact_saving:.1f}% by exact FLOPs")
    return "\n".join(lines)


@exit_on_usage_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    model = model_preset(args.model)
    schedule = parse_schedule(args.schedule)
    train_steps = args.train_steps
    if train_steps is None:
        if schedule.fractional:
            raise UsageError(f"schedule {schedule.name!r} gives its boundaries as fractions of the run; pass "
                             "--train-steps (e.g. 60000 for TinyLlama, 150000 for GPT-2)")
        train_steps = int(schedule.boundaries[-1])
    seq = model.max_position_embeddings if args.seq_length is None else args.seq_length
    if not 0 < seq <= model.max_position_embeddings:
        raise UsageError(f"--seq-length {seq} must be between 1 and the model's context length "
                         f"{model.max_position_embeddings}")
    if args.micro_batch_size <= 0:
        raise UsageError(f"--micro-batch-size must be positive, got {args.micro_batch_size}")
    savings = schedule_savings(model, schedule.resolve(train_steps), SubnetConfig(whole_groups=args.whole_groups),
                               batch=args.micro_batch_size, seq=seq)
    if args.json:
        print(json.dumps(dict(model=args.model, parameters=model.num_parameters(), schedule=schedule.name,
                              **savings.to_dict()), indent=2))
    else:
        print(format_report(args.model, model, savings, schedule.name))


if __name__ == "__main__":
    main()
