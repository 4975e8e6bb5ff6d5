"""Soak: the real launchers with the defaults users run, over every layout, repeated; exits, hangs, orphans.

    python tools/bench/soak.py --repeat 20                 # every cell, 20 times
    python tools/bench/soak.py --cells pp2,two-node --repeat 3

Each repetition of a cell is two runs of the entry point under its launcher (`deepspeed` or `torchrun`; the
two-node cell starts two `torchrun --nnodes 2` "nodes" on this machine, each with its own --data-cache-dir and a
shared --save), with the shipped ds_configs and DataLoader workers on (the default --num-workers): the first run
trains to --exit-interval (half of --train-steps) and saves, the second resumes from that checkpoint to the end.
In the stop cells the first run is stopped instead, once it has logged a step, by SIGTERM to the launcher or
SIGINT to the whole process group (Ctrl-C); its ranks must save before they exit, and the second run resumes.

Counted per cell: runs that ended as they should (exit status 0, the checkpoint saved, the resume from it), hangs
(a run still going after --bound seconds: it is then stopped and killed), orphans (processes of a run, found by an
environment mark, still alive --grace seconds after its launcher exited; they are then killed), wall-clock; a
/dev/shm segment a run leaves behind also fails its repetition. The
runs pass --distributed-timeout-minutes (2 by default), so a stall ends its run with every rank's stacks in the
repetition's problem.log; a hang is a run that outlives even that.
Without --data-path the demo's corpus is built under --work-dir (once) and used.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import List, Optional

import psutil

from est_megatron.checkpoint.tags import latest_step
from est_megatron.errors import UsageError, exit_on_usage_error
from est_megatron.help_format import HelpFormatter
from est_megatron.training.distributed import free_port

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "launch", "pretrain_tinyllama.py")
MARK = "EST_SOAK_MARK"


@dataclass(frozen=True)
class Cell:
    launcher: str  # "deepspeed", "torchrun" or "two-node" (two torchrun nodes on this machine)
    nproc: int
    ds_config: str
    tp: int = 1
    pp: int = 1
    method: str = "est"
    stop: Optional[str] = None  # "launcher-SIGTERM" or "group-SIGINT": the first run is stopped, not exited

    def describe(self) -> str:
        layout = f"tp{self.tp} pp{self.pp} dp{self.nproc // (self.tp * self.pp)}"
        return f"{self.launcher} x{self.nproc}, {layout}, {self.ds_config}, {self.method}" + (
            f", {self.stop}" if self.stop else "")


CELLS = {
    "dp2-zero1": Cell("deepspeed", 2, "zero1"),
    "dp2-zero2": Cell("torchrun", 2, "zero2"),
    "dp2-zero3": Cell("deepspeed", 2, "zero3"),
    "tp2": Cell("torchrun", 2, "zero1", tp=2),
    "pp2": Cell("deepspeed", 2, "zero1_pipeline", pp=2),
    "tp2xpp2": Cell("deepspeed", 4, "zero1_pipeline", tp=2, pp=2),
    "dp2xpp2": Cell("torchrun", 4, "zero1_pipeline", pp=2),
    "two-node": Cell("two-node", 2, "zero2"),
    "raptr": Cell("deepspeed", 2, "zero2", method="raptr"),
    "sat": Cell("torchrun", 2, "zero2", method="sat"),
    "pp2-stop": Cell("deepspeed", 2, "zero1_pipeline", pp=2, stop="launcher-SIGTERM"),
    "dp2-ctrl-c": Cell("torchrun", 2, "zero2", stop="group-SIGINT"),
}
FAST_CELLS = ("pp2-stop", "dp2-ctrl-c")  # what the test suite runs once each (two nodes: a test of its own)


def training_flags(cell: Cell, data_path: List[str], tokenizer: str, work: str, steps: int) -> List[str]:
    return ["--model", "tiny", "--data-path", *data_path, "--tokenizer-model", tokenizer, "--seq-length", "32",
            "--micro-batch-size", "2", "--global-batch-size", "8", "--train-steps", str(steps), "--lr", "3e-3",
            "--lr-warmup-steps", "2", "--log-interval", "2", "--eval-interval", str(steps // 2), "--eval-iters", "1",
            "--split", "90,10,0", "--ds_config", os.path.join(REPO, "ds_configs", cell.ds_config + ".json"),
            "--tensor-model-parallel-size", str(cell.tp), "--pipeline-model-parallel-size", str(cell.pp),
            "--method", cell.method, "--save", os.path.join(work, "ckpt"), "--load", os.path.join(work, "ckpt"),
            "--log-dir", os.path.join(work, "logs"), "--no-progress"]


def launcher_script(name: str) -> str:
    found = os.path.join(os.path.dirname(sys.executable), name)
    return found if os.path.isfile(found) else (shutil.which(name) or name)


def commands(cell: Cell, flags: List[str], work: str) -> List[List[str]]:
    """The launcher command lines of one run (two for the two-node cell)."""
    port = str(free_port())
    if cell.launcher == "deepspeed":
        return [[launcher_script("deepspeed"), "--num_gpus", str(cell.nproc), "--master_port", port, SCRIPT] + flags]
    if cell.launcher == "torchrun":
        return [[launcher_script("torchrun"), "--nproc_per_node", str(cell.nproc), "--master_port", port, SCRIPT]
                + flags]
    per_node = cell.nproc // 2
    return [[launcher_script("torchrun"), "--nnodes", "2", "--node_rank", str(node), "--nproc_per_node",
             str(per_node), "--master_addr", "127.0.0.1", "--master_port", port, SCRIPT] + flags
            + ["--data-cache-dir", os.path.join(work, f"cache_node{node}")] for node in (0, 1)]


def marked(mark: str) -> List[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARK) == mark:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def kill_all(procs: List[psutil.Process]) -> None:
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)


def logged_a_step(work: str) -> bool:
    path = os.path.join(work, "logs", "metrics.jsonl")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return any('"loss"' in line and '"event"' not in line for line in f)


def run_once(cmds: List[List[str]], work: str, bound: float, grace: float, stop: Optional[str]) -> dict:
    """One run: start the launchers (their own session, a fresh mark), stop them if asked, wait; the outcome."""
    mark = uuid.uuid4().hex
    os.makedirs(work, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **{MARK: mark})
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    logs = [open(os.path.join(work, f"launcher{i}_{mark[:6]}.log"), "w") for i in range(len(cmds))]
    start = time.monotonic()
    procs = [subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
             for cmd, log in zip(cmds, logs)]
    hung = False
    try:
        while any(p.poll() is None for p in procs):
            if stop and logged_a_step(work):
                for p in procs:
                    if stop == "launcher-SIGTERM":
                        p.send_signal(signal.SIGTERM)
                    else:
                        os.killpg(p.pid, signal.SIGINT)
                stop = None
            if time.monotonic() - start > bound:
                hung = True
                for p in procs:
                    os.killpg(p.pid, signal.SIGTERM)
                try:
                    for p in procs:
                        p.wait(30)
                except subprocess.TimeoutExpired:
                    pass
                break
            time.sleep(0.2)
    except BaseException:  # the soak itself is stopped: its runs go with it
        kill_all(marked(mark))
        raise
    seconds = time.monotonic() - start
    deadline = time.monotonic() + grace
    left = marked(mark)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = marked(mark)
    kill_all(left)
    for log in logs:
        log.close()
    output = ""
    for log in logs:
        with open(log.name) as f:
            output += f.read()
    port = cmds[0][cmds[0].index("--master_port") + 1]
    segments = glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_*_{port}_*")  # DeepSpeed's CPU allreduce's
    for name in segments:
        os.remove(name)
    return dict(statuses=[p.returncode for p in procs], hung=hung, orphans=len(left), seconds=seconds,
                output=output, shared_memory_left=len(segments))


def repetition(cell: Cell, data_path, tokenizer, work: str, steps: int, bound: float, grace: float,
               timeout_minutes: float) -> dict:
    """Two runs with a save between them; the outcome of both. A plain cell trains to half of `steps`
    (--exit-interval), then resumes to the end. A stop cell's first run (10 x `steps` long, so the signal lands
    while it trains) is stopped; the resume then trains to the next multiple of half of `steps`."""
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    half = steps // 2
    flags = training_flags(cell, data_path, tokenizer, work, steps * 10 if cell.stop else steps) + [
        "--distributed-timeout-minutes", str(timeout_minutes)]
    first = run_once(commands(cell, flags + ([] if cell.stop else ["--exit-interval", str(half)]), work), work,
                     bound, grace, cell.stop)
    saved = latest_step(os.path.join(work, "ckpt"))
    problems = []
    if cell.stop and ("(checkpoint saved)" not in first["output"] or saved is None):
        problems.append("the stopped run did not save")
    elif not cell.stop and (any(first["statuses"]) or saved != half):
        problems.append(f"first run: exit {first['statuses']}, checkpoint at step {saved}")
    end = (saved // half + 1) * half if cell.stop and saved is not None else steps
    second = run_once(commands(cell, flags + (["--exit-interval", str(half)] if cell.stop else []), work), work,
                      bound, grace, None)
    resumed_to = latest_step(os.path.join(work, "ckpt"))
    if any(second["statuses"]) or resumed_to != end:
        problems.append(f"resume: exit {second['statuses']}, checkpoint at step {resumed_to}, not {end}")
    elif saved and f"at step {saved}" not in second["output"]:
        problems.append(f"resume did not start from step {saved}")
    runs = (first, second)
    left = sum(r["shared_memory_left"] for r in runs)
    if left:
        problems.append(f"{left} /dev/shm segment(s) of DeepSpeed's allreduce left behind")
    if problems:
        with open(os.path.join(work, "problem.log"), "w") as f:
            f.write("\n".join(problems) + "\n\n" + "\n\n".join(r["output"][-6000:] for r in runs))
    return dict(ok=not problems and not any(r["hung"] for r in runs), hangs=sum(r["hung"] for r in runs),
                orphans=sum(r["orphans"] for r in runs), seconds=sum(r["seconds"] for r in runs),
                problems=problems)


def summarise(outcomes: dict) -> dict:
    table = {}
    for name, done in outcomes.items():
        seconds = [o["seconds"] for o in done]
        table[name] = dict(cell=CELLS[name].describe(), repetitions=len(done), ok=sum(o["ok"] for o in done),
                           hangs=sum(o["hangs"] for o in done), orphans=sum(o["orphans"] for o in done),
                           median_s=statistics.median(seconds), max_s=max(seconds))
    return table


def print_table(table: dict, title: str) -> None:
    print(f"\n{title}\n{'cell':<12} {'what':<58} {'ok':>6} {'hangs':>5} {'orphans':>7} {'median s':>8} "
          f"{'max s':>6}")
    for name, row in table.items():
        print(f"{name:<12} {row['cell']:<58} {row['ok']:>3}/{row['repetitions']:<2} {row['hangs']:>5} "
              f"{row['orphans']:>7} {row['median_s']:>8.1f} {row['max_s']:>6.1f}", flush=True)


def demo_data(work_dir: str):
    from est_megatron.demo import prepare_data
    tokenizer, slimpajama, starcoder = prepare_data(os.path.join(work_dir, "data"))
    return ["0.7", slimpajama, "0.3", starcoder], tokenizer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--cells", default="all", help=f"comma-separated cells, 'fast' ({','.join(FAST_CELLS)}) or all: "
                   + ", ".join(CELLS))
    p.add_argument("--repeat", type=int, default=3, help="repetitions of every cell")
    p.add_argument("--train-steps", type=int, default=24, help="steps of a repetition (the first run saves at half)")
    p.add_argument("--bound", type=float, default=300.0, help="seconds after which a run counts as hung")
    p.add_argument("--grace", type=float, default=40.0,
                   help="seconds a run's processes may take to go after its launcher exits before they are orphans")
    p.add_argument("--distributed-timeout-minutes", type=float, default=2.0,
                   help="the runs' watchdog: a stalled run ends with its stacks in problem.log well before --bound")
    p.add_argument("--data-path", nargs="+", help="shards to train on (default: the demo corpus, built once)")
    p.add_argument("--tokenizer-model", help="the shards' tokenizer (with --data-path)")
    p.add_argument("--work-dir", help="runs and the demo corpus go here (default: a temporary directory)")
    p.add_argument("--json", help="also write the table as JSON here")
    return p


def choose_cells(spec: str) -> List[str]:
    names = list(CELLS) if spec == "all" else list(FAST_CELLS) if spec == "fast" else spec.split(",")
    unknown = [n for n in names if n not in CELLS]
    if unknown:
        raise UsageError(f"unknown soak cell(s) {', '.join(unknown)}; choose from {', '.join(CELLS)}")
    return names


def _exit_on_sigterm(signum, frame):
    sys.exit(128 + signum)  # unwinds through run_once, which kills the run in flight


@exit_on_usage_error
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    names = choose_cells(args.cells)
    if args.repeat < 1 or args.train_steps < 4 or args.train_steps % 2:
        raise UsageError("--repeat must be at least 1 and --train-steps an even number of at least 4")
    if bool(args.data_path) != bool(args.tokenizer_model):
        raise UsageError("--data-path and --tokenizer-model go together (or leave both out for the demo corpus)")
    work_dir = os.path.abspath(args.work_dir or tempfile.mkdtemp(prefix="est_soak_"))
    data_path, tokenizer = (args.data_path, args.tokenizer_model) if args.data_path else demo_data(work_dir)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        table = soak(names, args, data_path, tokenizer, work_dir)
    finally:
        signal.signal(signal.SIGTERM, previous)
    failed = any(row["ok"] < row["repetitions"] or row["hangs"] or row["orphans"] for row in table.values())
    print(f"runs under {work_dir}" + ("; see problem.log in a failed repetition's folder" if failed else ""))
    return 1 if failed else 0


def soak(names: List[str], args, data_path: List[str], tokenizer: str, work_dir: str) -> dict:
    """Rounds of every cell, the table printed (and written to --json) after each; the last table."""
    outcomes = {name: [] for name in names}
    for rep in range(args.repeat):  # rounds over every cell, so a soak cut short still compares the cells
        for name in names:
            outcome = repetition(CELLS[name], data_path, tokenizer, os.path.join(work_dir, name, str(rep)),
                                 args.train_steps, args.bound, args.grace, args.distributed_timeout_minutes)
            outcomes[name].append(outcome)
            print(f"{name} #{rep + 1}: {'ok' if outcome['ok'] else 'FAILED'} in {outcome['seconds']:.0f}s, "
                  f"hangs {outcome['hangs']}, orphans {outcome['orphans']}"
                  + "".join(f"; {p}" for p in outcome["problems"]), flush=True)
        table = summarise(outcomes)
        print_table(table, f"after {rep + 1} of {args.repeat} repetitions")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(table, f, indent=1)
    return table


if __name__ == "__main__":
    sys.exit(main())
