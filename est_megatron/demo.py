"""`--demo`: a real pretraining run on a machine with nothing but this Python installation.

1. Corpus. Natural language from the installation's documentation — `pydoc_data.topics` and the docstrings of
   standard-library modules (read with `ast`, nothing is imported) — written as SlimPajama `*.jsonl.zst`
   records `{"text", "meta": {"redpajama_set_name"}}`, plus a few RedPajamaGithub records that preprocessing
   drops as TinyLlama did; code from standard-library `.py` sources written as Starcoder parquet (column
   `content`, under `python/`).
2. Tokenizer: `data.tokenizer_training.train_tokenizer` (Llama-style BPE, byte fallback; what
   tools/train_tokenizer.py runs) on a sample of both.
3. Shards: `data.preprocess.preprocess` (what tools/preprocess_data.py runs) for each corpus.
4. Pretraining of a small Llama on `0.7 slimpajama 0.3 starcoder` with the tinyllama EST schedule compressed
   to a few hundred steps, on 2 CPU processes (gloo) or one process per GPU (nccl) under DeepSpeed ZeRO-2 (torchrun),
   then a summary. Training flags given beside --demo are appended to the demo's, so they override them.

Steps whose outputs exist are reused, so a second `--demo` goes straight to training.
"""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import sysconfig
import time

import torch

from est_megatron.checkpoint.tags import latest_tag
from est_megatron.data.preprocess import preprocess, summary_line
from est_megatron.data.sources import SourceOptions
from est_megatron.data.stdlib_text import docstrings, read_source, stdlib_files
from est_megatron.data.tokenizer import TokenizerSpec
from est_megatron.data.tokenizer_training import train_tokenizer
from est_megatron.errors import UsageError
from est_megatron.training.arguments import DS_CONFIG_DIR, build_parser, check_args
from est_megatron.training.distributed import free_port
from est_megatron.training.preemption import STOP_SIGNALS

CODE_CHARS = 6_000_000  # about 2.5M tokens of code
DOC_RECORDS_PER_FILE = 2000

# The small Llama and the run (about 2 minutes of training on 2 CPU cores).
DEMO_MODEL = ["--model", "tiny", "--num-layers", "4", "--hidden-size", "128", "--ffn-hidden-size", "352",
              "--num-attention-heads", "4", "--num-query-groups", "2"]
DEMO_RUN = ["--seq-length", "128", "--micro-batch-size", "8", "--global-batch-size", "16", "--train-steps", "240",
            "--lr", "2e-3", "--min-lr", "2e-4", "--lr-warmup-steps", "20", "--lr-decay-style", "cosine",
            "--est-schedule", "tinyllama", "--split", "98,2,0", "--eval-interval", "80", "--eval-iters", "4",
            "--log-interval", "20", "--save-interval", "80", "--keep-checkpoints", "2"]
VOCAB = 3000


