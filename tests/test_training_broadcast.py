"""broadcast_plan gives every rank rank 0's plan; check_plan_consistency catches ranks that differ (gloo)."""
import os

import torch.distributed as dist
import torch.multiprocessing as mp

from dist_utils import free_port
from est_megatron.config import SubnetConfig, model_preset
from est_megatron.subnet.broadcast import broadcast_plan, check_plan_consistency
from est_megatron.subnet.plan import PlanSampler
from est_megatron.subnet.schedule import parse_schedule


def _worker(rank, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model = model_preset("tiny")
        sampler = PlanSampler(model, SubnetConfig(), parse_schedule("table1").resolve(9), seed=5)
        received = broadcast_plan(sampler.plan(1) if rank == 0 else None, model)
        expected = sampler.plan(1)
        same = received.checksum(model) == expected.checksum(model) and received.rates == expected.rates
        check_plan_consistency(received, model)
        dense = broadcast_plan(None, model)
        own = sampler.plan(rank)  # deliberately different plans on the two ranks
        try:
            check_plan_consistency(own, model)
            caught = False
        except RuntimeError as err:
            caught = "different subnetwork plans" in str(err)
        results[rank] = (same, dense is None, caught)
    finally:
        dist.destroy_process_group()


def test_broadcast_and_consistency_check():
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(free_port(), results), nprocs=2, join=True)
    assert dict(results) == {0: (True, True, True), 1: (True, True, True)}
