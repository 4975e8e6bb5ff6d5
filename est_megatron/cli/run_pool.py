"""Launcher subprocesses for tools that train many runs (compare_runs), several at once: each runs in its own
session (a terminal's Ctrl-C reaches only the tool, which asks each run to save and stop), its output is copied to
its log by a thread and the lines a reader wants are echoed with the run's name, one whole line at a time."""

import os
import queue
import shlex
import signal
import subprocess
import threading
import time
from typing import Callable, Dict, Iterable, List, Tuple

_ECHO_LOCK = threading.Lock()


def threads_per_process(parallel_processes: int) -> int:
    """OMP threads for each of several training processes sharing this machine's cores (at least one)."""
    return max(1, (os.cpu_count() or 1) // max(1, parallel_processes))


class RunProcess:
    """One launcher subprocess; when its output ends it puts itself on `ended`."""

    def __init__(self, name: str, cmd: List[str], env: Dict[str, str], log_path: str,
                 echo: Callable[[str], bool], ended: "queue.Queue[RunProcess]"):
        self.name = name
        self.began = time.time()
        self._log = open(log_path, "a", buffering=1)  # line-buffered: `tail -f` follows the run, a crash loses nothing
        self._log.write(f"$ {shlex.join(cmd)}\n")
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     bufsize=1, start_new_session=True)
        self._copier = threading.Thread(target=self._copy, args=(echo, ended), daemon=True)
        self._copier.start()

    def _copy(self, echo: Callable[[str], bool], ended: "queue.Queue[RunProcess]") -> None:
        for line in self.proc.stdout:
            self._log.write(line)
            if echo(line):
                with _ECHO_LOCK:
                    print(f"  {self.name} | {line.rstrip()}", flush=True)
        ended.put(self)

    def signal(self, signum: int) -> None:
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:  # already gone
            pass

    def wait(self) -> int:
        """Its exit status, once its output is all in the log (the log is closed then)."""
        status = self.proc.wait()
        self._copier.join()
        self._log.close()
        return status


def stop_all(processes: Iterable[RunProcess], interrupts: Tuple[type, ...]) -> bool:
    """Ask every process to save and stop (SIGTERM) and wait for them; a second stop meanwhile (one of
    `interrupts`: Ctrl-C, or the exception the caller's SIGTERM handler raises) kills them. Returns whether it did."""
    processes = list(processes)
    for process in processes:
        process.signal(signal.SIGTERM)
    killed = False
    while True:
        try:
            for process in processes:
                process.proc.wait()
            return killed
        except interrupts:
            if killed:
                raise
            killed = True
            for process in processes:
                process.signal(signal.SIGKILL)
