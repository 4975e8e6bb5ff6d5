"""One Megatron-style argument parser for every pretraining entry point.

`build_parser(family)` takes the paper's defaults of a model family ("tinyllama" or "gpt2"); flags keep
Megatron-LM's names so existing launch scripts carry over. `parse_args` also checks what argparse cannot
(batch divisibility is checked later, when the data-parallel size is known).
"""
from __future__ import annotations

import argparse
import math
import os
from typing import Optional, Sequence

from est_megatron.config import MODEL_PRESETS
from est_megatron.data.tokenizer import add_tokenizer_args, spec_from_args
from est_megatron.errors import UsageError
from est_megatron.help_format import HelpFormatter
from est_megatron.training.compile_flag import add_compile_args
from est_megatron.training.methods import add_method_args
from est_megatron.training.packed_documents import add_packed_document_args
from est_megatron.training.resume import OVERRIDABLE, normalise_override

# The DeepSpeed configs are package data (a checkout's top-level ds_configs/ links here), so the default
# --ds_config exists in an installed package too.
DS_CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ds_configs")

# The paper's setups (Li et al., ICML 2024, section 4): TinyLlama-1.1B and GPT-2-base.
FAMILY_DEFAULTS = {
    "tinyllama": dict(model="tinyllama-1.1b", seq_length=2048, global_batch_size=1024, micro_batch_size=8,
                      train_steps=60_000, lr=4e-4, min_lr=4e-5, lr_warmup_steps=2000, lr_decay_style="cosine",
                      est_schedule="tinyllama"),
    "gpt2": dict(model="gpt2-124m", seq_length=1024, global_batch_size=512, micro_batch_size=16,
                 train_steps=150_000, lr=6e-4, min_lr=6e-5, lr_warmup_steps=2000, lr_decay_style="linear",
                 est_schedule="gpt2"),
}


