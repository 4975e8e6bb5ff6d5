"""Print what a subnetwork-training schedule costs: per-stage rates and step cost, and the saving vs dense.

    python tools/est_plan.py --model tinyllama-1.1b --est-schedule tinyllama --train-steps 60000
    python tools/est_plan.py --model gpt2-124m --est-schedule 20k,70k,150k:0.5,0.5,0.5/0.5,0.5,1/1,1,1
    python tools/est_plan.py --model gpt2-124m --method raptr --raptr-schedule quarters --train-steps 150000
    python tools/est_plan.py --model tinyllama-1.1b --method sat --sat-r-max 0.5 --train-steps 60000 \
        --global-batch-size 1024 --seq-length 2048

--method est (default) prints one row per EST stage, raptr one per RAPTR stage (its depth), sat one per LORS
ladder (its omission rate r). The method flags are the training entry points' (est_megatron.training.arguments).
Costs are given twice: by the paper's simplified formula (eq. 8-10, nominal rates, MHA and MLP only) and by
exact forward+backward FLOPs (realised rates after balanced rounding, attention scores and LM head included).
SAT's exact cost also counts its per-step importance computation (pre-pass forward and scoring), amortised over
--global-batch-size sequences.
"""
import argparse
import json
from dataclasses import dataclass

from est_megatron.config import MODEL_PRESETS, model_preset
from est_megatron.errors import UsageError, exit_on_usage_error
from est_megatron.subnet.flops import ScheduleSavings, dense_step_flops, schedule_savings
from est_megatron.subnet.raptr import parse_raptr_schedule
from est_megatron.subnet.sat import decay_start_step, importance_flops, lors_ladder, lors_schedule
from est_megatron.subnet.schedule import parse_schedule
from est_megatron.training.methods import add_method_args, sat_config_from_args, subnet_config
from est_megatron.help_format import HelpFormatter

