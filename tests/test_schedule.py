"""EST schedules: presets reproduce the paper's stage boundaries, custom strings parse, bad ones fail clearly."""
import pytest

from est_megatron.errors import UsageError
from est_megatron.subnet.schedule import DENSE, HALF_ALL, HALF_WIDTH, parse_schedule

PAPER = "20k,70k,150k:0.5,0.5,0.5/0.5,0.5,1/1,1,1"


@pytest.mark.parametrize("name,steps,ends,rates", [
    ("tinyllama", 60000, (10000, 25000, 60000), (HALF_ALL, HALF_WIDTH, DENSE)),
    ("gpt2", 150000, (20000, 70000, 150000), (HALF_ALL, HALF_WIDTH, DENSE)),
    ("one-stage", 150000, (150000,), (HALF_WIDTH,)),
    ("two-stage-a", 150000, (50000, 150000), (HALF_WIDTH, DENSE)),
    ("two-stage-b", 150000, (70000, 150000), (HALF_WIDTH, DENSE)),
    ("two-stage-c", 150000, (90000, 150000), (HALF_WIDTH, DENSE)),
    ("three-stage-layers", 150000, (20000, 70000, 150000), (HALF_ALL, (1.0, 1.0, 0.5), DENSE)),
    ("dense", 60000, (60000,), (DENSE,)),
])
def test_presets_resolve_to_paper_boundaries(name, steps, ends, rates):
    resolved = parse_schedule(name).resolve(steps)
    assert resolved.ends == ends
    assert resolved.rates == rates
    assert resolved.train_steps == steps and resolved.name == name


@pytest.mark.parametrize("name,steps,ends", [
    ("tinyllama", 6000, (1000, 2500, 6000)),
    ("gpt2", 1500, (200, 700, 1500)),
    ("gpt2", 100, (13, 47, 100)),  # 13.3 and 46.7 round to the nearest step
    ("table1", 300, (100, 200, 300)),
])
def test_presets_scale_to_any_run_length(name, steps, ends):
    assert parse_schedule(name).resolve(steps).ends == ends


def test_custom_absolute_boundaries_with_k_suffix():
    schedule = parse_schedule(PAPER)
    assert not schedule.fractional
    resolved = schedule.resolve(150000)
    assert resolved.ends == (20000, 70000, 150000)
    assert resolved.rates == (HALF_ALL, HALF_WIDTH, DENSE)
    assert parse_schedule(" 1.5k , 3k : 0.25,0.5,1 / 1,1,1 ").resolve(3000).ends == (1500, 3000)


def test_custom_fractional_boundaries_scale():
    schedule = parse_schedule("0.25,0.5,1:0.5,0.5,0.5/0.5,0.5,1/1,1,1")
    assert schedule.fractional
    assert schedule.resolve(1000).ends == (250, 500, 1000)
    assert parse_schedule("0.1333,0.4667,1:1,1,1/1,1,1/1,1,1").resolve(150000).ends == (19995, 70005, 150000)


@pytest.mark.parametrize("text,steps,needle", [
    ("20k,10k,150k:1,1,1/1,1,1/1,1,1", 150000, "strictly increase"),
    ("20k,20k,150k:1,1,1/1,1,1/1,1,1", 150000, "strictly increase"),
    ("0,150k:1,1,1/1,1,1", 150000, "strictly increase"),
    ("0.001,1:1,1,1/1,1,1", 100, "strictly increase"),  # the first stage rounds to zero steps
    ("20k,70k,100k:1,1,1/1,1,1/1,1,1", 150000, "ends at step 100000"),
    ("0.5,0.9:1,1,1/1,1,1", 1000, "ends at step 900"),
    ("1:0,1,1", 10, "rate 0 in stage 1 is outside (0, 1]"),
    ("0.5,1:1,1,1/1,1.5,1", 10, "rate 1.5 in stage 2 is outside (0, 1]"),
    ("1:-0.5,1,1", 10, "outside (0, 1]"),
    ("1:nan,1,1", 10, "outside (0, 1]"),
    ("20k,70k:0.5,0.5,0.5", 70000, "2 boundaries but 1 rate triples"),
    ("1:0.5,0.5", 10, "stage 1 has 2 rates"),
    ("banana", 10, "unknown schedule 'banana'"),
    ("abc,1:1,1,1/1,1,1", 10, "boundary 'abc' is not a number"),
    ("inf:1,1,1", 10, "boundary 'inf' is not a number"),
    ("nan,1:1,1,1/1,1,1", 10, "boundary 'nan' is not a number"),
    ("1:x,y,z", 10, "are not numbers"),
    ("1:1,1,1/", 10, "are not numbers"),
    ("1.5,3:1,1,1/1,1,1", 3, "whole steps"),
    ("gpt2", 0, "--train-steps must be positive"),
])
def test_malformed_schedules_name_the_problem(text, steps, needle):
    with pytest.raises(UsageError) as err:
        parse_schedule(text).resolve(steps)
    message = str(err.value)
    assert needle in message and "\n" not in message


def test_stage_at_boundaries():
    resolved = parse_schedule("gpt2").resolve(150000)
    for step, stage in [(0, 0), (19999, 0), (20000, 1), (69999, 1), (70000, 2), (149999, 2), (150000, 2),
                        (10 ** 9, 2)]:
        assert resolved.stage_at(step) == stage, step
    assert resolved.rates_at(19999) == HALF_ALL and resolved.rates_at(20000) == HALF_WIDTH
    assert [resolved.stage_start(i) for i in range(3)] == [0, 20000, 70000]
    assert [resolved.stage_steps(i) for i in range(3)] == [20000, 50000, 80000]
    assert resolved.num_stages == 3
    assert resolved.describe() == ("gpt2: [0,20000) p=(0.5,0.5,0.5) [20000,70000) p=(0.5,0.5,1) "
                                   "[70000,150000) p=(1,1,1)")
