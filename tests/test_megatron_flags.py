"""Megatron-LM's spellings parse to the same arguments as ours, precision flags, and --help shows true defaults."""
import argparse
import importlib
import os

import pytest

from est_megatron.errors import UsageError
from est_megatron.training.arguments import build_parser, check_args, resolve_precision
from est_megatron.training.optimizer_setup import describe_lr_schedule

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ["--data-path", "shards/x", "--tokenizer-model", "tok.model"]


def parsed(argv):
    return vars(build_parser().parse_args(BASE + argv))


@pytest.mark.parametrize("megatron,ours", [
    (["--train-iters", "500"], ["--train-steps", "500"]),
    (["--lr-warmup-iters", "20"], ["--lr-warmup-steps", "20"]),
    (["--lr-decay-iters", "400"], ["--lr-decay-steps", "400"]),
    (["--data-cache-path", "/tmp/c"], ["--data-cache-dir", "/tmp/c"]),
    (["--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", "v.json", "--merge-file", "m.txt"],
     ["--tokenizer-type=GPT2BPETokenizer", "--vocab-file=v.json", "--merge-file=m.txt"]),
    (["--bf16"], ["--bf16"]),
])
def test_megatron_spellings_parse_like_ours(megatron, ours):
    assert parsed(megatron) == parsed(ours)
    assert parsed(megatron) != parsed([])


def test_megatron_example_command_line_parses():
    """The flags of Megatron-LM's GPT pretraining examples that we share, as they write them."""
    args = build_parser().parse_args(
        ["--num-layers", "4", "--hidden-size", "128", "--num-attention-heads", "4", "--seq-length", "64",
         "--max-position-embeddings", "64", "--micro-batch-size", "2", "--global-batch-size", "8", "--lr", "6e-4",
         "--train-iters", "100", "--lr-decay-iters", "80", "--lr-decay-style", "cosine", "--min-lr", "6e-5",
         "--weight-decay", "0.1", "--clip-grad", "1.0", "--lr-warmup-iters", "10", "--bf16",
         "--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", "gpt2/vocab.json", "--merge-file", "gpt2/merges.txt",
         "--data-path", "my-gpt2_text_document", "--split", "949,50,1", "--log-interval", "10",
         "--save-interval", "50", "--eval-interval", "50", "--eval-iters", "2", "--tensorboard-dir", "tb",
         "--data-cache-path", "cache"])
    assert (args.train_steps, args.lr_warmup_steps, args.lr_decay_steps) == (100, 10, 80)
    assert (args.precision, args.tensorboard_dir, args.data_cache_dir) == ("bf16", "tb", "cache")
    check_args(args)


def test_precision_flags():
    def precision(flags, cuda, bf16):
        return resolve_precision(build_parser().parse_args(BASE + flags), cuda, bf16)

    assert precision([], cuda=True, bf16=True) == "bf16" and precision([], cuda=True, bf16=False) == "fp32"
    assert precision([], cuda=False, bf16=False) == "fp32"
    assert precision(["--fp16"], cuda=True, bf16=True) == "fp16"
    assert precision(["--fp32"], cuda=True, bf16=True) == "fp32"
    with pytest.raises(UsageError, match="--bf16 needs a GPU with bf16 support; use --fp16"):
        precision(["--bf16"], cuda=True, bf16=False)
    with pytest.raises(UsageError, match="--fp16 needs a GPU"):
        precision(["--fp16"], cuda=False, bf16=False)
    with pytest.raises(SystemExit):  # argparse: not allowed with
        build_parser().parse_args(BASE + ["--bf16", "--fp16"])


def test_decay_must_end_after_warmup_and_tokenizer_files_are_named():
    with pytest.raises(UsageError, match="--lr-decay-steps 5 must be at least --lr-warmup-steps 10"):
        check_args(build_parser().parse_args(BASE + ["--lr-decay-iters", "5", "--lr-warmup-iters", "10"]))
    with pytest.raises(UsageError, match="needs --vocab-file"):
        check_args(build_parser().parse_args(["--data-path", "x", "--tokenizer-type", "GPT2BPETokenizer"]))


def test_the_learning_rate_power_must_be_finite():
    check_args(build_parser().parse_args(BASE + ["--est-lr-power", "-1"]))  # measured in README: allowed
    with pytest.raises(UsageError, match="--est-lr-power must be a finite number"):
        check_args(build_parser().parse_args(BASE + ["--est-lr-power", "nan"]))


def parsers():
    yield "pretrain", build_parser()
    for tool in ("preprocess_data", "train_tokenizer", "inspect_data", "convert_to_hf", "convert_hf_to_est",
                 "est_plan", "evaluate", "hessian_trace", "compare_runs", "plot_metrics"):
        yield tool, importlib.import_module(f"est_megatron.cli.{tool}").build_parser()
    for bench in ("step_speed", "schedule_speed", "sat_importance", "soak"):
        yield f"bench/{bench}", importlib.import_module(f"est_megatron.bench.{bench}").build_parser()


@pytest.mark.parametrize("name,parser", list(parsers()), ids=lambda v: v if isinstance(v, str) else "")
def test_help_shows_true_defaults(name, parser):
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        text = " ".join(parser._get_formatter()._expand_help(action).split())
        flag = action.option_strings[0]
        assert text.count("(default") <= 1 and "default: None" not in text, (flag, text)
        if action.nargs == 0:  # a switch: its stored default is not what it does
            assert "(default: True)" not in text and "(default: False)" not in text, (flag, text)
        elif action.default not in (None, []):
            assert "default" in text, (flag, text)


def test_lr_schedule_line_warns_when_the_warm_up_covers_the_run():
    def line(*flags):
        return describe_lr_schedule(build_parser("tinyllama").parse_args(["--data-path", "x", *flags]))
    assert line("--train-steps", "1000") == (
        "learning rate: linear warm-up over 2000 steps to 0.0004, cosine decay to 4e-05 by step 1000; warning: the "
        "warm-up is at least the whole run (1000 steps), so the rate rises all run long and never decays; set "
        "--lr-warmup-steps below --train-steps (e.g. 50)")
    assert "warning" not in line("--train-steps", "1000", "--lr-warmup-steps", "100", "--lr-decay-steps", "900")
    assert line("--lr-decay-steps", "900", "--lr-warmup-steps", "10").endswith("by step 900")
    assert line("--lr-decay-style", "constant") == "learning rate: linear warm-up over 2000 steps to 0.0004"
