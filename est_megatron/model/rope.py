"""Rotary position embeddings in the rotate-half convention (the Hugging Face Llama layout)."""
import torch


class RotaryTables:
    """cos/sin tables shared by all layers, kept in fp32 on whatever device asks for them.

    Not module buffers on purpose: casting the model to bf16 must not round the angles.
    """

    def __init__(self, head_dim: int, max_positions: int, theta: float):
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float64), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        self._tables = {torch.device("cpu"): (angles.cos().float(), angles.sin().float())}

    def get(self, seq: int, device: torch.device) -> tuple:
        if device not in self._tables:
            cos, sin = self._tables[torch.device("cpu")]
            self._tables[device] = (cos.to(device), sin.to(device))
        cos, sin = self._tables[device]
        return cos[:seq], sin[:seq]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x of shape (batch, heads, seq, head_dim) by tables of shape (seq, head_dim)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).type_as(x)
