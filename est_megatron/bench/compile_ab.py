"""`step_speed --compile`: the training step with every transformer layer compiled (training's --compile) against
the same step eager, per method and stage, in one run.

Each variant is a method held in one stage (every step a fresh plan of that stage's shape, as in training): two
`Stepper`s from the same seed, one with `compile_layers`, run interleaved after their first steps; the compiled
one's first step (tracing and code generation included) is reported apart as the compile time.
"""
from __future__ import annotations

import statistics
from typing import Dict, Optional

import torch

from est_megatron.model.regional_compile import DEFAULT_BACKEND, compile_layers
from est_megatron.subnet.method import SubnetMethod
from est_megatron.subnet.plan import StepPlan
from est_megatron.training.arguments import build_parser
from est_megatron.training.methods import MethodContext, build_method, method_options, subnet_config

RUN_STEPS = 1_000_000  # a run long enough that the bench's steps stay in the stage asked for


def method_stages(num_layers: int) -> Dict[str, tuple]:
    """variant: (method, flags holding it in one stage): EST's two sampled stages, RAPTR at half depth, SAT's
    first ladder (r_max omitted), and dense."""
    return {"dense": ("dense", []),
            "est stage1": ("est", ["--est-schedule", "1:0.5,0.5,0.5"]),
            "est stage2": ("est", ["--est-schedule", "1:0.5,0.5,1"]),
            "raptr stage1": ("raptr", ["--raptr-schedule", f"{num_layers // 2},{num_layers}:0.5,1"]),
            "sat ladder1": ("sat", ["--sat-decay-start", "1"])}


class StagePlans:
    """A method's plans inside one stage, drawn the way `Stepper.run` asks a sampler: `plan(count)`."""

    def __init__(self, method: SubnetMethod, stepper):
        self.method, self.stepper = method, stepper

    def plan(self, count: int) -> Optional[StepPlan]:
        self.method.prepare(count, self.stepper.model, self.stepper.inputs)  # SAT's importance pre-pass
        return self.method.plan(count)


def build_stage_method(cfg, name: str, flags: list, seed: int) -> SubnetMethod:
    args = build_parser().parse_args(["--method", name, "--train-steps", str(RUN_STEPS), "--seed", str(seed)]
                                     + flags)
    return build_method(name, MethodContext(cfg, subnet_config(args, cfg), RUN_STEPS, seed, method_options(args)))


def measure_compile_ab(make_stepper, timed, cfg, seed: int, warmup: int, reps: int,
                       backend: str = DEFAULT_BACKEND) -> Dict[str, dict]:
    """{variant: eager and compiled median step seconds, their ratio, the compiled first step's seconds};
    `make_stepper()` builds a fresh `Stepper`, `timed(device, fn)` times a call."""
    results = {}
    for variant, (name, flags) in method_stages(cfg.num_layers).items():
        torch._dynamo.reset()
        eager, compiled = make_stepper(), make_stepper()
        compile_layers(compiled.model, 1, backend)
        plans = {id(s): StagePlans(build_stage_method(cfg, name, flags, seed), s) for s in (eager, compiled)}
        first_step = timed(compiled.device, lambda: compiled.step(plans[id(compiled)]))
        eager.step(plans[id(eager)])
        times = {"eager": [], "compiled": []}
        for rep in range(warmup + reps):
            for kind, stepper in (("eager", eager), ("compiled", compiled)):
                seconds = timed(stepper.device, lambda: stepper.step(plans[id(stepper)]))
                if rep >= warmup:
                    times[kind].append(seconds)
        eager_s, compiled_s = (statistics.median(times[kind]) for kind in ("eager", "compiled"))
        results[variant] = dict(eager_step_s=eager_s, compiled_step_s=compiled_s, ratio=compiled_s / eager_s,
                                compile_first_step_s=first_step)
    return results


def print_compile_ab(results: Dict[str, dict], backend: str) -> None:
    print(f"--compile A/B (backend {backend}): training step, median seconds")
    print(f"{'method, stage':<16}{'eager s':>10}{'compiled s':>12}{'compiled/eager':>16}{'1st step (compile) s':>22}")
    for variant, r in results.items():
        print(f"{variant:<16}{r['eager_step_s']:>10.4f}{r['compiled_step_s']:>12.4f}{r['ratio']:>16.3f}"
              f"{r['compile_first_step_s']:>22.1f}")
