"""Wall-clock of a whole compressed EST run against the same run dense, and the FLOPs model's saving.

    python tools/bench/schedule_speed.py --model bench-cpu --schedule tinyllama --train-steps 60 \
        --seq-length 256 --micro-batch-size 8

Two runs of --train-steps steps from the same seed on the same synthetic token stream: one with the schedule's
plan at every step (PlanSampler, as training draws them), one dense (plan=None). Their steps alternate (EST step
t, dense step t, ...) so that a machine whose speed drifts slows both runs alike; each run's wall-clock is the
sum of its own steps, each step timed whole: batch, plan, forward, backward, AdamW. Reported: measured time
saving 1 - T_est / T_dense, the FLOPs model's saving for the realised plans, and their ratio; the same by this
process' CPU time, which a shared machine disturbs far less than wall-clock.
"""
from __future__ import annotations

import argparse
from typing import List

import torch

from est_megatron.bench import step_speed
from est_megatron.config import SubnetConfig
from est_megatron.errors import UsageError, exit_on_usage_error
from est_megatron.subnet.flops import dense_step_flops, step_flops
from est_megatron.subnet.plan import PlanSampler
from est_megatron.subnet.schedule import SCHEDULE_PRESETS, parse_schedule
from est_megatron.help_format import HelpFormatter


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    step_speed.add_common_args(p)
    p.add_argument("--schedule", default="tinyllama", help=f"EST schedule ({', '.join(SCHEDULE_PRESETS)} or custom)")
    p.add_argument("--train-steps", type=int, default=60, help="steps of each of the two runs")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed steps of each run first (dense and every stage's rates), then the timed runs")
    return p


@exit_on_usage_error
def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.train_steps <= 0 or args.micro_batch_size <= 0 or args.warmup < 0:
        raise UsageError("--train-steps and --micro-batch-size must be positive and --warmup >= 0")
    cfg, seq, device, dtype = step_speed.setup(args)
    schedule = parse_schedule(args.schedule).resolve(args.train_steps)
    sampler = PlanSampler(cfg, SubnetConfig(), schedule, args.seed)
    batch = args.micro_batch_size

    est = step_speed.Stepper(cfg, device, dtype, batch, seq, args.seed)  # training's sparse step
    dense = step_speed.Stepper(cfg, device, dtype, batch, seq, args.seed, sparse=False)  # the dense method's AdamW
    for _ in range(args.warmup):
        for rates in schedule.rates:
            est.step(step_speed.make_sampler(cfg, rates, args.seed))
        dense.step(None)
    est.count = dense.count = 0

    data = torch.Generator().manual_seed(args.seed)
    est_times: List[float] = []
    dense_times: List[float] = []
    est_cpu = dense_cpu = 0.0
    est_flops = dense_flops = 0
    for step in range(args.train_steps):
        tokens = torch.randint(0, cfg.vocab_size, (batch, seq + 1), generator=data)

        def run(stepper, plan_sampler):
            t = tokens.to(device)
            stepper.step(plan_sampler, t[:, :-1], t[:, 1:])

        est.count = step
        wall, cpu = step_speed.timed2(device, lambda: run(est, sampler))
        est_times.append(wall)
        est_cpu += cpu
        wall, cpu = step_speed.timed2(device, lambda: run(dense, None))
        dense_times.append(wall)
        dense_cpu += cpu
        est_flops += step_flops(cfg, est.last_plan, batch, seq)
        dense_flops += dense_step_flops(cfg, batch, seq)

    t_est, t_dense = sum(est_times), sum(dense_times)
    measured = 1.0 - t_est / t_dense
    ideal = 1.0 - est_flops / dense_flops
    per_stage = []
    for i in range(schedule.num_stages):
        lo, hi = schedule.stage_start(i), schedule.ends[i]
        e, d = sum(est_times[lo:hi]), sum(dense_times[lo:hi])
        per_stage.append(dict(stage=i + 1, steps=hi - lo, rates=list(schedule.rates[i]), est_s=e, dense_s=d,
                              speedup=d / e if e else None))
    summary = dict(model=args.model, schedule=args.schedule, train_steps=args.train_steps, seq_length=seq,
                   micro_batch_size=batch, device=str(device), dtype=str(dtype).replace("torch.", ""),
                   threads=torch.get_num_threads(), est_time_s=t_est, dense_time_s=t_dense,
                   measured_saving=measured, flops_saving=ideal,
                   saving_ratio=measured / ideal if ideal else None, est_cpu_s=est_cpu, dense_cpu_s=dense_cpu,
                   cpu_measured_saving=1.0 - est_cpu / dense_cpu,
                   cpu_saving_ratio=(1.0 - est_cpu / dense_cpu) / ideal if ideal else None, stages=per_stage)
    print(f"{args.schedule} schedule, {args.train_steps} steps of {args.model} (seq {seq}, micro-batch {batch}):")
    for s in per_stage:
        print(f"  stage {s['stage']} {tuple(s['rates'])}: {s['steps']} steps, EST {s['est_s']:.2f} s, "
              f"dense {s['dense_s']:.2f} s" + (f", {s['speedup']:.2f}x" if s["speedup"] else ""))
    print(f"EST run {t_est:.2f} s, dense run {t_dense:.2f} s: measured saving {measured:.1%}, "
          f"FLOPs saving {ideal:.1%}, ratio {summary['saving_ratio']:.3f}")
    print(f"by CPU time: EST {est_cpu:.2f} s, dense {dense_cpu:.2f} s: saving {summary['cpu_measured_saving']:.1%}, "
          f"ratio {summary['cpu_saving_ratio']:.3f}")
    step_speed.write_json(args.json, summary)
    return summary


if __name__ == "__main__":
    main()
