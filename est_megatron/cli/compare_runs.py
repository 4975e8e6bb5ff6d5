"""Train several methods and schedules on the same data, seeds and model, and compare them against dense.

    python tools/compare_runs.py --output-dir runs/compare --demo-data demo_data --seeds 1 2 \\
        --run dense --run est --run "est-gpt2:--est-schedule gpt2" --run raptr --run sat \\
        --run "est-uniform:--est-mlp-strata 1 --est-layer-strata 1" --run "est-adamw:--est-optimizer dense" \\
        --train-steps 1200 --lr-warmup-steps 60 --eval-interval 100

Runs. `--run NAME[:FLAGS]` (repeatable; default: dense and est) names a run and its own training flags, quoted
as one word. A run named after a method (dense, est, raptr, sat) trains that method unless its flags say
--method. Every flag this tool does not define is a training flag of the launcher (launch/pretrain_tinyllama.py
--help) given to every run; a run's own flags come after those and win. Each run is trained once per --seeds
seed, which also seeds the data order, so all runs of a seed see the same batches; validation is always the
dense model on the same held-out batches.

Data. `--demo-data DIR` builds (or reuses) the demo corpus in DIR — the Python installation's documentation and
standard-library code, a tokenizer and shards made with the project's tools — and defaults the model and run to
the demo's (a 4-layer, 128-wide Llama, sequence 128, global batch 16); `--data-path`/`--tokenizer-model` train on
your shards instead. `--smoke` is a tiny model for a handful of steps, for tests.

The two baselines a skeptic asks for. `--equal-flops-dense [RUN ...]` adds, per seed, a dense run given an
EST-family run's compute: its steps x (1 - its FLOPs saving), trained after it and named dense-at-RUN-flops. The
saving is the one its logs measured once it finished, else the one its schedule predicts (tools/est_plan.py); the
warm-up and the decay end are scaled by the same ratio (at least one warm-up step), so its cosine ends at its last
step. It takes the flags every run gets, not RUN's own. No RUN: one per EST-family run (est, raptr, sat). The
table compares each EST-family run with its equal-FLOPs dense run ('vs dense at equal FLOPs'), and Figure 2 draws
it (against FLOPs it ends where its run ends). `--lr-sweep LR ...` trains every run (equal-FLOPs ones included) at
each peak rate, --min-lr keeping its ratio to --lr; each run's rate is the one with the lowest mean final
validation loss (finished runs only, on the seeds finished at every rate), and the numbers reported for it are the
test split's (evaluated once a run completes; --split needs a test part, or give --test-data-path), which took no
part in the choice: the table shows each run at its chosen rate with its test loss, compares test losses, and lists
every rate's validation loss.

Each run and seed is a subprocess of the launcher with its own directory OUTPUT_DIR/NAME/seed_S (a sweep's
OUTPUT_DIR/NAME/lr_X/seed_S; logs/metrics.jsonl, checkpoints/, train.log, run.json), so rerunning the same command
skips finished runs and resumes interrupted ones from their last checkpoint (Ctrl-C or SIGTERM make every run in
flight save first). `--jobs N` trains N runs at once, in order (an equal-FLOPs run once the run it matches ends),
one thread per process on a machine with N cores. A run's flags must not change between invocations (checked),
except --exit-interval (chained jobs of one run); an equal-FLOPs run keeps the steps it started with.

Downstream. `--eval-tasks TASK ...` (with `--eval-include-path DIR` for local YAML tasks, such as the held-out
ones tools/make_demo_tasks.py writes) and `--eval-data-path PREFIX ...` (held-out corpora, scored on --eval-samples
windows each) score every finished run's final checkpoint with tools/evaluate.py once training is done (in a sweep,
each run at its chosen rate; with --report-only, without training), keep the result beside its logs
(downstream_step_N.json; a run evaluated once is not again) and tabulate each task's accuracy against the
baseline's in points and each corpus's loss against the baseline's in percent, seed by seed.

Outputs: OUTPUT_DIR/summary.json (per run and seed: validation loss per evaluation, training loss per log step,
cumulative FLOPs and tokens, stage transitions, final losses, FLOPs saved, wall-clock), OUTPUT_DIR/figure2.png
(the paper's Figure 2: validation and training loss against steps and FLOPs, stage transitions dotted) and
OUTPUT_DIR/table.md (final validation loss against dense: mean +- standard deviation over seeds, the per-seed
relative difference, FLOPs saved), also printed.
"""

import argparse
import contextlib
import filecmp
import functools
import json
import math
import os
import queue
import re
import shlex
import signal
import sys
import time
from dataclasses import dataclass, replace
from typing import List, Optional

