"""Rotary position embeddings in the rotate-half convention (the Hugging Face Llama layout)."""
import torch


class RotaryTables:
    """cos/sin tables shared by all layers, in (at least) fp32 on whatever device asks for them.

    Not module buffers on purpose: casting the model to bf16 must not round the angles.
    """

    def __init__(self, head_dim: int, max_positions: int, theta: float):
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float64), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        self._master = (angles.cos(), angles.sin())
        self._tables = {}

    def get(self, seq: int, like: torch.Tensor) -> tuple:
        """Tables for the first `seq` positions, on `like`'s device, in its dtype promoted to fp32."""
        key = (like.device, torch.promote_types(like.dtype, torch.float32))
        if key not in self._tables:
            self._tables[key] = tuple(t.to(device=key[0], dtype=key[1]) for t in self._master)
        cos, sin = self._tables[key]
        return cos[:seq], sin[:seq]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x of shape (batch, heads, seq, head_dim) by tables of shape (seq, head_dim)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.to(cos.dtype) * cos + rotated.to(cos.dtype) * sin).type_as(x)


def rotary_tables(config) -> "RotaryTables | None":
    """The tables of a Llama-flavoured model; None for GPT-2 (learned positions)."""
    return RotaryTables(config.head_dim, config.max_position_embeddings, config.rope_theta) if config.is_llama \
        else None
