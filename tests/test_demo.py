"""The demo's data pipeline on a handful of standard-library files: SlimPajama and Starcoder raw formats, the real
tokenizer and preprocessing tools (GitHub records dropped), training flags the parser accepts, and the closing
summary."""
import glob
import json
import os

import pyarrow.parquet as pq
import pytest
import zstandard

from est_megatron import demo
from est_megatron.data.corpus import Corpus
from est_megatron.errors import UsageError
from est_megatron.training.arguments import build_parser, check_args


def test_demo_data_pipeline(tmp_path, monkeypatch):
    root, files = demo.stdlib_files()
    few = [f for f in files if os.path.basename(f) in ("argparse.py", "json/decoder.py", "textwrap.py",
                                                      "decoder.py", "functools.py", "fractions.py")]
    assert len(few) >= 4
    monkeypatch.setattr(demo, "stdlib_files", lambda: (root, few))
    monkeypatch.setattr(demo, "VOCAB", 500)
    tokenizer, slimpajama, starcoder = demo.prepare_data(str(tmp_path))

    records = []
    for path in glob.glob(str(tmp_path / "raw" / "slimpajama" / "**" / "*.jsonl.zst"), recursive=True):
        with open(path, "rb") as f:
            text = zstandard.ZstdDecompressor().decompressobj().decompress(f.read()).decode()
        records += [json.loads(line) for line in text.splitlines()]
    sets = {r["meta"]["redpajama_set_name"] for r in records}
    assert {"RedPajamaWikipedia", "RedPajamaBook", "RedPajamaGithub"} <= sets
    assert any("Return a formatted" in r["text"] or "argument" in r["text"] for r in records)
    table = pq.read_table(str(tmp_path / "raw" / "starcoder" / "python" / "train-00000-of-00001.parquet"))
    assert "content" in table.column_names and table.num_rows == len(few)

    prose, code = Corpus(slimpajama), Corpus(starcoder)
    github = sum(r["meta"]["redpajama_set_name"] == "RedPajamaGithub" for r in records)
    assert len(prose) == len(records) - github and len(code) == len(few)

    args = build_parser("tinyllama").parse_args(demo.training_argv(str(tmp_path), tokenizer, slimpajama, starcoder))
    check_args(args)
    assert args.data_path == ["0.7", slimpajama, "0.3", starcoder] and args.est_schedule == "tinyllama"
    assert args.deepspeed_config.endswith("zero2.json")


def test_demo_nproc_below_one_is_one_clear_error(tmp_path):
    args = build_parser("tinyllama").parse_args(["--demo", "--demo-nproc", "0", "--demo-dir", str(tmp_path / "d")])
    with pytest.raises(UsageError, match="--demo-nproc 0 must be at least 1"):
        demo.run_demo(args)
    assert not (tmp_path / "d").exists()  # rejected before any data is built


def test_training_flags_beside_demo_override_its_own():
    argv = ["--demo", "--demo-dir", "d", "--method", "dense", "--demo-nproc=1", "--train-steps", "480"]
    extra = demo.extra_training_flags(argv)
    assert extra == ["--method", "dense", "--train-steps", "480"]
    tokenizer, *prefixes = demo.data_paths("d")
    args = build_parser("tinyllama").parse_args(demo.training_argv("d", tokenizer, *prefixes) + extra)
    assert args.method == "dense" and args.train_steps == 480 and args.data_path[1] == prefixes[0]


@pytest.mark.parametrize("argv, message", [
    (["--demo", "--data-path", "x"], "--data-path cannot be given with --demo"),
    (["--demo", "--save=ckpt"], "--save cannot be given with --demo"),
    (["--demo", "--est-lr-power", "nan"], "--est-lr-power must be a finite number"),
    (["--demo", "--lr", "1e-3", "--min-lr", "1e-2"], "learning rates must satisfy"),
])
def test_bad_training_flags_beside_demo_are_one_error_before_any_data(tmp_path, argv, message):
    argv = argv + ["--demo-dir", str(tmp_path / "d")]
    args = build_parser("tinyllama").parse_args(argv)
    args.family = "tinyllama"
    with pytest.raises(UsageError, match=message):
        demo.run_demo(args, argv)
    assert not (tmp_path / "d").exists()


def test_summary_names_the_final_losses_per_corpus_and_the_saving(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    records = [{"step": 240, "loss": 4.5, "flops_saved_frac": 0.163},
               {"step": 240, "val_loss": 4.25, "val_ppl": 70.1,
                "val_loss_by_corpus": {"slimpajama": 4.5, "starcoder": 3.6667}}]
    (logs / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    lines = demo.summarize(str(tmp_path), 125.0).splitlines()
    assert lines[0] == "demo finished in 125s"
    assert lines[1] == ("  final validation loss 4.2500 (perplexity 70.1, slimpajama 4.5000, starcoder 3.6667) "
                        "at step 240")
    assert lines[2] == "  FLOPs saved against dense training: 16.3%"