from est_megatron.analysis.comparison import RunLogs, compare
from est_megatron.analysis.curves import load_curves, read_records
from est_megatron.analysis.downstream import downstream_path, evaluated
from est_megatron.analysis.equal_flops import EqualFlopsSchedule, equal_flops_schedule, measured_saving
from est_megatron.analysis.report import save_report
from est_megatron.cli.run_pool import RunProcess, stop_all, threads_per_process
from est_megatron.checkpoint.tags import latest_step
from est_megatron.data.atomic import save_json
from est_megatron.errors import UsageError, exit_on_usage_error
from est_megatron.help_format import HelpFormatter
from est_megatron.training.methods import METHODS

FAMILIES = ("tinyllama", "gpt2")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
# Set by this tool for every run; a user's value would break the one-directory-per-run layout or the seeds.
MANAGED_FLAGS = ("--seed", "--save", "--load", "--log-dir", "--demo", "--demo-dir", "--demo-nproc", "--local_rank",
                 "--local-rank", "--data-path", "--tokenizer-model")
# Settings that may differ between invocations of one run: they change where a job stops, not what it trains.
VOLATILE_SETTINGS = ("exit_interval", "progress", "local_rank")
SMOKE_FLAGS = ["--model", "tiny", "--seq-length", "32", "--micro-batch-size", "2", "--global-batch-size", "4",
               "--train-steps", "8", "--lr", "3e-3", "--min-lr", "3e-4", "--lr-warmup-steps", "2",
               "--log-interval", "1", "--eval-interval", "4", "--eval-iters", "1", "--save-interval", "4",
               "--keep-checkpoints", "1", "--split", "90,10,0"]  # DataLoader workers as users run them
# Console echo of a run's output: the training loop's own lines; everything goes to its train.log.
ECHO = re.compile(r"^(step |est_megatron:|resumed |no checkpoint|the run is complete|error:|Traceback)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter,
                                allow_abbrev=False,
                                usage="%(prog)s [options] [training flags passed to every run]")
    p.add_argument("--run", action="append", metavar="NAME[:FLAGS]",
                   help="a run and its own training flags, quoted as one word, e.g. \"est-gpt2:--est-schedule "
                        "gpt2\"; repeatable (default: dense and est)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1234],
                   help="train every run once per seed (default: 1234, the launcher's)")
    p.add_argument("--output-dir", default="compare_runs",
                   help="one directory per run and seed, and the summary, figure and table (default: compare_runs)")
    p.add_argument("--family", choices=FAMILIES, default="tinyllama",
                   help="launcher and its defaults: launch/pretrain_tinyllama.py or launch/pretrain_gpt2.py "
                        "(default: tinyllama)")
    p.add_argument("--demo-data", metavar="DIR",
                   help="build or reuse the demo corpus, tokenizer and shards in DIR and train on them; the demo's "
                        "model and run flags become the defaults (default: use --data-path)")
    p.add_argument("--data-path", nargs="+", help="Megatron blend of shard prefixes, as for the launcher")
    p.add_argument("--tokenizer-model", help="SentencePiece model of the shards, as for the launcher")
    p.add_argument("--nproc", type=int, default=1,
                   help="processes per run: 1 runs plain python, more run torchrun (default: 1)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once, in order (an equal-FLOPs run after the run it matches); each "
                        "process gets OMP_NUM_THREADS = CPU cores / (jobs x nproc) unless set (default: 1)")
    p.add_argument("--baseline", help="run the others are compared with (default: the first dense run)")
    p.add_argument("--equal-flops-dense", nargs="*", metavar="RUN",
                   help="also train, per seed, dense given an EST-family run's FLOPs (its steps x (1 - its "
                        "measured saving), warm-up and decay scaled alike), as run dense-at-RUN-flops, compared with "
                        "RUN; names the EST-family runs to match (no name: every one)")
    p.add_argument("--lr-sweep", nargs="*", type=float, metavar="LR",
                   help="train every run at each of these peak rates (--min-lr keeps its ratio to --lr), choose "
                        "each run's rate on validation loss and report and compare its test loss (needs a test "
                        "part in --split, or --test-data-path)")
    p.add_argument("--eval-tasks", nargs="+", metavar="TASK",
                   help="after training, score every finished run's final checkpoint on these lm-eval tasks with "
                        "tools/evaluate.py (e.g. tools/make_demo_tasks.py's held-out tasks) and tabulate their "
                        "accuracy; each result is kept beside the run's logs (default: no downstream tasks)")
    p.add_argument("--eval-include-path", nargs="+", metavar="DIR",
                   help="folders of local lm-eval YAML tasks for --eval-tasks")
    p.add_argument("--eval-data-path", nargs="+", metavar="PREFIX",
                   help="after training, also the loss of every finished run's final checkpoint on each of these "
                        "held-out corpora (shard prefixes, e.g. tools/make_demo_tasks.py's prose and code), per "
                        "corpus, against the baseline's (default: none)")
    p.add_argument("--eval-samples", type=int, default=2048,
                   help="windows of --seq-length scored per --eval-data-path corpus (default: 2048)")
    p.add_argument("--table-steps", type=int, nargs="+", default=[],
                   help="also tabulate the validation loss at these steps (default: only the final one)")
    p.add_argument("--smoke", action="store_true",
                   help="a tiny model for a few steps (model tiny, sequence 32, 8 steps), to test the harness")
    p.add_argument("--dry-run", action="store_true",
                   help="prepare the data, check every run's flags and print the commands; train nothing")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write the summary, figure and table from the logs already there (and, "
                        "with --eval-tasks, score the finished runs not yet scored)")
    p.add_argument("--no-plot", dest="plot", action="store_false",
                   help="skip figure2.png (no matplotlib needed)")
    p.add_argument("--verbose", action="store_true",
                   help="echo every line the runs print, not only the training loop's (all go to train.log)")
    return p


