"""The stop and non-finite flags are agreed without waiting: a step's outcome is read one step later, or at once at
a settling step (log, save, end), in step order, with nothing lost."""
import pytest
import torch
import torch.distributed as dist

from dist_utils import free_port
from est_megatron.training.step_flags import StepFlags, StepOutcome


@pytest.fixture
def one_process_group():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_outcomes_arrive_one_step_late_or_at_a_settling_step(one_process_group):
    flags = StepFlags(torch.device("cpu"))
    flags.post(1, False, torch.tensor(float("nan"), dtype=torch.float64), engine_skipped=False)
    assert flags.collect(settle=False) == []  # step 1 is read when step 2 has been posted
    flags.post(2, True, torch.tensor(2.5, dtype=torch.float64), engine_skipped=False)
    assert flags.collect(settle=False) == [StepOutcome(1, stop_requested=False, skipped=True)]
    flags.post(3, False, torch.tensor(float("inf"), dtype=torch.float64), engine_skipped=True)
    assert flags.collect(settle=True) == [StepOutcome(2, True, False), StepOutcome(3, False, True)]
    assert flags.collect(settle=True) == []
    flags.post(4, False, torch.tensor(1.0, dtype=torch.float64), engine_skipped=True)  # DeepSpeed's overflow
    assert flags.collect(settle=True) == [StepOutcome(4, False, True)]
