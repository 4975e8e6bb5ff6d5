"""The tokenizer a checkpoint carries: the files beside it (a standalone checkpoint keeps whatever its Hugging Face
folder had), else the tokenizer flags its training run recorded, and whether that run's documents began with BOS."""
from __future__ import annotations

import argparse
import json
import os
from typing import Dict, Optional, Tuple

from est_megatron.checkpoint.reader import run_state
from est_megatron.data.tokenizer import TokenizerSpec
from est_megatron.errors import UsageError

# Tokenizer files carried between checkpoints as they are (the SentencePiece model first of all).
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja")


def tokenizer_files(directory: str) -> Dict[str, str]:
    """{name: path} of the tokenizer files in a directory."""
    return {name: os.path.join(directory, name) for name in TOKENIZER_FILES
            if os.path.isfile(os.path.join(directory, name))}


def folder_tokenizer(directory: str) -> Optional[TokenizerSpec]:
    """The tokenizer a folder's files make: a SentencePiece tokenizer.model first (what Llama's shards are made
    with), then a Hugging Face tokenizer.json, then GPT-2's vocab.json + merges.txt."""
    files = tokenizer_files(directory)
    if "tokenizer.model" in files:
        return TokenizerSpec("SentencePieceTokenizer", files["tokenizer.model"])
    if "tokenizer.json" in files:
        return TokenizerSpec("HuggingFaceTokenizer", directory)
    if "vocab.json" in files and "merges.txt" in files:
        return TokenizerSpec("GPT2BPETokenizer", None, files["vocab.json"], files["merges.txt"])
    return None


def _run_adds_bos(args: dict) -> Optional[bool]:
    """Whether a training run's documents started with BOS: SFT always does; pretraining as the shards' manifests
    say (None when they are gone)."""
    if "sft_packing" in args:
        return True
    from est_megatron.data.blend import parse_data_path
    from est_megatron.data.shard_writer import manifest_path
    data_path = args.get("data_path") or args.get("train_data_path")  # Megatron's separate training blend
    if not data_path:
        return None
    seen = set()
    for _, prefix in parse_data_path(data_path):
        if not os.path.isfile(manifest_path(prefix)):
            return None
        with open(manifest_path(prefix)) as f:
            seen.add(bool(json.load(f).get("add_bos")))
    return any(seen) if seen else None


def checkpoint_tokenizer(directory: str) -> Tuple[Optional[TokenizerSpec], Optional[bool]]:
    """(tokenizer spec, whether documents start with BOS) of a checkpoint: the files beside it, else the training
    run's recorded tokenizer flags and shards; None where unknown."""
    spec = folder_tokenizer(directory)
    args = run_state(directory).get("args") or {}
    add_bos = _run_adds_bos(args) if args else None
    if spec is None and args:
        from est_megatron.data.tokenizer import spec_from_args
        try:
            recorded = spec_from_args(argparse.Namespace(**args))
        except UsageError:
            recorded = None
        files = [f for f in (recorded.model, recorded.vocab_file, recorded.merge_file) if f] if recorded else []
        spec = recorded if files and all(os.path.exists(f) for f in files) else None
    return spec, add_bos