@dataclass
class RunSpec:
    name: str
    flags: List[str]
    equal_flops_of: Optional[str] = None  # the EST-family run whose FLOPs this dense run is given


def equal_flops_name(run: str) -> str:
    return f"dense-at-{run}-flops"


def parse_run(text: str) -> RunSpec:
    """NAME or NAME:FLAGS; a name that is a method and flags without --method train that method."""
    name, sep, rest = text.partition(":")
    name = name.strip()
    if not NAME_PATTERN.match(name):
        raise UsageError(f"--run {text!r}: the name {name!r} must be letters, digits, '.', '_', '+' or '-' (it "
                         "names the run's directory); write --run NAME or --run \"NAME:FLAGS\"")
    try:
        flags = shlex.split(rest)
    except ValueError as err:
        raise UsageError(f"--run {text!r}: cannot split its flags ({err}); check the quotes") from None
    if sep and not flags:
        raise UsageError(f"--run {text!r} has a ':' but no flags; write --run {name} or --run \"{name}:FLAGS\"")
    if flags and not flags[0].startswith("-"):
        raise UsageError(f"--run {text!r}: flags must start with an option such as --method, not {flags[0]!r}")
    has_method = any(f == "--method" or f.startswith("--method=") for f in flags)
    if not has_method and name in METHODS:
        flags = ["--method", name] + flags
    elif not sep and name not in METHODS:
        raise UsageError(f"--run {name!r} is not a method ({', '.join(sorted(METHODS))}); give its flags: "
                         f"--run \"{name}:--method est --est-schedule ...\"")
    return RunSpec(name, flags)


def method_of(flags: List[str]) -> str:
    """The method the launcher trains with these flags (the last --method wins; its default is est)."""
    method = "est"
    for i, flag in enumerate(flags):
        if flag == "--method" and i + 1 < len(flags):
            method = flags[i + 1]
        elif flag.startswith("--method="):
            method = flag.split("=", 1)[1]
    return method


def equal_flops_specs(names: Optional[List[str]], specs: List[RunSpec], shared: List[str]) -> List[RunSpec]:
    """--equal-flops-dense: one dense run per EST-family run named (none named: every one), after the others."""
    if names is None:
        return []
    family = [s.name for s in specs if method_of(shared + s.flags) != "dense"]
    if not family:
        raise UsageError("--equal-flops-dense gives dense an EST-family run's FLOPs, but no run is one; add --run "
                         "est (or raptr, sat)")
    for name in names:
        if name not in family:
            raise UsageError(f"--equal-flops-dense {name}: not an EST-family run; choose from {', '.join(family)}")
    taken = {s.name for s in specs}
    out = []
    for name in dict.fromkeys(names or family):
        if equal_flops_name(name) in taken:
            raise UsageError(f"--equal-flops-dense names its run {equal_flops_name(name)}, which --run already uses; "
                             "rename that run")
        out.append(RunSpec(equal_flops_name(name), ["--method", "dense"], name))
    return out


def check_not_managed(flags: List[str], where: str) -> None:
    for flag in flags:
        key = flag.split("=", 1)[0]
        if key in MANAGED_FLAGS:
            fix = {"--seed": "use --seeds", "--data-path": "give --data-path once, for every run",
                   "--tokenizer-model": "give --tokenizer-model once, for every run",
                   "--demo": "use --demo-data DIR", "--demo-dir": "use --demo-data DIR"}.get(
                key, "this tool sets it for every run under --output-dir")
            raise UsageError(f"{where}: {key} is set by compare_runs ({fix})")