def build_parser(family: str = "tinyllama") -> argparse.ArgumentParser:
    d = FAMILY_DEFAULTS[family]
    p = argparse.ArgumentParser(
        description=f"Pretrain a {family} model with Evolving Subnetwork Training (EST) on DeepSpeed. Runs "
                    "under `deepspeed`, `torchrun` or plain `python` (one process).",
        formatter_class=HelpFormatter, allow_abbrev=False)  # as Megatron: a flag is named in full

    g = p.add_argument_group("model")
    g.add_argument("--model", default=d["model"], choices=sorted(MODEL_PRESETS), help="model preset")
    g.add_argument("--num-layers", type=int, help="override the preset's number of layers")
    g.add_argument("--hidden-size", type=int, help="override the preset's hidden size")
    g.add_argument("--ffn-hidden-size", type=int, help="override the preset's MLP intermediate size")
    g.add_argument("--num-attention-heads", type=int, help="override the preset's query heads")
    g.add_argument("--num-query-groups", type=int, help="override the preset's key/value heads (GQA groups)")
    g.add_argument("--max-position-embeddings", type=int,
                   help="override the preset's positions (raised to --seq-length when smaller)")
    g.add_argument("--make-vocab-size-divisible-by", type=int, default=128,
                   help="pad the tokenizer's vocabulary up to a multiple of this (kept as is when it equals the "
                        "preset's vocabulary)")

    g = p.add_argument_group("data")
    g.add_argument("--data-path", nargs="+",
                   help="Megatron blend: PREFIX or W1 PREFIX1 W2 PREFIX2 ... (shards from tools/preprocess_data.py)")
    add_tokenizer_args(g, model_help="the tokenizer the shards were made with: a SentencePiece .model, or for "
                                     "HuggingFaceTokenizer a tokenizer.json or a folder with one")
    g.add_argument("--split", default="969,30,1", help="train,valid,test document split weights")
    g.add_argument("--train-data-path", nargs="+",
                   help="Megatron's separate training blend (every document trains; --split is not used): instead "
                        "of --data-path")
    g.add_argument("--valid-data-path", nargs="+",
                   help="validation corpora (PREFIX ... or weighted pairs), each reported on its own in the logs, "
                        "plus their weighted mean; replaces the --split validation part")
    g.add_argument("--test-data-path", nargs="+",
                   help="test corpora, evaluated like --valid-data-path once the run completes")
    g.add_argument("--seq-length", type=int, default=d["seq_length"], help="tokens per sample")
    g.add_argument("--data-cache-dir", "--data-cache-path", dest="data_cache_dir",
                   help="where sample indices are cached (default: beside the shards)")
    g.add_argument("--num-workers", type=int, default=1, help="DataLoader worker processes")
    add_packed_document_args(g)

    g = p.add_argument_group("training")
    g.add_argument("--micro-batch-size", type=int, default=d["micro_batch_size"],
                   help="samples per rank per micro-batch")
    g.add_argument("--global-batch-size", type=int, default=d["global_batch_size"],
                   help="samples per optimizer step (= micro batch x data-parallel size x accumulation steps)")
    g.add_argument("--train-steps", "--train-iters", dest="train_steps", type=int, default=d["train_steps"],
                   help="optimizer steps of the run")
    g.add_argument("--lr", type=float, default=d["lr"], help="peak learning rate (AdamW)")
    g.add_argument("--min-lr", type=float, default=d["min_lr"], help="learning rate at the end of the decay")
    g.add_argument("--lr-warmup-steps", "--lr-warmup-iters", dest="lr_warmup_steps", type=int,
                   default=d["lr_warmup_steps"], help="linear warm-up steps")
    g.add_argument("--lr-decay-steps", "--lr-decay-iters", dest="lr_decay_steps", type=int,
                   help="step at which the decay reaches --min-lr, which then holds (default: --train-steps)")
    g.add_argument("--lr-decay-style", default=d["lr_decay_style"], choices=("cosine", "linear", "constant"),
                   help="decay from --lr to --min-lr after the warm-up")
    g.add_argument("--weight-decay", type=float, default=0.1, help="AdamW decoupled weight decay")
    g.add_argument("--adam-beta1", type=float, default=0.9, help="AdamW beta1")
    g.add_argument("--adam-beta2", type=float, default=0.95, help="AdamW beta2")
    g.add_argument("--adam-eps", type=float, default=1e-8, help="AdamW epsilon")
    g.add_argument("--clip-grad", type=float, default=1.0, help="global gradient-norm clip (0 disables)")
    g.add_argument("--seed", type=int, default=1234, help="seeds initialisation and the EST plans")
    add_compile_args(g)

    g = add_method_args(p, d["est_schedule"])
    g.add_argument("--check-plan-consistency", action="store_true",
                   help="all-reduce each step's plan checksum, and a parameter checksum at every log step; "
                        "stop if ranks differ (a debugging aid)")

    g = p.add_argument_group("checkpoints")
    g.add_argument("--init-from", help="start from these weights: a converted checkpoint "
                   "(tools/convert_hf_to_est.py) or a training one; the model shape is the checkpoint's")
    g.add_argument("--save", help="checkpoint directory (DeepSpeed layout, tags step_NNNNNN, `latest` file)")
    g.add_argument("--load", help="resume from the latest checkpoint in this directory (fresh start if none)")
    g.add_argument("--save-interval", type=int, default=1000, help="save every N steps (and at the end)")
    g.add_argument("--keep-checkpoints", type=int, default=3, help="keep the last K checkpoints (0: keep all)")
    g.add_argument("--exit-interval", type=int,
                   help="save and stop at the first step divisible by N (Megatron's meaning; the LR and EST "
                        "schedules stay those of --train-steps, so chained jobs of N steps each train the same run)")
    g.add_argument("--override-resume-args", nargs="+", metavar="NAME", default=[],
                   help="accept these flags differing from the checkpoint on --load (refused otherwise): "
                        f"{', '.join(f.lstrip('-') for f in OVERRIDABLE)}")
    g.add_argument("--no-load-rng", action="store_true",
                   help="on --load, keep this run's random states instead of the checkpoint's")
    g.add_argument("--max-skipped-steps", type=int, default=10,
                   help="stop (non-zero exit, no save) after this many consecutive steps skipped for a non-finite "
                        "loss or gradient overflow; 0: never")

    g = p.add_argument_group("evaluation and logging")
    g.add_argument("--eval-interval", type=int, default=1000, help="validation every N steps and at the end")
    g.add_argument("--eval-iters", type=int, default=10,
                   help="global batches per validation, of each corpus where there are several")
    g.add_argument("--log-interval", type=int, default=10, help="log every N steps")
    g.add_argument("--log-dir", help="metrics.jsonl, args.json and tensorboard/ go here")
    g.add_argument("--tensorboard-dir", help="TensorBoard event files go here (default: LOG_DIR/tensorboard; "
                   "without --log-dir, metrics.jsonl and args.json go here too)")
    g.add_argument("--wandb-project", help="also log to this Weights & Biases project (needs wandb installed)")
    g.add_argument("--peak-tflops", type=float,
                   help="peak TFLOP/s of one device for MFU (default: bf16 table of A100/H100/H200; none on CPU)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm progress bar")

    g = p.add_argument_group("parallelism")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1,
                   help="ranks that split every layer (Megatron column/row parallel); keep inside a node")
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1,
                   help="pipeline stages (DeepSpeed PipelineEngine, ZeRO-1 only); data parallel is the rest")
    g.add_argument("--ds_config", "--ds-config", "--deepspeed_config", dest="deepspeed_config",
                   default=os.path.join(DS_CONFIG_DIR, "zero1.json"),
                   help="DeepSpeed JSON config; batch sizes, clipping and precision are filled from the flags")
    g.add_argument("--deepspeed", action="store_true", help="accepted for Megatron-DeepSpeed compatibility "
                   "(DeepSpeed is always used)")
    precision = g.add_mutually_exclusive_group()
    precision.add_argument("--bf16", dest="precision", action="store_const", const="bf16",
                           help="train in bf16 (needs a GPU with bf16; default: bf16 on such GPUs, fp32 elsewhere)")
    precision.add_argument("--fp16", dest="precision", action="store_const", const="fp16",
                           help="train in fp16 with DeepSpeed's dynamic loss scaling (needs a GPU)")
    precision.add_argument("--fp32", dest="precision", action="store_const", const="fp32",
                           help="train in fp32, also on GPUs")
    g.add_argument("--distributed-timeout-minutes", type=float, default=10.0,
                   help="a collective, pipeline send/receive or any step phase that waits longer ends the run: "
                        "each rank writes what it was doing and its Python stacks, then exits with status 3")
    g.add_argument("--local_rank", "--local-rank", type=int, default=None,
                   help="set by the deepspeed launcher (LOCAL_RANK env otherwise)")

    g = p.add_argument_group("memory")
    g.add_argument("--recompute-activations", action="store_true",
                   help="selective recompute: keep the QKV projection's output and recompute the attention core "
                        "(RoPE, attention, head reshapes) in the backward pass")
    g.add_argument("--recompute-granularity", choices=("full", "selective"),
                   help="full: keep only each layer's input and recompute the whole layer in the backward pass; "
                        "selective: as --recompute-activations")
    g.add_argument("--recompute-num-layers", type=int,
                   help="with --recompute-granularity full: recompute the first N layers of each pipeline stage "
                        "(default: all of them)")

    g = p.add_argument_group("demo")
    g.add_argument("--demo", action="store_true",
                   help="build a corpus from this Python installation, train a tokenizer, preprocess and pretrain "
                        "a small Llama with a compressed EST schedule on 2 CPU processes, or one per GPU "
                        "(a few minutes)")
    g.add_argument("--demo-dir", default="demo_run", help="work directory of --demo")
    g.add_argument("--demo-nproc", type=int, default=None,
                   help="processes of --demo (default: one per GPU, or 2 on a machine without CUDA)")
    return p