METHODS = ("est", "raptr", "sat")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", required=True, choices=sorted(MODEL_PRESETS), help="model preset")
    p.add_argument("--train-steps", type=int,
                   help="run length; required when the boundaries are fractions (presets, RAPTR, SAT), else the "
                        "last boundary")
    p.add_argument("--seq-length", type=int, help="tokens per sequence (default: the model's context length)")
    p.add_argument("--micro-batch-size", type=int, default=1,
                   help="sequences per micro-batch; scales FLOPs per step, not the ratios (default 1)")
    p.add_argument("--global-batch-size", type=int,
                   help="sequences per optimizer step, over which SAT's importance computation is amortised "
                        "(default: --micro-batch-size)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    add_method_args(p, methods=METHODS)
    # the flags' earlier names
    p.add_argument("--schedule", dest="est_schedule", help=argparse.SUPPRESS)
    p.add_argument("--whole-groups", dest="est_whole_groups", action="store_true", help=argparse.SUPPRESS)
    return p


def _rate(p):
    return f"{p:.4g}"


def _head_lines(model_name, model, savings):
    return [f"model {model_name}: {model.num_parameters():,} parameters (vocabulary {model.vocab_size:,}), "
            f"sequence length {savings.seq}, micro-batch {savings.batch}",
            f"dense step: {savings.dense_step_flops:.4e} FLOPs forward+backward "
            f"({savings.dense_step_flops / (savings.batch * savings.seq):.4e} per token)"]


def _total_line(savings, exact_saving=None, note=""):
    exact = savings.exact_saving if exact_saving is None else exact_saving
    return (f"total saving: {100 * savings.paper_saving:.1f}% by the paper's formula (eq. 8-10), "
            f"{100 * exact:.1f}% by exact FLOPs{note}")


def format_report(model_name, model, savings, schedule_name):
    """EST: parameter count, one row per stage (three rates), the total saving both ways."""
    lines = _head_lines(model_name, model, savings) + [
        f"schedule {schedule_name} over {savings.train_steps:,} steps (rates nominal/realised):",
        f"{'stage':>5}  {'step range':>17}  {'steps':>9}  {'pH':>11}  {'pM':>11}  {'pL':>11}  "
        f"{'cost(paper)':>11}  {'cost(exact)':>11}"]
    for s in savings.stages:
        rates = "  ".join(f"{_rate(n) + '/' + _rate(r):>11}" for n, r in zip(s.nominal, s.realised))
        lines.append(f"{s.stage:>5}  {f'[{s.start}, {s.end})':>17}  {s.steps:>9,}  {rates}  "
                     f"{s.paper_cost:>11.4f}  {s.exact_cost:>11.4f}")
    return "\n".join(lines + [_total_line(savings)])


def format_raptr_report(model_name, model, savings, resolved, keep_first_last):
    """RAPTR: one row per stage with its depth (layers trained per step)."""
    lines = _head_lines(model_name, model, savings) + [
        f"RAPTR schedule {resolved.schedule.name} over {savings.train_steps:,} steps, first and last layers "
        f"{'always kept' if keep_first_last else 'drawn too'}:",
        f"{'stage':>5}  {'step range':>17}  {'steps':>9}  {'depth':>7}  {'pL':>7}  {'cost(paper)':>11}  "
        f"{'cost(exact)':>11}"]
    for s, depth in zip(savings.stages, resolved.depths):
        lines.append(f"{s.stage:>5}  {f'[{s.start}, {s.end})':>17}  {s.steps:>9,}  {f'{depth}/{model.num_layers}':>7}  "
                     f"{_rate(s.realised[2]):>7}  {s.paper_cost:>11.4f}  {s.exact_cost:>11.4f}")
    return "\n".join(lines + [_total_line(savings)])


def format_sat_report(model_name, model, savings, ladders, sat, importance, global_batch):
    """SAT: one row per LORS ladder with its omission rate; the exact cost adds the importance computation."""
    lines = _head_lines(model_name, model, savings) + [
        f"SAT LORS r_max {sat.r_max:g}, {sat.ladders} ladders over {savings.train_steps:,} steps; importance "
        f"({sat.metric}, {sat.prepass_seqs}-sequence pre-pass) costs {importance:.4f} of a dense step of "
        f"{global_batch} sequences (rates nominal/realised):",
        f"{'ladder':>6}  {'step range':>17}  {'steps':>9}  {'r':>6}  {'pH':>11}  {'pM':>11}  {'cost(paper)':>11}  "
        f"{'cost(exact)':>11}"]
    for s, (ladder, overhead) in zip(savings.stages, ladders):
        rates = "  ".join(f"{_rate(n) + '/' + _rate(r):>11}" for n, r in zip(s.nominal[:2], s.realised[:2]))
        lines.append(f"{ladder:>6}  {f'[{s.start}, {s.end})':>17}  {s.steps:>9,}  {_rate(1 - s.nominal[0]):>6}  "
                     f"{rates}  {s.paper_cost:>11.4f}  {s.exact_cost + overhead:>11.4f}")
    with_importance = 1.0 - sum(s.steps * (s.exact_cost + o) for s, (_, o) in zip(savings.stages, ladders)) / \
        savings.train_steps
    return "\n".join(lines + [_total_line(savings, with_importance, " with the importance computation "
                                          f"({100 * savings.exact_saving:.1f}% without)")]), with_importance


def _train_steps(args, fractional, last_boundary, what):
    if args.train_steps is not None:
        if args.train_steps <= 0:
            raise UsageError(f"--train-steps must be positive, got {args.train_steps}")
        return args.train_steps
    if fractional:
        raise UsageError(f"{what} gives its boundaries as fractions of the run; pass --train-steps (e.g. 60000 for "
                         "TinyLlama, 150000 for GPT-2)")
    return int(last_boundary)


@dataclass
class MethodPlan:
    """A method's schedule and what it costs: the printed table, the --json fields, and the exact saving that
    tools/compare_runs.py predicts an equal-FLOPs dense run from (SAT's includes its importance computation)."""

    savings: ScheduleSavings
    report: str
    details: dict
    saving: float


def plan_method(args, model, model_name, seq, global_batch) -> MethodPlan:
    """The schedule of args.method (est, raptr or sat flags, as the training entry points parse them) on `model`."""
    subnet = subnet_config(args, model)
    if args.method == "est":
        if args.est_schedule is None:
            raise UsageError("--method est needs --est-schedule (a preset such as tinyllama, or BOUNDARIES:RATES)")
        schedule = parse_schedule(args.est_schedule)
        train_steps = _train_steps(args, schedule.fractional, schedule.boundaries[-1], f"schedule {schedule.name!r}")
        savings = schedule_savings(model, schedule.resolve(train_steps), subnet, batch=args.micro_batch_size, seq=seq)
        return MethodPlan(savings, format_report(model_name, model, savings, schedule.name),
                          dict(schedule=schedule.name), savings.exact_saving)
    if args.method == "raptr":
        raptr = parse_raptr_schedule(args.raptr_schedule)
        train_steps = _train_steps(args, raptr.fractional_boundaries, raptr.boundaries[-1],
                                   f"RAPTR schedule {raptr.name!r}")
        resolved = raptr.resolve(model, subnet, train_steps, args.raptr_keep_first_last)
        savings = schedule_savings(model, resolved.schedule, subnet, batch=args.micro_batch_size, seq=seq)
        return MethodPlan(savings, format_raptr_report(model_name, model, savings, resolved,
                                                       args.raptr_keep_first_last),
                          dict(schedule=raptr.name, depths=list(resolved.depths),
                               keep_first_last=args.raptr_keep_first_last), savings.exact_saving)
    sat = sat_config_from_args(args)
    train_steps = _train_steps(args, True, None, "SAT's LORS schedule")
    lors = lors_schedule(sat, train_steps)
    savings = schedule_savings(model, lors, subnet, batch=args.micro_batch_size, seq=seq)
    importance = importance_flops(model, sat.prepass_seqs, seq, sat.metric) / dense_step_flops(model, global_batch,
                                                                                              seq)
    t_d = decay_start_step(sat, train_steps)
    ladders = [(lors_ladder(s.start, train_steps, t_d, sat.ladders), 0.0 if s.realised[:2] == (1.0, 1.0)
                else importance) for s in savings.stages]
    report, with_importance = format_sat_report(model_name, model, savings, ladders, sat, importance, global_batch)
    return MethodPlan(savings, report, dict(schedule=lors.name, ladders=[ladder for ladder, _ in ladders],
                                            importance_cost=importance, global_batch=global_batch,
                                            exact_saving_with_importance=with_importance), with_importance)


@exit_on_usage_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    model = model_preset(args.model)
    seq = model.max_position_embeddings if args.seq_length is None else args.seq_length
    if not 0 < seq <= model.max_position_embeddings:
        raise UsageError(f"--seq-length {seq} must be between 1 and the model's context length "
                         f"{model.max_position_embeddings}")
    global_batch = args.micro_batch_size if args.global_batch_size is None else args.global_batch_size
    if args.micro_batch_size <= 0 or global_batch <= 0:
        raise UsageError(f"--micro-batch-size and --global-batch-size must be positive, got {args.micro_batch_size} "
                         f"and {global_batch}")
    plan = plan_method(args, model, args.model, seq, global_batch)
    if args.json:
        out = dict(model=args.model, parameters=model.num_parameters(), method=args.method, **plan.details)
        print(json.dumps(dict(out, **plan.savings.to_dict()), indent=2))
    else:
        print(plan.report)


if __name__ == "__main__":
    main()