@dataclass
class Job:
    """One run with one seed: its directory, launcher flags and what the report needs to know about it."""

    spec: RunSpec
    seed: int
    directory: str
    argv: List[str]
    settings: dict  # the launcher's parsed arguments that define what the run trains
    info: dict  # method, schedule, train_steps, seq_length, global_batch_size, dense_step_flops
    lr: Optional[float] = None  # its peak rate in a --lr-sweep
    matched: Optional["Job"] = None  # for an equal-FLOPs dense run: the EST-family run it is given the FLOPs of

    @property
    def label(self) -> str:
        return run_label(self.spec.name, self.lr, self.seed)

    @property
    def log_dir(self) -> str:
        return os.path.join(self.directory, "logs")

    @property
    def ckpt_dir(self) -> str:
        return os.path.join(self.directory, "checkpoints")

    @property
    def state_path(self) -> str:
        return os.path.join(self.directory, "run.json")


def run_label(name: str, lr: Optional[float], seed: int) -> str:
    return f"{name}{'' if lr is None else f' lr {lr:g}'} seed {seed}"


def run_directory(output_dir: str, name: str, seed: int, lr: Optional[float] = None) -> str:
    """OUTPUT_DIR/NAME/seed_S, or OUTPUT_DIR/NAME/lr_X/seed_S for one rate of a --lr-sweep."""
    return os.path.join(output_dir, name, *([] if lr is None else [f"lr_{lr:g}"]), f"seed_{seed}")


def read_state(path: str) -> Optional[dict]:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def data_flags(args) -> List[str]:
    if args.demo_data and (args.data_path or args.tokenizer_model):
        raise UsageError("give either --demo-data or --data-path with --tokenizer-model, not both")
    if args.demo_data:
        from est_megatron.demo import prepare_data
        print(f"compare_runs: demo data in {os.path.abspath(args.demo_data)}", flush=True)
        tokenizer, slimpajama, starcoder = prepare_data(os.path.abspath(args.demo_data))
        return ["--data-path", "0.7", slimpajama, "0.3", starcoder, "--tokenizer-model", tokenizer]
    if not args.data_path or not args.tokenizer_model:
        raise UsageError("no data: give --demo-data DIR (a corpus built from this Python installation) or "
                         "--data-path with --tokenizer-model")
    paths = [p if _is_number(p) else os.path.abspath(p) for p in args.data_path]
    return ["--data-path", *paths, "--tokenizer-model", os.path.abspath(args.tokenizer_model)]


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def default_flags(args) -> List[str]:
    """The flags every run starts from (smoke or demo setup); common flags and a run's own come after and win."""
    if args.smoke:
        return list(SMOKE_FLAGS)
    if args.demo_data:
        from est_megatron.demo import DEMO_MODEL, DEMO_RUN
        return DEMO_MODEL + DEMO_RUN
    return []


def parse_training_flags(argv: List[str], family: str, where: str) -> argparse.Namespace:
    """A run's launcher flags parsed exactly as the launcher will; a parse error is one line naming the run."""
    from est_megatron.training.arguments import build_parser as training_parser

    parser = training_parser(family)

    def fail(message):
        hint = "; quote each run's flags as one word, --run \"NAME:FLAGS\"" if \
            "unrecognized" in message or "expected" in message else ""
        raise UsageError(f"{where}: {message}{hint} (see python launch/pretrain_{family}.py --help)")

    parser.error = fail
    args = parser.parse_args(argv)
    args.family = family
    return args


def training_model(args: argparse.Namespace):
    """The model config the launcher builds from its parsed flags."""
    from est_megatron.data.tokenizer import SentencePieceTokenizer
    from est_megatron.training.trainer import build_model_config

    return build_model_config(args, SentencePieceTokenizer(args.tokenizer_model).vocab_size)


def check_training_flags(argv: List[str], family: str, where: str):
    """Parse a run's launcher flags as the launcher will, and build its model and method, so that a typo or an
    impossible combination stops here, before hours of other runs. Returns (settings, info)."""
    from est_megatron.subnet.flops import dense_step_flops
    from est_megatron.training.arguments import check_args
    from est_megatron.training.methods import MethodContext, build_method, method_options, subnet_config

    args = parse_training_flags(argv, family, where)
    try:
        check_args(args)
        model = training_model(args)
        subnet = subnet_config(args, model)
        build_method(args.method, MethodContext(model, subnet, args.train_steps, args.seed, method_options(args)))
    except UsageError as err:
        raise UsageError(f"{where}: {err}") from None
    info = {"method": args.method, "schedule": args.est_schedule if args.method == "est" else None,
            "train_steps": args.train_steps, "seq_length": args.seq_length,
            "global_batch_size": args.global_batch_size,
            "dense_step_flops": dense_step_flops(model, args.global_batch_size, args.seq_length)}
    settings = {k: v for k, v in sorted(vars(args).items())
                if k not in VOLATILE_SETTINGS and isinstance(v, (str, int, float, bool, list, type(None)))}
    return settings, info