def parse_args(argv: Optional[Sequence[str]] = None, family: str = "tinyllama") -> argparse.Namespace:
    args = build_parser(family).parse_args(argv)
    args.family = family
    if args.demo:
        return args
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    """Checks of single flags and their pairs, before any process group or data exists."""
    if not args.data_path and not args.train_data_path:
        raise UsageError("--data-path is required: give shard prefixes from tools/preprocess_data.py "
                         "(or run --demo)")
    if args.data_path and args.train_data_path:
        raise UsageError("--data-path and --train-data-path both name training data; give one of them")
    spec_from_args(args)  # the tokenizer flags name their files (e.g. --tokenizer-model), or one clear error
    for name in ("micro_batch_size", "global_batch_size", "train_steps", "seq_length", "log_interval",
                 "eval_interval", "save_interval", "make_vocab_size_divisible_by",
                 "tensor_model_parallel_size", "pipeline_model_parallel_size", "distributed_timeout_minutes"):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("eval_iters", "lr_warmup_steps", "keep_checkpoints", "num_workers", "max_skipped_steps"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must not be negative, got {getattr(args, name)}")
    if args.lr <= 0 or args.min_lr < 0 or args.min_lr > args.lr:
        raise UsageError(f"learning rates must satisfy 0 <= --min-lr ({args.min_lr}) <= --lr ({args.lr}), lr > 0")
    if not math.isfinite(args.est_lr_power):
        raise UsageError(f"--est-lr-power must be a finite number (0 gives every unit lr), got {args.est_lr_power}")
    if args.exit_interval is not None and args.exit_interval <= 0:
        raise UsageError(f"--exit-interval must be positive, got {args.exit_interval}")
    if args.lr_decay_steps is not None and not args.lr_warmup_steps <= args.lr_decay_steps:
        raise UsageError(f"--lr-decay-steps {args.lr_decay_steps} must be at least --lr-warmup-steps "
                         f"{args.lr_warmup_steps}")
    for name in args.override_resume_args:
        normalise_override(name)
    if not os.path.isfile(args.deepspeed_config):
        raise UsageError(f"DeepSpeed config {args.deepspeed_config} does not exist; pass one of ds_configs/*.json "
                         "with --ds_config")


def resolve_precision(args: argparse.Namespace, cuda: bool, bf16_supported: bool) -> str:
    """"bf16", "fp16" or "fp32": --bf16/--fp16/--fp32 when given, else bf16 on a GPU that has it and fp32 elsewhere
    (DeepSpeed's half-precision optimizers need a GPU)."""
    if args.precision is None:
        return "bf16" if cuda and bf16_supported else "fp32"
    if args.precision == "bf16" and not bf16_supported:
        raise UsageError("--bf16 needs a GPU with bf16 support" + ("; use --fp16" if cuda else
                                                                  "; drop it to train in fp32 on CPU"))
    if args.precision == "fp16" and not cuda:
        raise UsageError("--fp16 needs a GPU; drop it to train in fp32 on CPU")
    return args.precision
