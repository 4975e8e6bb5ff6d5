"""The shards belong to the tokenizer: checked before training, so a mismatch is one line, not a silent run on
the wrong ids or an IndexError deep in the embedding.

A shard manifest (tools/preprocess_data.py) records the tokenizer's type, SHA-256 and vocabulary and the largest
token id written; all must fit the `--tokenizer-model` of the run. Shards without a manifest (written by other
tools) have their largest id read from the token files.
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Optional, Sequence

import numpy as np

from est_megatron.data.blend import parse_data_path
from est_megatron.data.corpus import Corpus
from est_megatron.data.indexed import bin_path
from est_megatron.data.shard_writer import manifest_path
from est_megatron.data.tokenizer import Tokenizer
from est_megatron.errors import UsageError

DEFAULT_TYPE = "SentencePieceTokenizer"


def largest_token_id(corpus: Corpus) -> int:
    """The largest id in the corpus' token files (read in 64M-token slices, memory-mapped)."""
    largest = -1
    for shard in corpus.shards:
        if not os.path.getsize(bin_path(shard.prefix)):
            continue
        tokens = np.memmap(bin_path(shard.prefix), dtype=shard.dtype, mode="r")
        for start in range(0, tokens.size, 1 << 26):
            largest = max(largest, int(tokens[start:start + (1 << 26)].max()))
    return largest


def check_tokenizer(corpora: Iterable[Corpus], tokenizer: Tokenizer, name: str) -> None:
    """UsageError if any corpus was made with another tokenizer or holds ids beyond its vocabulary."""
    kind = getattr(tokenizer, "type", DEFAULT_TYPE)
    for corpus in corpora:
        path = manifest_path(corpus.prefix)
        recorded, largest = None, None
        if os.path.isfile(path):
            with open(path) as f:
                manifest = json.load(f)
            recorded = manifest.get("tokenizer") or {}
            largest = manifest.get("max_token_id")
        if recorded:
            made_with = f"{recorded.get('type', DEFAULT_TYPE)} {recorded.get('model') or recorded.get('vocab_file')}"
            fix = "pass the tokenizer the shards were made with, or re-run tools/preprocess_data.py with this one"
            if recorded.get("type", DEFAULT_TYPE) != kind:
                raise UsageError(f"{corpus.prefix} was made with a {made_with} but this run uses a {kind}; {fix}")
            if recorded.get("sha256") != tokenizer.sha256:
                sizes = (f"a vocabulary of {recorded.get('vocab_size')}, this one {tokenizer.vocab_size}"
                         if recorded.get("vocab_size") != tokenizer.vocab_size else
                         f"the same vocabulary size ({tokenizer.vocab_size}) but other pieces")
                raise UsageError(f"{corpus.prefix} was made with another tokenizer ({made_with}: {sizes}) than "
                                 f"--tokenizer-model {name}; {fix}")
        if largest is None:
            largest = largest_token_id(corpus)
        if largest >= tokenizer.vocab_size:
            raise UsageError(f"{corpus.prefix} holds token id {largest} but the tokenizer has only "
                             f"{tokenizer.vocab_size} pieces (ids 0..{tokenizer.vocab_size - 1}); pass the tokenizer "
                             "the shards were made with, or re-run tools/preprocess_data.py with this one")


def check_shards_tokenizer(data_paths: Iterable[Optional[Sequence[str]]], tokenizer: Tokenizer, name: str) -> None:
    """`check_tokenizer` for every corpus named by the given --*data-path values (None entries are skipped)."""
    prefixes = {prefix for words in data_paths if words for _, prefix in parse_data_path(words)}
    check_tokenizer([Corpus(prefix) for prefix in sorted(prefixes)], tokenizer, name)