def plan_jobs(args, specs: List[RunSpec], common: List[str]):
    """Every (seed, rate, run) job in training order: all runs of the first seed (at the sweep's first rate, then
    the next), then the next seed's; an equal-FLOPs dense run after the run it matches. Returns (jobs, replan: a
    job's flags planned again, for an equal-FLOPs run once the run it matches has trained)."""
    data = data_flags(args)
    defaults = default_flags(args)
    jobs = []
    for seed in args.seeds:
        for lr in args.lr_sweep or [None]:
            planned = {}
            for spec in specs:
                job = Job(spec, seed, os.path.abspath(run_directory(args.output_dir, spec.name, seed, lr)), [], {},
                          {}, lr, planned.get(spec.equal_flops_of))
                planned[spec.name] = plan_job(job, args, defaults + common, data)
                jobs.append(planned[spec.name])
    return jobs, functools.partial(plan_job, args=args, shared=defaults + common, data=data)


def plan_job(job: Job, args, shared: List[str], data: List[str]) -> Job:
    """The job with its launcher flags, checked: the shared flags, then the run's own, then a swept rate, an
    equal-FLOPs run's steps, the data and this tool's directories."""
    where = f"run {job.label}"
    schedule = equal_flops_dense_schedule(job, args.family) if job.matched is not None else None
    own = job.spec.flags + (schedule.flags() if schedule is not None else [])
    if job.lr is not None:
        before = parse_training_flags(shared + own + data, args.family, where)
        own = own + ["--lr", repr(job.lr), "--min-lr", f"{job.lr * before.min_lr / before.lr:.6g}"]
    argv = shared + own + data + [
        "--seed", str(job.seed), "--log-dir", job.log_dir, "--save", job.ckpt_dir, "--load", job.ckpt_dir,
        "--no-progress"]
    settings, info = check_training_flags(argv, args.family, where)
    if job.lr is not None and not has_test_split(settings):
        raise UsageError(f"{where}: --lr-sweep reports test loss, but --split {settings['split']} has no test part; "
                         "give --split with one (e.g. 969,30,1) or --test-data-path")
    if schedule is not None:
        info["equal_flops"] = dict(schedule.to_json(), of=job.matched.spec.name)
    return replace(job, argv=argv, settings=settings, info=info)


def equal_flops_dense_schedule(job: Job, family: str) -> EqualFlopsSchedule:
    """Steps, warm-up and decay of a dense run given job.matched's FLOPs: those of its run record once it has
    started (a saving measured later does not restart it); else from the matched run's logs once that finished;
    else (not finished, or its logs unreadable) from the saving its schedule predicts (tools/est_plan.py)."""
    state = read_state(job.state_path)
    if state is not None and "equal_flops" in state:
        return EqualFlopsSchedule.from_json(state["equal_flops"])
    matched = job.matched
    steps = matched.info["train_steps"]
    try:
        curves = load_curves(matched.log_dir, dense_step_flops=matched.info["dense_step_flops"]) \
            if finished(matched.directory, steps) else None
    except UsageError:
        curves = None
    if curves is not None:
        saving, source = measured_saving(curves, matched.info["dense_step_flops"]), "measured"
    else:
        from est_megatron.cli.est_plan import plan_method
        launcher = parse_training_flags(matched.argv, family, f"run {matched.label}")
        saving = plan_method(launcher, training_model(launcher), launcher.model, launcher.seq_length,
                             launcher.global_batch_size).saving
        source = "predicted"
    return equal_flops_schedule(steps, saving, matched.settings["lr_warmup_steps"],
                                matched.settings["lr_decay_steps"], source)


def has_test_split(settings: dict) -> bool:
    from est_megatron.data import parse_split
    return bool(settings["test_data_path"]) or parse_split(settings["split"])[2] > 0


def finished(job_dir: str, train_steps: int) -> bool:
    """A run is finished when its log has the loop's end record at the last step."""
    path = os.path.join(job_dir, "logs", "metrics.jsonl")
    if not os.path.isfile(path):
        return False
    ends = [r for r in read_records(path) if r.get("event") == "end"]
    return bool(ends) and ends[-1]["step"] >= train_steps


def launcher_command(job: Job, family: str, nproc: int) -> List[str]:
    module = f"est_megatron.cli.pretrain_{family}"  # launch/pretrain_{family}.py, from an installed package too
    if nproc == 1:
        return [sys.executable, "-m", module] + job.argv
    from est_megatron.training.distributed import free_port
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(free_port()), "-m", module] + job.argv


class Interrupted(Exception):
    """Ctrl-C or SIGTERM reached the harness while a run was training."""


