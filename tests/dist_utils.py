"""Helpers for the multi-process training tests: tiny shards built with the real tools, and launchers.

Imported (not a conftest) so other suites are unaffected. Runs go through `torchrun --nproc_per_node N` (gloo) or
plain `python` as subprocesses on free ports; the first DeepSpeed run of a machine compiles its CPU
communication op (~90 s), hence the generous timeouts.
"""
import json
import os
import random
import socket
import subprocess
import sys

import pytest

from data_fixtures import load_tool, make_text, write_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "launch", "pretrain_tinyllama.py")
TIMEOUT = 600  # a cold DeepSpeed op cache adds ~90 s to the first run


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory):
    """A ~300-piece tokenizer and one corpus of generated text, made by tools/train_tokenizer.py and
    tools/preprocess_data.py. Returns dict(tokenizer=..., prefix=...)."""
    root = tmp_path_factory.mktemp("train_data")
    rng = random.Random(7)
    records = [{"text": make_text(rng, rng.randint(40, 200))} for _ in range(400)]
    raw = write_jsonl(str(root / "raw" / "docs.jsonl"), records)
    load_tool("tools/train_tokenizer.py").main(
        ["--input", raw, "--format", "jsonl", "--model-prefix", str(root / "tok"), "--vocab-size", "300"])
    load_tool("tools/preprocess_data.py").main(
        ["--input", raw, "--format", "jsonl", "--tokenizer-model", str(root / "tok.model"),
         "--output-prefix", str(root / "shards" / "docs"), "--no-progress"])
    return {"tokenizer": str(root / "tok.model"), "prefix": str(root / "shards" / "docs")}


OTHER_WORDS = "print return def class alpha beta 0123 4567".split()  # another corpus's words, for blends


def corpus(root, name, texts, tokenizer):
    """Shards of `texts` (one document each) with `tokenizer`, by tools/preprocess_data.py; returns the prefix."""
    raw = write_jsonl(str(root / "raw" / f"{name}.jsonl"), [{"text": t} for t in texts])
    load_tool("tools/preprocess_data.py").main(["--input", raw, "--format", "jsonl", "--tokenizer-model", tokenizer,
                                                "--output-prefix", str(root / name), "--no-progress"])
    return str(root / name)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_flags(data, workdir, zero=2, steps=4, **overrides):
    """Flags of a tiny, fast run: preset tiny, seq 32, micro 2, global 8, every step logged; the other flags keep
    the defaults users run (DataLoader workers on)."""
    flags = {"--model": "tiny", "--data-path": data["prefix"], "--tokenizer-model": data["tokenizer"],
             "--seq-length": "32", "--micro-batch-size": "2", "--global-batch-size": "8",
             "--train-steps": str(steps), "--lr": "3e-3", "--min-lr": "3e-4", "--lr-warmup-steps": "1",
             "--log-interval": "1", "--eval-interval": "1000", "--eval-iters": "1", "--split": "90,10,0",
             "--ds_config": os.path.join(REPO, "ds_configs", f"zero{zero}.json"),
             "--log-dir": str(workdir / "logs"), "--data-cache-dir": str(workdir / "cache"),
             "--est-schedule": "0.5,1:0.5,0.5,0.5/1,1,1"}
    flags.update({k: v for k, v in overrides.items()})
    argv = []
    for key, value in flags.items():
        if value is None:
            continue
        argv.append(key)
        if value is not True:
            argv.extend(value.split() if key == "--data-path" else [value])
    return argv + ["--no-progress"]


def launch(argv, nproc=1, timeout=TIMEOUT, popen=False):
    """Run the tinyllama entry point: plain python for one process, torchrun for several."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    if nproc == 1:
        cmd = [sys.executable, SCRIPT] + argv
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(free_port()), SCRIPT] + argv
    if popen:
        return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def read_metrics(log_dir):
    with open(os.path.join(log_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_losses(records):
    return [r["loss"] for r in records if "loss" in r and "event" not in r]
