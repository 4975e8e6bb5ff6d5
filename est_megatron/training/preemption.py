"""Preemption: a stop request becomes one saved checkpoint and exit status 0.

Schedulers stop a job by signalling its whole process group (SLURM's scancel, Kubernetes; Ctrl-C in a terminal
sends SIGINT to the group), the launcher (torchrun forwards SIGTERM and SIGINT to its workers, DeepSpeed's
per-node `deepspeed.launcher.launch` sends SIGTERM), or the training processes themselves. So:
- the training processes catch SIGTERM, SIGINT and SIGUSR1 and only set a flag; the loop agrees on it across ranks
  at the end of the step, saves and exits 0;
- DataLoader workers ignore them (a worker killed by the group-wide signal would end the run with nothing saved;
  the main process shuts them down itself, `training.loader`);
- before the first step nothing is worth saving, and a rank may wait for ever in start-up (for a peer, a lock, a
  build), so there a stop signal ends the process at once (exit status 128 + the signal), even one blocked inside
  a collective, where Python's own handler would wait until the call returns (a thread reads the signal wakeup fd);
- a launcher that dies without forwarding the signal (the `deepspeed` command exits at once on SIGTERM, torchrun
  on SIGUSR1) is noticed at the next step and treated like the signal, so its workers save instead of training
  on as orphans.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from typing import Optional

import psutil

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
# How a launcher's command line starts: its script (torchrun, deepspeed) or `python -m MODULE`.
_LAUNCHERS = {"torchrun", "deepspeed", "torch.distributed.run", "deepspeed.launcher.launch",
              "deepspeed.launcher.runner"}
_state = {"signum": None, "launchers": (), "training": False, "wakeup": None, "stopping": threading.Lock()}


def _on_signal(signum, frame):
    _state["signum"] = signum
    if not _state["training"]:  # still starting (waiting for a peer, a lock, a build): nothing to save, stop now
        _stop_during_start_up(signum, sys.exit)


def _stop_during_start_up(signum, exit_with) -> None:
    """One line, then exit_with(128 + signum). The signal handler (sys.exit, in the main thread) and the wakeup
    thread (os._exit: the main thread is blocked) may both get here; the first prints and exits."""
    if _state["stopping"].acquire(blocking=False):
        print(f"stopping on {signal.Signals(signum).name} during start-up: nothing trained yet, nothing saved",
              file=sys.stderr, flush=True)
        sys.stdout.flush()
        exit_with(128 + signum)


def _watch_wakeup_fd(read_end: socket.socket) -> None:
    """Python's C-level handler writes each signal's number to the wakeup fd at once, from any thread, while the
    Python handler waits for the main thread; here those bytes end start-up. Returns once training starts (the
    write end is closed)."""
    with read_end:
        while data := read_end.recv(64):
            for signum in data:
                if signum in STOP_SIGNALS and not _state["training"]:
                    _stop_during_start_up(signum, os._exit)


def install_signal_handlers() -> None:
    """Catch the stop signals and remember which launcher processes this one runs under. Until
    `training_started`, a stop signal ends the process at once."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_signal)
    _state.update(signum=None, training=False, launchers=_launcher_ancestors(), stopping=threading.Lock())
    release_wakeup_fd()
    read_end, write_end = socket.socketpair()
    write_end.setblocking(False)  # set_wakeup_fd requires it
    signal.set_wakeup_fd(write_end.fileno(), warn_on_full_buffer=False)
    _state["wakeup"] = write_end
    threading.Thread(target=_watch_wakeup_fd, args=(read_end,), name="est-stop-in-start-up", daemon=True).start()


def training_started() -> None:
    """From the first step on, a stop signal waits for the end of the step, then saves."""
    _state["training"] = True
    release_wakeup_fd()


def release_wakeup_fd() -> None:
    """End the start-up watch (its thread, the wakeup fd): once training starts, and when the run returns (a
    later Ctrl-C in the same process, e.g. a notebook, is not start-up's)."""
    if _state["wakeup"] is not None:
        signal.set_wakeup_fd(-1)
        _state["wakeup"].close()  # the watching thread's recv returns b"": it ends
        _state["wakeup"] = None


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader `worker_init_fn`: stop signals are for the main process, which saves and ends the workers. A
    worker forked in start-up also closes its copy of the wakeup fd, or the main process's watching thread would
    never see the end of it."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    release_wakeup_fd()


def _launcher_ancestors() -> tuple:
    """(pid, start time) of the ancestors that are torchrun or deepspeed launchers."""
    try:
        found = []
        for proc in psutil.Process().parents():
            head = [os.path.basename(arg) for arg in proc.cmdline()[:3]]
            if _LAUNCHERS.intersection(head):
                found.append((proc.pid, proc.create_time()))
        return tuple(found)
    except psutil.Error:  # a process gone or hidden: nothing to watch
        return ()


def _launcher_gone() -> bool:
    for pid, started in _state["launchers"]:
        try:
            if psutil.Process(pid).create_time() != started:
                return True  # the pid was reused
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.Error:
            return True
    return False


def stop_reason() -> Optional[str]:
    """Why this process should stop after the current step ('SIGTERM', 'the exit of its launcher'), or None."""
    if _state["signum"] is not None:
        return signal.Signals(_state["signum"]).name
    if _state["launchers"] and _launcher_gone():
        return "the exit of its launcher"
    return None