class RunFailed(Exception):
    """A run's launcher exited with an error."""


class StopSignals:
    """While entered, Ctrl-C and SIGTERM raise Interrupted; inside `held()` they wait until it ends."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> "StopSignals":
        self._holding, self._pending = False, None
        self._previous = [signal.signal(s, self._handle) for s in self.SIGNALS]
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in zip(self.SIGNALS, self._previous):
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self._holding:
            self._pending = self._pending or name
        else:
            raise Interrupted(name)

    @contextlib.contextmanager
    def held(self):
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
        if self._pending:
            name, self._pending = self._pending, None
            raise Interrupted(name)


def start_job(job: Job, args, position: str, start_step: int, ended: queue.Queue) -> RunProcess:
    """Start or resume (at start_step, its last checkpoint) one run as a launcher subprocess."""
    os.makedirs(job.directory, exist_ok=True)
    total = job.info["train_steps"]
    print(f"{position} {job.label}: " + (f"resuming at step {start_step} of {total}" if start_step else
                                         f"training {total} steps") + f" (log {job.directory}/train.log)",
          flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.jobs * args.nproc > 1:
        env.setdefault("OMP_NUM_THREADS", str(threads_per_process(args.jobs * args.nproc)))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    name = f"{job.spec.name}{'' if job.lr is None else f' lr {job.lr:g}'} s{job.seed}"
    return RunProcess(name, launcher_command(job, args.family, args.nproc), env,
                      os.path.join(job.directory, "train.log"), lambda line: args.verbose or ECHO.match(line),
                      ended)


def record_attempt(job: Job, process: RunProcess, from_step: int, status: int, interrupted: Optional[str]) -> None:
    """Append this attempt to the run's run.json (written atomically: an interrupted harness never tears it)."""
    state = read_state(job.state_path) or {"name": job.spec.name, "seed": job.seed, "argv": job.argv,
                                           "settings": job.settings, **job.info, "attempts": []}
    state["attempts"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(process.began)),
                              "from_step": from_step, "to_step": latest_step(job.ckpt_dir) or 0,
                              "seconds": round(time.time() - process.began, 1), "exit_status": status,
                              "interrupted": interrupted})
    save_json(job.state_path, state)


def next_ready(waiting: List[Job], running: List[Job]) -> Optional[Job]:
    """The first waiting job that may start now: an equal-FLOPs run only once the run it matches has finished."""
    unfinished = {job.directory for job in waiting + running}
    return next((job for job in waiting if job.matched is None or job.matched.directory not in unfinished), None)


def train_pending(pending: List[Job], args, replan) -> None:
    """Train the pending jobs in order, --jobs at a time. Ctrl-C or SIGTERM asks every run in flight to save and
    stop (again: kill them) and raises Interrupted; a failed run asks the others to save and stop, then raises
    RunFailed."""
    ended: queue.Queue = queue.Queue()  # each run's process puts itself here when its output ends
    waiting, running, from_steps, failed = list(pending), {}, {}, None
    with StopSignals() as stops:
        try:
            while waiting or running:
                while waiting and failed is None and len(running) < args.jobs:
                    job = next_ready(waiting, list(running.values()))
                    if job is None:
                        break
                    waiting.remove(job)
                    if job.matched is not None:  # the run it matches has just finished: its measured saving
                        job = replan(job)
                        plan = job.info["equal_flops"]
                        print(f"compare_runs: {job.label} trains {plan['train_steps']} steps, "
                              f"{job.matched.spec.name}'s {plan['saving_source']} FLOPs saving "
                              f"{plan['saving'] * 100:.1f}%", flush=True)
                    with stops.held():  # a stop meanwhile finds the new run in `running`, not orphaned
                        from_steps[job.directory] = latest_step(job.ckpt_dir) or 0
                        running[start_job(job, args, f"[{len(pending) - len(waiting)}/{len(pending)}]",
                                          from_steps[job.directory], ended)] = job
                if not running:
                    break
                process = ended.get()
                with stops.held():
                    job = running.pop(process)
                    status = process.wait()
                    record_attempt(job, process, from_steps[job.directory], status,
                                   None if failed is None else "another run failed")
                if status != 0 and failed is None:
                    print(_tail(os.path.join(job.directory, "train.log"), 25), file=sys.stderr)
                    failed = (f"{job.label} failed with exit status {status}; its output is in {job.directory}/"
                              "train.log (last lines above); fix it and rerun the same command")
                    for other in running:
                        other.signal(signal.SIGTERM)
        except Interrupted as err:
            print(f"compare_runs: {err}: asking {', '.join(j.label for j in running.values())} to save and stop "
                  "(again to kill them)", flush=True)
            reason = str(err)
            if stop_all(running, (Interrupted,)):
                reason += " twice (killed; their last steps since a checkpoint are lost)"
            for process, job in running.items():
                record_attempt(job, process, from_steps[job.directory], process.wait(), reason)
            where = "; ".join(f"{job.label} stopped at step {latest_step(job.ckpt_dir) or 0}"
                              for job in running.values())
            raise Interrupted(f"interrupted: {where}; rerun the same command to resume") from None
    if failed is not None:
        raise RunFailed(failed)