def build_corpus(raw_dir):
    """Writes raw_dir/slimpajama/**.jsonl.zst, raw_dir/starcoder/python/*.parquet and raw_dir/tokenizer.jsonl."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard
    from pydoc_data.topics import topics

    root, files = stdlib_files()
    texts, codes, github = [], [], []
    for name in sorted(topics):
        texts.append({"text": topics[name], "meta": {"redpajama_set_name": "RedPajamaWikipedia"}})
    code_chars = 0
    for path in files:
        source = read_source(path)
        if not source:
            continue
        doc = docstrings(source)
        if doc:
            texts.append({"text": doc, "meta": {"redpajama_set_name": "RedPajamaBook"}})
        if len(github) < 5:  # GitHub records exist in SlimPajama and are dropped by default
            github.append({"text": source[:2000], "meta": {"redpajama_set_name": "RedPajamaGithub"}})
        if code_chars < CODE_CHARS and len(source) < 200_000:
            codes.append({"content": source, "max_stars_repo_path": os.path.relpath(path, root)})
            code_chars += len(source)

    records = texts + github
    slim = os.path.join(raw_dir, "slimpajama", "train", "chunk1")
    os.makedirs(slim, exist_ok=True)
    for i in range(0, len(records), DOC_RECORDS_PER_FILE):
        data = "".join(json.dumps(r) + "\n" for r in records[i: i + DOC_RECORDS_PER_FILE]).encode()
        with open(os.path.join(slim, f"example_train_{i // DOC_RECORDS_PER_FILE}.jsonl.zst"), "wb") as f:
            f.write(zstandard.ZstdCompressor(level=3).compress(data))
    star = os.path.join(raw_dir, "starcoder", "python")
    os.makedirs(star, exist_ok=True)
    pq.write_table(pa.table({"content": [c["content"] for c in codes],
                             "max_stars_repo_path": [c["max_stars_repo_path"] for c in codes]}),
                   os.path.join(star, "train-00000-of-00001.parquet"))
    # The tokenizer learns from both kinds of text: every document of prose, every fourth code file.
    with open(os.path.join(raw_dir, "tokenizer.jsonl"), "w") as f:
        for r in texts + [{"text": c["content"]} for c in codes[::4]]:
            f.write(json.dumps({"text": r["text"]}) + "\n")
    return dict(prose_docs=len(texts), github_docs=len(github), code_files=len(codes),
                prose_chars=sum(len(r["text"]) for r in texts), code_chars=code_chars)


def data_paths(demo_dir):
    """The tokenizer model and the two shard prefixes the demo builds under demo_dir."""
    shards = os.path.join(demo_dir, "shards")
    return (os.path.join(demo_dir, "tokenizer", "demo.model"), os.path.join(shards, "slimpajama"),
            os.path.join(shards, "starcoder"))


def prepare_data(demo_dir):
    """Corpus, tokenizer and shards under demo_dir (each reused when already there)."""
    raw = os.path.join(demo_dir, "raw")
    tokenizer, *prefixes = data_paths(demo_dir)
    if not os.path.isfile(os.path.join(raw, "tokenizer.jsonl")):
        t = time.time()
        stats = build_corpus(raw)
        print(f"demo: corpus from {sysconfig.get_paths()['stdlib']}: {stats['prose_docs']} prose documents "
              f"({stats['prose_chars']:,} chars) + {stats['github_docs']} RedPajamaGithub records (dropped) as "
              f"SlimPajama jsonl.zst, {stats['code_files']} code files ({stats['code_chars']:,} chars) as Starcoder "
              f"parquet [{time.time() - t:.1f}s]", flush=True)
    if not os.path.isfile(tokenizer):
        os.makedirs(os.path.dirname(tokenizer), exist_ok=True)
        _, summary = train_tokenizer([os.path.join(raw, "tokenizer.jsonl")], SourceOptions("jsonl"),
                                     tokenizer[:-len(".model")], VOCAB, max_chars=4_000_000, progress=True)
        print(summary)
    for name, prefix in zip(("slimpajama", "starcoder"), prefixes):
        if not glob.glob(prefix + "*.idx"):
            manifest = preprocess([os.path.join(raw, name)], SourceOptions(name), TokenizerSpec(model=tokenizer),
                                  prefix, workers=2, progress=False)
            print(summary_line(manifest))
    return (tokenizer, *prefixes)


def training_argv(demo_dir, tokenizer, slimpajama, starcoder, progress=True):
    argv = DEMO_MODEL + DEMO_RUN + [
        "--data-path", "0.7", slimpajama, "0.3", starcoder, "--tokenizer-model", tokenizer,
        "--ds_config", os.path.join(DS_CONFIG_DIR, "zero2.json"),
        "--save", os.path.join(demo_dir, "checkpoints"), "--load", os.path.join(demo_dir, "checkpoints"),
        "--log-dir", os.path.join(demo_dir, "logs")]
    return argv if progress else argv + ["--no-progress"]


def summarize(demo_dir, seconds):
    with open(os.path.join(demo_dir, "logs", "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    evals = [r for r in records if "val_loss" in r]
    trains = [r for r in records if "loss" in r and "event" not in r]
    lines = [f"demo finished in {seconds:.0f}s"]
    if evals:
        last = evals[-1]
        corpora = "".join(f", {name} {loss:.4f}" for name, loss in last.get("val_loss_by_corpus", {}).items())
        lines.append(f"  final validation loss {last['val_loss']:.4f} (perplexity {last['val_ppl']:.1f}{corpora}) "
                     f"at step {last['step']}")
    if trains:
        lines.append(f"  FLOPs saved against dense training: {trains[-1]['flops_saved_frac'] * 100:.1f}%")
    ckpt = os.path.join(demo_dir, "checkpoints")
    tag = latest_tag(ckpt)
    if tag is not None:
        lines.append(f"  checkpoint: {os.path.join(ckpt, tag)}")
    lines.append(f"  metrics: {os.path.join(demo_dir, 'logs', 'metrics.jsonl')} "
                 f"(TensorBoard: {os.path.join(demo_dir, 'logs', 'tensorboard')})")
    return "\n".join(lines)


DEMO_OWN_FLAGS = {"--demo": 0, "--demo-dir": 1, "--demo-nproc": 1}  # flag: values it takes
DEMO_DATA_FLAGS = ("--data-path", "--train-data-path", "--valid-data-path", "--test-data-path", "--tokenizer-type",
                   "--tokenizer-model", "--vocab-file", "--merge-file", "--save", "--load", "--log-dir")


def extra_training_flags(argv) -> list:
    """The training flags given beside --demo (`--method dense`, `--train-steps 480`, ...): they follow the demo's
    own, so they override its settings. The demo's data, tokenizer and output paths are its own: naming one is an
    error rather than a flag silently overridden."""
    extra, skip = [], 0
    for token in argv:
        if skip:
            skip -= 1
            continue
        name, has_value = token.split("=", 1)[0], "=" in token
        if name in DEMO_OWN_FLAGS:
            skip = 0 if has_value else DEMO_OWN_FLAGS[name]
        elif name in DEMO_DATA_FLAGS:
            raise UsageError(f"{name} cannot be given with --demo, which trains on its own corpus and writes under "
                             "--demo-dir; drop --demo to train on your own data")
        else:
            extra.append(token)
    return extra


def run_demo(args, argv=None) -> int:
    """Build the data in this process, then train on `--demo-nproc` processes launched with torchrun, with the demo's
    settings followed by any training flags given beside --demo (checked before the data is built)."""
    if args.demo_nproc is not None and args.demo_nproc < 1:
        raise UsageError(f"--demo-nproc {args.demo_nproc} must be at least 1 (or left out: one per GPU, 2 on a CPU)")
    extra = extra_training_flags(sys.argv[1:] if argv is None else argv)
    demo_dir = os.path.abspath(args.demo_dir)
    check_args(build_parser(args.family).parse_args(training_argv(demo_dir, *data_paths(demo_dir)) + extra))
    start = time.time()
    os.makedirs(demo_dir, exist_ok=True)
    tokenizer, slimpajama, starcoder = prepare_data(demo_dir)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    nproc = args.demo_nproc or gpus or 2
    if gpus and nproc > gpus:
        raise UsageError(f"--demo-nproc {nproc} needs {nproc} GPUs, this machine has {gpus}; use --demo-nproc {gpus}")
    where = f"{nproc} GPU processes (DeepSpeed ZeRO-2, nccl)" if gpus else (
        f"{nproc} CPU processes (DeepSpeed ZeRO-2, gloo; the first DeepSpeed run compiles its CPU communication op, "
        "~90 s)")
    print(f"demo: data ready in {time.time() - start:.0f}s; pretraining on {where}", flush=True)
    # the launcher's module (launch/pretrain_tinyllama.py runs it), so the demo works from an installed package
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(free_port()), "-m", "est_megatron.cli.pretrain_tinyllama"]
    cmd += training_argv(demo_dir, tokenizer, slimpajama, starcoder, args.progress) + extra
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    launcher = subprocess.Popen(cmd, env=env)
    for sig in STOP_SIGNALS:  # a stop request to the demo reaches torchrun, which passes it on: the ranks save first
        signal.signal(sig, lambda signum, frame: launcher.send_signal(signum))
    status = launcher.wait()
    if status != 0:
        print(f"demo: training exited with status {status}", file=sys.stderr)
        return status
    print(summarize(demo_dir, time.time() - start), flush=True)
    return 0
