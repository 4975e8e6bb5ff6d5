"""Supervised fine-tuning data: jsonl instructions -> token windows whose loss covers only the response tokens.

Records are `{"prompt": ..., "response": ...}` or chat `{"messages": [{"role": ..., "content": ...}, ...]}`.
An example is BOS + prompt (label -100) + response + EOS (labels = the tokens). Chat turns are rendered as
"### System:\n...\n\n", "### User:\n...\n\n" and "### Assistant:\n" (all masked) followed by the assistant's
content + EOS (trained); every assistant turn is trained.

A sample is an int64 array of shape (2, seq_length + 1): row 0 the tokens, row 1 the per-token label (the token,
or -100). The training loop feeds `tokens[:, :-1]` and `labels[:, 1:]` (`split_batch`), so position i predicts
token i+1 exactly when token i+1 is a response token.
- `packing="pack"`: examples are concatenated (shuffled each epoch) and cut into windows, as pretraining does;
  attention is not blocked at example boundaries (the usual packed-SFT simplification).
- `packing="pad"`: one example per window, truncated to seq_length + 1 or padded with EOS tokens labelled -100.
Epochs repeat with a new seeded shuffle until the run's sample count is reached.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

import numpy as np
import torch

from est_megatron.errors import UsageError

if TYPE_CHECKING:
    from est_megatron.data.tokenizer import Tokenizer

IGNORE = -100
ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


def read_records(paths: Sequence[str]) -> List[dict]:
    records = []
    for path in paths:
        if not os.path.isfile(path):
            raise UsageError(f"SFT data {path} does not exist; pass jsonl files with --data-path")
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise UsageError(f"{path}:{number} is not JSON ({err.msg}); write one object per line") from None
                if not isinstance(record, dict) or not ("messages" in record or
                                                        ("prompt" in record and "response" in record)):
                    raise UsageError(f"{path}:{number} needs {{\"prompt\", \"response\"}} or {{\"messages\": "
                                     "[...]}}")
                records.append(record)
    if not records:
        raise UsageError(f"no SFT records in {', '.join(paths)}")
    return records


def encode_example(record: dict, tokenizer: Tokenizer) -> Tuple[List[int], List[int]]:
    """(tokens, labels) of one record: labels are -100 on the prompt side."""
    tokens, labels = [tokenizer.bos_id], [IGNORE]

    def add(text: str, trained: bool) -> None:
        ids = tokenizer.encode(text)
        tokens.extend(ids)
        labels.extend(ids if trained else [IGNORE] * len(ids))

    if "messages" in record:
        for message in record["messages"]:
            role = message.get("role")
            if role not in ROLES:
                raise UsageError(f"chat role {role!r} is unknown; use one of {', '.join(ROLES)}")
            if role == "assistant":
                add("### Assistant:\n", False)
                add(message["content"], True)
                tokens.append(tokenizer.eos_id)
                labels.append(tokenizer.eos_id)
            else:
                add(f"### {ROLES[role]}:\n{message['content']}\n\n", False)
    else:
        add(record["prompt"], False)
        add(record["response"], True)
        tokens.append(tokenizer.eos_id)
        labels.append(tokenizer.eos_id)
    return tokens, labels


class SFTDataset(torch.utils.data.Dataset):
    """`num_samples` windows (2, seq_length + 1) drawn epoch after epoch from the encoded examples.

    The examples are kept as two flat int32 arrays (tokens, labels) with their offsets, and the windows as a compact
    index built once with numpy: each epoch is a seeded permutation of the examples; a padded window is one
    example, a packed window the `seq_length + 1` tokens at a multiple of that width in its epoch's concatenation
    (the tail shorter than a window is dropped, as is every epoch's). `__getitem__` cuts the window out.
    """

    def __init__(self, examples: Sequence[Tuple[Sequence[int], Sequence[int]]], seq_length: int, num_samples: int,
                 seed: int, packing: str, pad_id: int) -> None:
        if packing not in ("pack", "pad"):
            raise UsageError(f"--sft-packing {packing!r} is unknown; use pack or pad")
        if not examples:
            raise UsageError("the SFT dataset has no examples; add records or lower --sft-valid-fraction")
        self.width, self.packing, self.pad_id = seq_length + 1, packing, pad_id
        self.num_samples = int(num_samples)
        lengths = np.array([len(tokens) for tokens, _ in examples], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        self.tokens = np.fromiter((t for tokens, _ in examples for t in tokens), dtype=np.int32,
                                  count=int(self.offsets[-1]))
        self.labels = np.fromiter((t for _, labels in examples for t in labels), dtype=np.int32,
                                  count=int(self.offsets[-1]))
        total = int(self.offsets[-1])
        per_epoch = len(examples) if packing == "pad" else total // self.width
        if packing == "pack" and per_epoch == 0 and self.num_samples > 0:
            raise UsageError(f"the SFT data holds {total} tokens, less than one packed window of {self.width}; "
                             f"use --sft-packing pad or a shorter --seq-length")
        epochs = -(-self.num_samples // per_epoch) if self.num_samples else 0
        rng = np.random.default_rng(seed)
        order = np.concatenate([rng.permutation(len(examples)) for _ in range(epochs)] or [np.zeros(0, np.int64)])
        window = np.arange(self.num_samples, dtype=np.int64)
        if packing == "pad":
            self.example_index = order[:self.num_samples]  # window i is example example_index[i]
        else:
            # Epoch streams laid end to end; window i starts at (i % per_epoch) * width in epoch i // per_epoch.
            self.example_order = order
            self.ends = np.cumsum(lengths[order])
            self.starts = (window // per_epoch) * total + (window % per_epoch) * self.width

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> np.ndarray:
        if index < 0:
            index += self.num_samples
        if not 0 <= index < self.num_samples:
            raise IndexError(f"SFT window {index} out of range [0, {self.num_samples})")
        if self.packing == "pad":
            example = int(self.example_index[index])
            begin = int(self.offsets[example])
            end = min(int(self.offsets[example + 1]), begin + self.width)
            window = np.empty((2, self.width), dtype=np.int64)
            window[0, :end - begin], window[1, :end - begin] = self.tokens[begin:end], self.labels[begin:end]
            window[0, end - begin:], window[1, end - begin:] = self.pad_id, IGNORE
            return window
        start = int(self.starts[index])
        position = int(np.searchsorted(self.ends, start, side="right"))
        offset = start - (int(self.ends[position]) - self._length(position))
        parts: List[np.ndarray] = []
        need = self.width
        while need > 0:
            example = int(self.example_order[position])
            begin = int(self.offsets[example]) + offset
            end = min(int(self.offsets[example + 1]), begin + need)
            parts.append(np.stack([self.tokens[begin:end], self.labels[begin:end]]))
            need -= end - begin
            position, offset = position + 1, 0
        return np.concatenate(parts, axis=1).astype(np.int64)

    def _length(self, position: int) -> int:
        example = int(self.example_order[position])
        return int(self.offsets[example + 1] - self.offsets[example])


def collate(samples: Sequence[np.ndarray]) -> torch.Tensor:
    """(batch, 2, seq_length + 1) LongTensor."""
    return torch.from_numpy(np.stack(samples))


def split_batch(batch: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels): labels are shifted by one and -100 wherever the next token is not a response token."""
    return batch[:, 0, :-1], batch[:, 1, 1:]


def build_sft_data(args: argparse.Namespace, dist_info: Optional[object] = None) \
        -> Tuple[Tokenizer, Tuple[SFTDataset, Optional[SFTDataset], None]]:
    """(tokenizer, (train, valid, None)) for the training loop: the last --sft-valid-fraction of records validate."""
    from est_megatron.data.tokenizer import spec_from_args
    tokenizer = spec_from_args(args).load()
    records = read_records(args.data_path)
    examples = [encode_example(r, tokenizer) for r in records]
    n_valid = int(len(examples) * args.sft_valid_fraction)
    train, valid = examples[: len(examples) - n_valid], examples[len(examples) - n_valid:]
    if not train:
        raise UsageError("--sft-valid-fraction leaves no training examples; lower it")
    pad = tokenizer.eos_id
    train_ds = SFTDataset(train, args.seq_length, args.train_steps * args.global_batch_size, args.seed,
                          args.sft_packing, pad)
    valid_ds = None
    if valid and args.eval_iters:
        valid_ds = SFTDataset(valid, args.seq_length, args.eval_iters * args.global_batch_size, args.seed + 1,
                              "pad", pad)
    return tokenizer, (train_ds, valid_ds, None)