def evaluate_downstream(specs: List[RunSpec], args) -> None:
    """tools/evaluate.py on the final checkpoint of every finished run (in a sweep: at its chosen rate, the one the
    report shows) not yet scored on --eval-tasks, one at a time; Ctrl-C or SIGTERM stops the evaluation in flight
    (rerun to go on). Reads only the runs' directories, so --report-only scores runs too."""
    logs = run_logs(specs, args)
    if args.lr_sweep:
        chosen = {(run["name"], run["lr"]) for run in compare(logs, args.baseline, [])[0]}
        logs = [entry for entry in logs if (entry.name, entry.lr) in chosen]
    todo = [(run_label(entry.name, entry.lr, seed), directory, state["train_steps"]) for entry in logs
            for seed, directory, state in entry.seeds
            if state is not None and finished(directory, state["train_steps"])
            and not evaluated(directory, state["train_steps"], args.eval_tasks or [], args.eval_data_path or [])]
    for i, (label, directory, step) in enumerate(todo, 1):
        log = os.path.join(directory, "evaluate.log")
        what = " and ".join(f"{kind} {' '.join(names)}" for kind, names in (("downstream tasks", args.eval_tasks),
                                                                            ("held-out corpora", args.eval_data_path))
                            if names)
        print(f"[{i}/{len(todo)}] {label}: {what} on its step-{step} checkpoint (log {log})", flush=True)
        cmd = [sys.executable, "-m", "est_megatron.cli.evaluate", "--load", os.path.join(directory, "checkpoints"),
               *(["--tasks", *args.eval_tasks] if args.eval_tasks else []),
               *(["--include-path", *args.eval_include_path] if args.eval_include_path else []),
               *(["--data-path", *map(os.path.abspath, args.eval_data_path), "--samples", str(args.eval_samples)]
                 if args.eval_data_path else []),
               "--no-progress", "--output", downstream_path(directory, step)]
        with StopSignals() as stops:
            with stops.held():  # a stop meanwhile finds the evaluation started, not orphaned
                process = RunProcess(label, cmd, dict(os.environ, PYTHONUNBUFFERED="1"), log,
                                     lambda line: args.verbose, queue.Queue())
            try:
                status = process.wait()
            except Interrupted as err:
                stop_all([process], (Interrupted,))
                raise Interrupted(f"{err}: stopped the downstream evaluation of {label}; rerun the same command to "
                                  "go on") from None
        if status != 0:
            print(_tail(log, 25), file=sys.stderr)
            raise RunFailed(f"the downstream evaluation of {label} failed with exit status {status}; its output is "
                            f"in {log} (last lines above)")


def _tail(path: str, lines: int) -> str:
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:]).rstrip()


# ----------------------------------------------------------------------------------------------- the report


def run_logs(specs: List[RunSpec], args) -> List[RunLogs]:
    """What every run and rate left under --output-dir, for the comparison."""
    logs = []
    for spec in specs:
        for lr in args.lr_sweep or [None]:
            seeds = []
            for seed in args.seeds:
                directory = os.path.abspath(run_directory(args.output_dir, spec.name, seed, lr))
                seeds.append((seed, directory, read_state(os.path.join(directory, "run.json"))))
            logs.append(RunLogs(spec.name, spec.flags, seeds, lr, spec.equal_flops_of))
    return logs


def write_report(specs: List[RunSpec], args) -> dict:
    """summary.json, table.md (also printed) and figure2.png from whatever logs the runs have."""
    runs, baseline, curves, measure = compare(run_logs(specs, args), args.baseline, args.table_steps)
    summary = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "output_dir": os.path.abspath(args.output_dir),
               "family": args.family, "seeds": args.seeds, "baseline": baseline, "compared_on": measure,
               "lr_sweep": args.lr_sweep, "default_flags": default_flags(args), "common_flags": args.common,
               "runs": runs}
    paths, table = save_report(summary, curves, args.output_dir, args.table_steps, args.plot)
    print("\n" + table)
    print("compare_runs: wrote " + ", ".join(paths.values()), flush=True)
    summary["paths"] = paths
    return summary


# ----------------------------------------------------------------------------------------------- main


