"""A stalled run ends loudly: one line naming the rank and what it was doing, every thread's stack, exit status 3.

A rank that waits for a peer that never comes (a peer stopped or hung, a lost node, a pipeline send/receive
whose partner died) would otherwise hold the whole job for ever. The process-group timeout
(`--distributed-timeout-minutes`, given to `init_process_group`) makes gloo raise and NCCL abort a stalled
collective, but only in the world group: DeepSpeed's data, pipeline and model groups keep torch's own default
(30 minutes for gloo), and the error names neither the operation nor the other threads. So the training loop
says what it is about to do (`doing("step 12: forward/backward")`), and a thread of this module ends the process
once one operation has lasted longer than the timeout. That thread also keeps re-arming faulthandler's timer a
little further out: where a call that holds the GIL keeps the thread from running, the timer fires and writes the
stacks and exits from C.

`EST_MEGATRON_TEST_STALL=RANK:STEP` makes rank RANK stop at the start of step STEP (0: in start-up) for ever: the
tests use it to prove that a stall ends the run.
"""
from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
import traceback
from typing import Optional

EXIT_STALLED = 3
STALL_ENV = "EST_MEGATRON_TEST_STALL"
_BACKSTOP_S = 30.0  # faulthandler's timer fires this long after the thread should have

_state = {"timeout": None, "rank": 0, "operation": "start-up", "since": 0.0, "thread": None}
_lock = threading.Lock()
_stopped = threading.Event()


def start(timeout_s: float, rank: int) -> None:
    """Watch this process: from now on, an operation that lasts more than `timeout_s` seconds ends it."""
    stop()
    _stopped.clear()
    _state.update(timeout=float(timeout_s), rank=rank)
    doing("start-up")
    faulthandler.dump_traceback_later(timeout_s + _BACKSTOP_S, exit=True)
    thread = threading.Thread(target=_watch, name="est-stall-watchdog", daemon=True)
    _state["thread"] = thread
    thread.start()


def stop() -> None:
    """Stop watching (the run is over, or its process is about to exit on an error of its own)."""
    thread = _state["thread"]
    _state["thread"] = None
    _stopped.set()
    if _state["timeout"] is not None:
        faulthandler.cancel_dump_traceback_later()
    if thread is not None and thread is not threading.current_thread():
        thread.join()
    _state["timeout"] = None


def doing(operation: str) -> None:
    """Name the operation this rank starts now; its clock starts again."""
    with _lock:
        _state["operation"], _state["since"] = operation, time.monotonic()


def stalled_line(cause: str) -> str:
    """The one line a stalled rank writes before its stacks."""
    minutes = (_state["timeout"] or 0.0) / 60.0
    return (f"error: rank {_state['rank']} (pid {os.getpid()}): {_state['operation']} {cause}; the run ends "
            f"(--distributed-timeout-minutes {minutes:g}). A peer rank that stopped, hung or lost its node is the "
            "usual cause: its own log names what it was doing. Python stacks of this rank follow.")


def end_run(cause: str, error: Optional[BaseException] = None) -> None:
    """Write the stalled line, the failed call's traceback (`error`) and every thread's stack to stderr, then exit
    at once with EXIT_STALLED.

    `os._exit`: a clean exit would wait in collectives and on DataLoader workers that may never answer; the
    workers notice their parent is gone and exit, and the launcher ends the other ranks."""
    print(stalled_line(cause), file=sys.stderr, flush=True)
    if error is not None:
        traceback.print_exception(error, file=sys.stderr)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(EXIT_STALLED)


def _watch() -> None:
    timeout = _state["timeout"]
    tick = max(0.2, min(5.0, timeout / 10))
    while not _stopped.wait(tick):
        faulthandler.dump_traceback_later(timeout + _BACKSTOP_S, exit=True)
        with _lock:
            elapsed = time.monotonic() - _state["since"]
        if elapsed > timeout:
            end_run(f"has not finished in {elapsed / 60:.1f} minutes")


def stall_if_asked(rank: int, step: int) -> None:
    """The test hook: with EST_MEGATRON_TEST_STALL=RANK:STEP, rank RANK never finishes step STEP."""
    target = _parse_stall(os.environ.get(STALL_ENV))
    if target is not None and target == (rank, step):
        doing(f"step {step}: stalled on purpose ({STALL_ENV}={os.environ[STALL_ENV]})")
        while True:
            time.sleep(1.0)


def _parse_stall(value: Optional[str]):
    if not value:
        return None
    try:
        rank, step = value.split(":")
        return int(rank), int(step)
    except ValueError:
        raise ValueError(f"{STALL_ENV}={value!r}: expected RANK:STEP, e.g. 1:3") from None
