"""Many processes through the real launchers, with the defaults users run (DataLoader workers on): every run ends,
and nothing outlives it.

- The soak's fast cells (est_megatron/bench/soak.py): pipeline parallelism under `deepspeed` stopped by SIGTERM
  to the launcher, then resumed; Ctrl-C (SIGINT to the process group) under torchrun, then resumed. Each run saves,
  exits and leaves no process behind.
- A rank that stalls on purpose ends the run within the timeout plus a minute: both ranks write what they were
  doing and their stacks, and exit non-zero.
- SIGTERM to the process group while a rank is still starting (stalled on purpose) ends every process at once.
(Two nodes on one machine: tests/test_training_zero.py.)
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import virtualenv_extensions_dir
from dist_utils import tiny_shards, train_flags  # noqa: F401
from est_megatron.bench import soak


@pytest.fixture(scope="module", autouse=True)
def built_comm_op():
    """DeepSpeed compiles its CPU communication op on a machine's first run, inside start-up (~90 s): done here
    first, so the short watchdog timeouts below time the run and not that build. In this interpreter's own
    extensions directory (the runs inherit it): runs from another virtualenv on the machine rebuild torch's shared
    default one for their own paths, and a rank here would then wait for that build past the short timeouts."""
    previous = os.environ.get("TORCH_EXTENSIONS_DIR")
    os.environ["TORCH_EXTENSIONS_DIR"] = virtualenv_extensions_dir()
    # in a process of its own: this one may have loaded the op from the default directory already
    subprocess.run([sys.executable, "-c", "from deepspeed.comm.torch import build_shm_op; build_shm_op()"],
                   check=True, capture_output=True, timeout=600)
    yield
    if previous is None:
        del os.environ["TORCH_EXTENSIONS_DIR"]
    else:
        os.environ["TORCH_EXTENSIONS_DIR"] = previous


def test_soak_fast_cells_exit_save_resume_and_leave_no_process(tiny_shards, tmp_path):  # noqa: F811
    table = tmp_path / "soak.json"
    status = soak.main(["--cells", "fast", "--repeat", "1", "--train-steps", "8", "--bound", "240",
                        "--data-path", tiny_shards["prefix"], "--tokenizer-model", tiny_shards["tokenizer"],
                        "--work-dir", str(tmp_path / "runs"), "--json", str(table)])
    rows = json.loads(table.read_text())
    problems = {name: (tmp_path / "runs" / name / "0" / "problem.log") for name in rows}
    detail = {name: p.read_text()[-3000:] for name, p in problems.items() if p.exists()}
    assert status == 0 and set(rows) == set(soak.FAST_CELLS), (rows, detail)
    for name, row in rows.items():
        assert (row["ok"], row["hangs"], row["orphans"]) == (1, 0, 0), (name, row, detail)


def test_a_stalled_rank_ends_the_run_with_every_ranks_stacks(tiny_shards, tmp_path):  # noqa: F811
    cell = soak.Cell("torchrun", 2, "zero2")
    # long enough that a loaded machine's start-up (model, DeepSpeed engine) is not itself taken for a stall
    flags = train_flags(tiny_shards, tmp_path, steps=50, **{"--distributed-timeout-minutes": "0.4",
                                                           "--save": str(tmp_path / "ckpt")})
    os.environ["EST_MEGATRON_TEST_STALL"] = "1:3"
    try:
        start = time.monotonic()
        run = soak.run_once(soak.commands(cell, flags, str(tmp_path)), str(tmp_path), bound=240, grace=30, stop=None)
    finally:
        del os.environ["EST_MEGATRON_TEST_STALL"]
    out = run["output"]
    assert not run["hung"] and run["orphans"] == 0 and run["statuses"] != [0], out[-4000:]
    assert time.monotonic() - start < 24 + 60 + 60, out[-4000:]  # the timeout + 60 s, + start-up
    assert "error: rank 1 " in out and "step 3: stalled on purpose (EST_MEGATRON_TEST_STALL=1:3)" in out, out[-4000:]
    assert "error: rank 0 " in out and "step 3: " in out.split("error: rank 0 ")[1].splitlines()[0], out[-4000:]
    assert "stall_if_asked" in out and "(most recent call first)" in out  # the stacks
    assert not (tmp_path / "ckpt" / "latest").exists()  # nothing saved from a broken step


def test_a_stop_signal_during_start_up_ends_every_process(tiny_shards, tmp_path):  # noqa: F811
    """Rank 1 stalls in start-up (EST_MEGATRON_TEST_STALL=1:0) while rank 0 waits for it inside a collective;
    SIGTERM to the process group (scancel) ends both at once, each with its line and nothing saved, and leaves no
    process (not after torchrun's 30 s grace and SIGKILL: a blocked rank's Python handler would wait that long)."""
    mark = "startup-" + os.urandom(4).hex()
    flags = train_flags(tiny_shards, tmp_path, steps=50, **{"--save": str(tmp_path / "ckpt")})
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", EST_MEGATRON_TEST_STALL="1:0",
               **{soak.MARK: mark})
    log = open(tmp_path / "launcher.log", "w")
    proc = subprocess.Popen(soak.commands(soak.Cell("torchrun", 2, "zero2"), flags, str(tmp_path))[0], env=env,
                            cwd=soak.REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240
    while (tmp_path / "launcher.log").read_text().count("built successfully") < 2 and time.monotonic() < deadline:
        time.sleep(0.2)  # both ranks have their process group (DeepSpeed's op line); rank 1 now stalls
    time.sleep(2.0)  # rank 0 waits for rank 1 in its first collective
    stopped = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=120)
    took = time.monotonic() - stopped
    time.sleep(5)  # DataLoader workers have none here; the ranks' own exit
    left = soak.marked(mark)
    soak.kill_all(left)
    log.close()
    out = (tmp_path / "launcher.log").read_text()
    assert not left and took < 15, (took, out[-4000:])
    assert out.count("stopping on SIGTERM during start-up: nothing trained yet, nothing saved") == 2, out[-4000:]
    assert not (tmp_path / "ckpt" / "latest").exists()
