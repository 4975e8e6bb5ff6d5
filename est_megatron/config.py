"""Configuration dataclasses, named model presets and their validation.

A config error is a `UsageError` whose one line names the field and the fix, raised before any work starts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from est_megatron.errors import UsageError


def default_strata(n: int) -> int:
    """Largest of 8, 4, 2, 1 that splits `n` into equal strata of even size, so a rate of 0.5 is exact."""
    for strata in (8, 4, 2):
        if n % (2 * strata) == 0:
            return strata
    return 1


@dataclass
class ModelConfig:
    """Shape of a Llama- or GPT-2-flavoured decoder-only Transformer."""

    flavour: str = "llama"  # "llama" (RMSNorm, SwiGLU, RoPE, no biases) or "gpt2" (LayerNorm, GELU, learned positions)
    num_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    num_query_groups: Optional[int] = None  # key/value heads; None = num_attention_heads (plain MHA)
    ffn_hidden_size: int = 176
    vocab_size: int = 512
    max_position_embeddings: int = 128
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_embeddings: bool = False
    bias: bool = False
    init_std: float = 0.02

    def __post_init__(self):
        if self.num_query_groups is None:
            self.num_query_groups = self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def heads_per_group(self) -> int:
        return self.num_attention_heads // self.num_query_groups

    @property
    def is_llama(self) -> bool:
        return self.flavour == "llama"

    @property
    def qkv_rows(self) -> int:
        """Rows of the fused QKV weight (group-major: each group's query heads, then its key and value head)."""
        return self.num_query_groups * (self.heads_per_group + 2) * self.head_dim

    @property
    def up_rows(self) -> int:
        """Rows of the MLP's input weight: [gate; up] for Llama, up alone for GPT-2."""
        return (2 if self.is_llama else 1) * self.ffn_hidden_size

    def validate(self) -> "ModelConfig":
        if self.flavour not in ("llama", "gpt2"):
            raise UsageError(f"model flavour {self.flavour!r} is unknown; use 'llama' or 'gpt2'")
        for name in ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size",
                     "vocab_size", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise UsageError(f"model field {name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise UsageError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                             f"{self.num_attention_heads}; choose sizes with an integer head dimension")
        if self.num_attention_heads % self.num_query_groups:
            raise UsageError(f"num_attention_heads {self.num_attention_heads} is not divisible by "
                             f"num_query_groups {self.num_query_groups}; every key/value head must serve the "
                             "same number of query heads")
        if self.is_llama and self.head_dim % 2:
            raise UsageError(f"head dimension {self.head_dim} (hidden_size / num_attention_heads) must be even "
                             "for rotary position embeddings")
        return self

    def layer_parameters(self, tp: int = 1) -> int:
        """Parameters of one transformer layer on one of `tp` tensor-parallel ranks (the projections are split,
        norms and row-parallel output biases are whole on every rank)."""
        d, f = self.hidden_size, self.ffn_hidden_size
        qkv_rows, up_rows = self.qkv_rows, self.up_rows
        split = (qkv_rows + up_rows + f) * d + d * d  # QKV, [gate; up] and down, output projection
        whole = 2 * (d if self.is_llama else 2 * d)  # two norms
        if self.bias:
            split += qkv_rows + up_rows
            whole += 2 * d  # output and down biases
        return split // tp + whole

    def num_parameters(self, vocab_size: Optional[int] = None) -> int:
        """Exact parameter count (of the unpadded vocabulary unless `vocab_size` is given)."""
        vocab = self.vocab_size if vocab_size is None else vocab_size
        d = self.hidden_size
        norm = d if self.is_llama else 2 * d
        embeddings = vocab * d * (1 if self.tie_embeddings else 2)
        if not self.is_llama:
            embeddings += self.max_position_embeddings * d
        return self.num_layers * self.layer_parameters() + norm + embeddings


MODEL_PRESETS = {
    "tinyllama-1.1b": dict(flavour="llama", num_layers=22, hidden_size=2048, num_attention_heads=32,
                           num_query_groups=4, ffn_hidden_size=5632, vocab_size=32000,
                           max_position_embeddings=2048, norm_eps=1e-5, rope_theta=10000.0),
    "llama2-7b": dict(flavour="llama", num_layers=32, hidden_size=4096, num_attention_heads=32,
                      num_query_groups=32, ffn_hidden_size=11008, vocab_size=32000,
                      max_position_embeddings=4096, norm_eps=1e-5, rope_theta=10000.0),
    "gpt2-124m": dict(flavour="gpt2", num_layers=12, hidden_size=768, num_attention_heads=12,
                      num_query_groups=12, ffn_hidden_size=3072, vocab_size=50257,
                      max_position_embeddings=1024, norm_eps=1e-5, tie_embeddings=True, bias=True),
    # CPU benchmark size (tools/bench): large enough that matmuls dominate, small enough for a CPU step.
    "bench-cpu": dict(flavour="llama", num_layers=8, hidden_size=512, num_attention_heads=8,
                      num_query_groups=2, ffn_hidden_size=1408, vocab_size=8192, max_position_embeddings=256),
    # Small Llama for tests and the demo: GQA with 2 query heads per key/value head.
    "tiny": dict(flavour="llama", num_layers=4, hidden_size=64, num_attention_heads=4, num_query_groups=2,
                 ffn_hidden_size=176, vocab_size=512, max_position_embeddings=128),
    "tiny-gpt2": dict(flavour="gpt2", num_layers=4, hidden_size=64, num_attention_heads=4, num_query_groups=4,
                      ffn_hidden_size=256, vocab_size=512, max_position_embeddings=128, tie_embeddings=True,
                      bias=True),
}


def model_preset(name: str, **overrides) -> ModelConfig:
    """A named preset with optional field overrides (None values are ignored), validated."""
    if name not in MODEL_PRESETS:
        raise UsageError(f"unknown model preset {name!r}; choose one of {', '.join(sorted(MODEL_PRESETS))}")
    fields = dict(MODEL_PRESETS[name])
    fields.update({k: v for k, v in overrides.items() if v is not None})
    if "num_attention_heads" in overrides and "num_query_groups" not in overrides \
            and fields["num_query_groups"] == MODEL_PRESETS[name]["num_attention_heads"]:
        fields["num_query_groups"] = fields["num_attention_heads"]
    return ModelConfig(**fields).validate()


@dataclass
class SubnetConfig:
    """How a subnetwork is drawn from the full model (the sampled plan itself is subnet.plan.StepPlan).

    Strata make sampling balanced: equal counts inside every one of `mlp_strata` equal blocks of MLP columns,
    `layer_strata` equal blocks of layers and `head_strata` equal blocks of key/value groups (whole-group mode),
    so that tensor and pipeline parallel ranks do equal work. None picks `default_strata` of the dimension.

    `rescale` multiplies the kept heads' and MLP columns' outputs by 1/p (the paper's eqs. 5-6). It is off by
    default: measured with the launcher, unscaled subnetworks end at or below dense validation loss where the
    1/p-scaled ones stall on the unigram plateau through stage 1 (README, "EST against dense, measured").
    """

    whole_groups: bool = False  # sample whole key/value groups instead of query heads inside every group
    head_strata: Optional[int] = None
    mlp_strata: Optional[int] = None
    layer_strata: Optional[int] = None
    rescale: bool = False

    def resolved(self, model: ModelConfig) -> "SubnetConfig":
        """Fill defaults from the model's shape and check that every stratum count divides its dimension."""
        whole = self.whole_groups or model.heads_per_group == 1  # plain MHA: a head is its own group
        out = dataclasses.replace(
            self,
            whole_groups=whole,
            head_strata=self.head_strata or default_strata(model.num_query_groups),
            mlp_strata=self.mlp_strata or default_strata(model.ffn_hidden_size),
            layer_strata=self.layer_strata or default_strata(model.num_layers),
        )
        for name, size, what in (("head_strata", model.num_query_groups, "num_query_groups"),
                                 ("mlp_strata", model.ffn_hidden_size, "ffn_hidden_size"),
                                 ("layer_strata", model.num_layers, "num_layers")):
            strata = getattr(out, name)
            if strata <= 0 or size % strata:
                flag = "--est-" + name.replace("_", "-")
                raise UsageError(f"{name} {strata} does not divide {what} {size}; set {flag} to a divisor "
                                 f"of {size}")
        return out
