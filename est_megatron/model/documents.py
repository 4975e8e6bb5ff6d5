"""Documents packed into one sequence, kept apart (Megatron's --reset-position-ids and --reset-attention-mask).

A pretraining row concatenates documents, each ended by an EOD token; the EOD belongs to the document it ends
(Megatron's `get_ltor_masks_and_position_ids`). `Documents` holds each token's document number within its row and
derives, once per micro-batch and only when first asked: the positions restarting at 0 after each EOD (rotary
or learned positions), the block-diagonal causal mask (torch SDPA) and the cumulative document lengths of the
flattened batch (flash-attn's variable-length kernel). Pipeline stages receive only the document numbers (what
travels with the activations) and rebuild the rest with the run's `DocumentResets`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Optional, Tuple

import torch


def document_ids(input_ids: torch.Tensor, eod_id: int) -> torch.Tensor:
    """(batch, seq) document number of each token within its row: the count of EOD tokens before it."""
    eod = (input_ids == eod_id).long()
    return eod.cumsum(1) - eod


@dataclass(frozen=True)
class DocumentResets:
    """Which of Megatron's resets a run asks for: positions restart per document, attention stays inside it."""

    position_ids: bool = False
    attention_mask: bool = False

    @property
    def any(self) -> bool:
        return self.position_ids or self.attention_mask

    def documents(self, ids: torch.Tensor) -> "Documents":
        return Documents(ids, self)


class Documents:
    """The documents of a micro-batch's rows (`ids`: `document_ids`), and what the model needs of them."""

    def __init__(self, ids: torch.Tensor, resets: DocumentResets):
        self.ids, self.resets = ids, resets

    @property
    def separate_attention(self) -> bool:
        return self.resets.attention_mask

    def derive_for_sdpa(self) -> None:
        """Derive now the positions and mask that the torch SDPA path reads: a compiled layer reads them as
        tensors, and deriving them inside its graph (cached_property takes a lock) would break the graph."""
        _ = self.position_ids
        if self.separate_attention:
            _ = self.attention_mask

    @cached_property
    def position_ids(self) -> Optional[torch.Tensor]:
        """(batch, seq) position of each token in its document; None unless positions are reset."""
        if not self.resets.position_ids:
            return None
        index = torch.arange(self.ids.shape[1], device=self.ids.device).expand_as(self.ids)
        starts = torch.zeros_like(index)
        starts[:, 1:] = torch.where(self.ids[:, 1:] != self.ids[:, :-1], index[:, 1:], 0)
        return index - starts.cummax(dim=1).values

    @cached_property
    def attention_mask(self) -> torch.Tensor:
        """(batch, 1, seq, seq) bool, True where a query may attend: earlier or same tokens of its document."""
        seq = self.ids.shape[1]
        causal = torch.ones(seq, seq, dtype=torch.bool, device=self.ids.device).tril()
        return ((self.ids[:, :, None] == self.ids[:, None, :]) & causal)[:, None]

    @cached_property
    def cumulative_lengths(self) -> Tuple[torch.Tensor, int]:
        """(cu_seqlens int32, longest document) of the documents of the flattened (batch x seq) tokens: a row's
        last document ends with the row."""
        batch, seq = self.ids.shape
        flat = (self.ids + torch.arange(batch, device=self.ids.device)[:, None] * seq).reshape(-1)
        starts = torch.nonzero(flat[1:] != flat[:-1]).reshape(-1) + 1
        edges = torch.cat([starts.new_zeros(1), starts, starts.new_full((1,), batch * seq)]).to(torch.int32)
        return edges, int((edges[1:] - edges[:-1]).max())
