"""EST (Li et al., ICML 2024) as a training method: the `PlanSampler`'s plan of every step under a staged schedule.

The sampling itself (balanced heads, MLP columns and layers at the stage's rates) is `subnet.plan.PlanSampler`;
this module gives it the `SubnetMethod` shape and the start-up description of its resolved stages.
"""
from __future__ import annotations

from est_megatron.config import ModelConfig, SubnetConfig
from est_megatron.subnet.method import SubnetMethod
from est_megatron.subnet.plan import PlanSampler, StepPlan
from est_megatron.subnet.schedule import ResolvedSchedule


class EstMethod(SubnetMethod):
    def __init__(self, model: ModelConfig, subnet: SubnetConfig, schedule: ResolvedSchedule, seed: int):
        self.schedule = schedule
        self.sampler = PlanSampler(model, subnet, schedule, seed)

    def plan(self, step: int) -> StepPlan:
        return self.sampler.plan(step)

    @property
    def num_stages(self) -> int:
        return self.schedule.num_stages

    def describe(self) -> str:
        s = self.sampler.subnet
        heads = (f"whole key/value groups in {s.head_strata} strata" if s.whole_groups
                 else "query heads inside every key/value group")
        scaling = "kept outputs scaled by 1/p" if s.rescale else "kept outputs unscaled"
        return (f"est {self.schedule.describe()}; sampling {heads}, MLP columns in {s.mlp_strata} strata, layers "
                f"in {s.layer_strata} strata; {scaling}")
