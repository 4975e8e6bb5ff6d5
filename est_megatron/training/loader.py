"""The training batches: a DataLoader whose worker processes end when training does, on every way out.

The workers ignore the stop signals (`preemption`: a group-wide SIGTERM must not kill them before the main
process has saved), so the `terminate()` that Python's exit handler sends to a still-running worker cannot end
it, and the handler then waits for it for ever. torch shuts workers down only when the last reference to the
iterator goes, and the pipeline engine keeps one (its data iterator), so a PP run hung at exit. `TrainingBatches`
is a context manager: leaving it shuts the workers down and kills any that do not stop.
"""
from __future__ import annotations

from torch.utils.data import DataLoader

from est_megatron.training import preemption

_JOIN_S = 10.0  # a worker that has not exited this long after the shutdown request is killed


class TrainingBatches:
    """Iterator over this rank's training batches; `close()` (or leaving the `with` block) ends its workers."""

    def __init__(self, dataset, batch_sampler, collate_fn, num_workers: int, pin_memory: bool):
        self._iterator = iter(DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate_fn,
                                         num_workers=num_workers, pin_memory=pin_memory,
                                         worker_init_fn=preemption.ignore_stop_signals))

    def __iter__(self):
        return self

    def __next__(self):
        if self._iterator is None:
            raise StopIteration
        return next(self._iterator)

    def close(self) -> None:
        iterator, self._iterator = self._iterator, None
        workers = list(getattr(iterator, "_workers", ()))  # empty without workers (num_workers 0)
        shutdown = getattr(iterator, "_shutdown_workers", None)  # what the iterator's __del__ calls
        if shutdown is not None:
            shutdown()
        for worker in workers:
            worker.join(_JOIN_S)
            if worker.is_alive():
                worker.kill()
                worker.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
