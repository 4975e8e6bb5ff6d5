"""Megatron's flags for packed documents: --reset-position-ids, --reset-attention-mask and --eod-mask-loss.

A pretraining sample concatenates documents, each ended by the tokenizer's EOD (end-of-sequence) token, and by
default the model reads each row as one sequence, as Megatron does without these flags. With them, every
micro-batch's (inputs, labels) becomes (inputs, labels, documents), as Megatron's `get_ltor_masks_and_position_ids`
does: labels are ignored where the input token is EOD (the next document's first token cannot be predicted
from across the boundary), and `documents` (`model.documents`) restart the positions and keep attention inside
each document. With every flag off there is no `PackedDocuments`: batches reach the model as before, no mask built.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from est_megatron.errors import UsageError
from est_megatron.model.documents import DocumentResets, Documents, document_ids
from est_megatron.tensor_parallel.vocab_parallel import IGNORE_INDEX

FLAGS = ("reset_position_ids", "reset_attention_mask", "eod_mask_loss")


def add_packed_document_args(group) -> None:
    group.add_argument("--reset-position-ids", action="store_true",
                       help="positions restart at 0 after each EOD token of a packed sample (Megatron's flag)")
    group.add_argument("--reset-attention-mask", action="store_true",
                       help="attention stays inside each document of a packed sample: a block-diagonal causal "
                            "mask, or flash-attn's variable-length kernel where it is installed (Megatron's flag)")
    group.add_argument("--eod-mask-loss", action="store_true",
                       help="no loss where the input token is EOD, i.e. on the next document's first token "
                            "(Megatron's loss_mask[tokens == eod] = 0)")


@dataclass(frozen=True)
class PackedDocuments:
    """The run's EOD id and flags: `split` gives each micro-batch its labels and documents."""

    eod_id: int
    resets: DocumentResets
    eod_mask_loss: bool = False

    @classmethod
    def from_args(cls, args, tokenizer) -> Optional["PackedDocuments"]:
        """None with every flag off; a tokenizer without an EOD token is one UsageError naming the flag."""
        given = [flag for flag in FLAGS if getattr(args, flag, False)]
        if not given:
            return None
        eod_id = tokenizer.eos_id
        if eod_id is None or eod_id < 0:
            raise UsageError(f"--{given[0].replace('_', '-')} needs the tokenizer's end-of-document (EOS) token, "
                             "and this tokenizer has none; use one with an EOS token or drop the flag")
        return cls(eod_id, DocumentResets(args.reset_position_ids, args.reset_attention_mask), args.eod_mask_loss)

    def describe(self) -> str:
        done = [what for what, on in (("positions restart", self.resets.position_ids),
                                      ("attention stays inside each document", self.resets.attention_mask),
                                      ("no loss where the input is EOD", self.eod_mask_loss)) if on]
        return f"packed documents (EOD id {self.eod_id}): {', '.join(done)}"

    def split(self, inputs: torch.Tensor, labels: torch.Tensor) \
            -> Tuple[torch.Tensor, torch.Tensor, Optional[Documents]]:
        """(inputs, labels, documents): labels -100 where the input is EOD (--eod-mask-loss); documents None
        unless positions or attention are reset."""
        if self.eod_mask_loss:
            labels = labels.masked_fill(inputs == self.eod_id, IGNORE_INDEX)
        documents = self.resets.documents(document_ids(inputs, self.eod_id)) if self.resets.any else None
        return inputs, labels, documents


def model_batch(packing: Optional[PackedDocuments], inputs: torch.Tensor, labels: torch.Tensor) \
        -> Tuple[torch.Tensor, torch.Tensor, Optional[Documents]]:
    """(inputs, labels, documents) of a micro-batch: as they are (documents None) without the flags."""
    return (inputs, labels, None) if packing is None else packing.split(inputs, labels)


def pipeline_batch(inputs: torch.Tensor, labels: torch.Tensor, documents: Optional[Documents]) -> tuple:
    """A micro-batch for DeepSpeed's pipeline engine: (inputs, labels), or ((inputs, document ids), labels), since
    a stage receives only what travels with the activations (`parallel.pipeline`)."""
    return (inputs, labels) if documents is None else ((inputs, documents.ids), labels)
