"""Loss, perplexity and bits per byte of the dense model on whole corpora, each corpus reported on its own.

Samples come from est_megatron.data.build_corpus_sets, the training datasets' own code: documents packed into
seq_length + 1 windows across document boundaries, so a corpus is scored exactly as training's validation scores
it. By default one epoch per corpus is evaluated: every token except the first and a final partial window is
predicted exactly once. Bits per byte divide the loss in bits by the corpus' UTF-8 bytes per token (documents
decoded with the tokenizer, special tokens counting no bytes), over all documents when the whole corpus is
evaluated, else over the epoch's first documents until they hold as many tokens as were evaluated. The datasets
are those of training's --valid-data-path, so `--samples eval_iters x global_batch` with the run's --seq-length
and --seed scores exactly the samples its validation scored.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import List, Optional

import numpy as np
import torch
from tqdm import tqdm

from est_megatron.data import build_corpus_sets
from est_megatron.errors import UsageError


@dataclass
class CorpusResult:
    name: str
    prefix: str
    samples: int
    tokens: int  # predicted tokens
    loss: float  # mean next-token cross-entropy, nats
    ppl: float
    bytes_per_token: Optional[float] = None
    bits_per_byte: Optional[float] = None

    def to_json(self) -> dict:
        return asdict(self)


@torch.no_grad()
def corpus_nll(model, dataset, micro_batch_size: int, device, vocab_size: int, desc: str = "",
               progress: bool = True):
    """(summed next-token negative log-likelihood in nats, predicted tokens) over every sample of `dataset`."""
    total, count = 0.0, 0
    starts = range(0, len(dataset), micro_batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=not progress):
        batch = torch.from_numpy(np.stack([dataset[i] for i in range(start, min(start + micro_batch_size,
                                                                                len(dataset)))]))
        if int(batch.max()) >= vocab_size:
            raise UsageError(f"{desc}: token id {int(batch.max())} is outside the model's vocabulary of {vocab_size}; "
                             "the corpus was tokenized with another tokenizer than the model's")
        batch = batch.to(device)
        inputs, labels = batch[:, :-1], batch[:, 1:]
        loss = model(inputs, labels=labels)  # mean over every label: pretraining samples have no padding
        total += float(loss.double()) * labels.numel()
        count += labels.numel()
    return total, count


def bytes_per_token(dataset, tokenizer, min_tokens: Optional[int] = None) -> float:
    """UTF-8 bytes per token of the documents the dataset reads, in its first epoch's order: all of them, or
    those that hold the first `min_tokens`."""
    corpus, seen, tokens, size = dataset.corpus, set(), 0, 0
    for position in dataset.document_index:
        doc = dataset.doc_begin + int(position)
        if doc in seen:
            break  # a second epoch starts
        seen.add(doc)
        ids = corpus.tokens(doc)
        tokens += int(ids.size)
        size += len(tokenizer.decode(ids.tolist()).encode("utf-8"))
        if min_tokens is not None and tokens >= min_tokens:
            break
    if size == 0:
        raise UsageError(f"{corpus.prefix}: its documents decode to no text; is it tokenized with this tokenizer?")
    return size / tokens


def evaluate_corpora(model, model_cfg, data_path, seq_length: int, micro_batch_size: int, device, tokenizer=None,
                     samples: Optional[int] = None, seed: int = 1234, cache_dir: Optional[str] = None,
                     progress: bool = True) -> List[CorpusResult]:
    """One CorpusResult per corpus of `data_path` (bits per byte only with a tokenizer)."""
    if seq_length > model_cfg.max_position_embeddings:
        raise UsageError(f"--seq-length {seq_length} exceeds the model's {model_cfg.max_position_embeddings} "
                         "positions; lower it")
    if micro_batch_size < 1:
        raise UsageError(f"--micro-batch-size must be positive, got {micro_batch_size}")
    sets = build_corpus_sets(data_path, seq_length, seed, samples, "valid", cache_dir)  # as --valid-data-path
    results = []
    for name, dataset in zip(sets.names, sets.datasets):
        nll, count = corpus_nll(model, dataset, micro_batch_size, device, model_cfg.vocab_size, name, progress)
        loss = nll / count
        result = CorpusResult(name, dataset.corpus.prefix, len(dataset), count, loss, math.exp(min(loss, 80.0)))
        if tokenizer is not None:
            result.bytes_per_token = bytes_per_token(dataset, tokenizer, None if samples is None else count)
            result.bits_per_byte = loss / math.log(2) / result.bytes_per_token
        results.append(result)
    return results


def format_table(results: List[CorpusResult]) -> str:
    rows = [("corpus", "samples", "tokens", "loss", "perplexity", "bits/byte")]
    for r in results:
        rows.append((r.name, f"{r.samples:,}", f"{r.tokens:,}", f"{r.loss:.4f}", f"{r.ppl:.3f}",
                     "n/a (no tokenizer)" if r.bits_per_byte is None else f"{r.bits_per_byte:.4f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