def changed_settings(old: dict, new: dict) -> List[str]:
    """Settings a run was started with that this invocation would change (flags added to or removed from the
    launcher since then are not compared). A file named by another path with the same bytes is no change: the
    default DeepSpeed config lives in the installed package, whose path differs between checkouts."""
    return [f"{key} {old[key]!r} -> {new[key]!r}" for key in sorted(old.keys() & new.keys())
            if old[key] != new[key] and not _same_file(old[key], new[key])]


def _same_file(a, b) -> bool:
    return isinstance(a, str) and isinstance(b, str) and os.path.isfile(a) and os.path.isfile(b) and \
        filecmp.cmp(a, b, shallow=False)


def check_lr_sweep(rates: List[float], specs: List[RunSpec], common: List[str]) -> None:
    if not rates:
        raise UsageError("--lr-sweep needs at least one peak learning rate, e.g. --lr-sweep 5e-4 1e-3 2e-3")
    bad = [r for r in rates if not (r > 0 and math.isfinite(r))]
    if bad:
        raise UsageError(f"--lr-sweep rates must be positive, got {' '.join(map(str, bad))}")
    if len({f"{r:g}" for r in rates}) != len(rates):
        raise UsageError(f"--lr-sweep {' '.join(map(str, rates))} repeats a rate; give each rate once")
    for where, flags in [("training flags", common)] + [(f"--run {s.name}", s.flags) for s in specs]:
        if any(f.split("=", 1)[0] == "--lr" for f in flags):
            raise UsageError(f"{where}: --lr is set by --lr-sweep for every run; drop it")


def check_args(args, specs: List[RunSpec], common: List[str]) -> None:
    if args.nproc <= 0:
        raise UsageError(f"--nproc must be positive, got {args.nproc}")
    if args.jobs <= 0:
        raise UsageError(f"--jobs must be positive, got {args.jobs}")
    if args.eval_samples <= 0:
        raise UsageError(f"--eval-samples must be positive, got {args.eval_samples}")
    if len(set(args.seeds)) != len(args.seeds):
        raise UsageError(f"--seeds {' '.join(map(str, args.seeds))} repeats a seed; give each seed once")
    if any(t <= 0 for t in args.table_steps):
        raise UsageError("--table-steps must be positive steps")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise UsageError(f"run names repeat ({', '.join(names)}); give every --run its own name")
    if args.baseline and args.baseline not in names:
        raise UsageError(f"--baseline {args.baseline} is not a run; choose one of {', '.join(names)}")
    if args.report_only and args.dry_run:
        raise UsageError("--report-only and --dry-run exclude each other; pick one")
    if args.lr_sweep is not None:
        check_lr_sweep(args.lr_sweep, specs, common)
    check_not_managed(common, "training flags")
    for spec in specs:
        check_not_managed(spec.flags, f"--run {spec.name}")


@exit_on_usage_error
def main(argv=None) -> dict:
    args, common = build_parser().parse_known_args(argv)
    args.common = common
    specs = [parse_run(text) for text in (args.run or ["dense", "est"])]
    check_args(args, specs, common)
    specs += equal_flops_specs(args.equal_flops_dense, specs, default_flags(args) + common)
    if args.plot:  # before hours of training, not after
        from est_megatron.analysis.figure import require_matplotlib
        require_matplotlib()
    pending, replan = [], None
    if not args.report_only:
        jobs, replan = plan_jobs(args, specs, common)
        for job in jobs:
            state = read_state(job.state_path)
            changed = changed_settings(state["settings"], job.settings) if state is not None else []
            if changed:
                raise UsageError(f"{job.label} in {job.directory} was started with other flags "
                                 f"({'; '.join(changed)}); rerun it with its flags, or use another --output-dir (or "
                                 "delete that directory to retrain it)")
            if state is not None and finished(job.directory, job.info["train_steps"]):
                print(f"compare_runs: {job.label} is finished; skipped", flush=True)
            else:
                pending.append(job)
        if args.dry_run:
            for job in jobs:
                print(f"{job.label}: {shlex.join(launcher_command(job, args.family, args.nproc))}")
            return {"jobs": [job.argv for job in jobs], "pending": [job.label for job in pending]}
        rates = f" x {len(args.lr_sweep)} rates" if args.lr_sweep else ""
        print(f"compare_runs: {len(pending)} of {len(jobs)} runs to train ({len(specs)} runs{rates} x "
              f"{len(args.seeds)} seeds) in {os.path.abspath(args.output_dir)}", flush=True)
    try:
        train_pending(pending, args, replan)
        if args.eval_tasks or args.eval_data_path:
            evaluate_downstream(specs, args)
    except Interrupted as err:
        print(f"compare_runs: {err}", file=sys.stderr, flush=True)
        sys.exit(130)
    except RunFailed as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(1)
    return write_report(specs, args)


if __name__ == "__main__":
    main()
