"""Pipeline parallelism through DeepSpeed's PipelineModule / PipelineEngine (ZeRO-1 at most).

The model becomes a flat list of layers: token embedding (and GPT-2's position embedding) on the first stage,
the transformer layers split evenly (`partition_method='type:TransformerLayerPipe'` balances exactly the
transformer layers), final norm and the output layer on the last stage. The output layer only holds the
projection's weight: the engine's loss function projects and computes the loss together, in chunks of tokens
(`chunked_linear_cross_entropy`, vocab-parallel under TP), so the whole logits never exist, as without a pipeline.
Tied embeddings (GPT-2) are one `TiedLayerSpec` used by the first and the last stage; DeepSpeed sums its gradient
over the two. Every layer can also be tensor-parallel: a pipe layer is built with the TP group.

Layers find the step's plan in a shared `PlanHolder` (est_megatron.tensor_parallel.plan_localization); a
skipped layer returns its input unchanged. Packed documents kept apart (--reset-position-ids,
--reset-attention-mask) travel as their document ids beside the activations, a (hidden, document ids) tuple from
the embedding to the final norm; each stage rebuilds their positions and masks once per micro-batch
(`StageDocuments`).
Every pipe module records `weight_prefix`, the global name of its parameters, so the seeded initialisation gives
each stage exactly the weights of the single-process model.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import nn

from est_megatron.config import ModelConfig
from est_megatron.errors import UsageError
from est_megatron.model.documents import DocumentResets, Documents
from est_megatron.model.init import initialize_from_seed
from est_megatron.model.layer import TransformerLayer
from est_megatron.model.norms import build_norm
from est_megatron.model.rope import rotary_tables
from est_megatron.model.transformer import learned_positions
from est_megatron.tensor_parallel.layout import validate_layout
from est_megatron.tensor_parallel.mappings import group_size_rank
from est_megatron.tensor_parallel.output_layer import chunked_linear_cross_entropy
from est_megatron.tensor_parallel.plan_localization import PlanHolder
from est_megatron.tensor_parallel.sharding import mark_tensor_parallel
from est_megatron.tensor_parallel.vocab_parallel import VocabParallelEmbedding, vocab_range


class EmbeddingPipe(VocabParallelEmbedding):
    """Token embedding (first stage); with tied embeddings also the output projection (last stage)."""

    def __init__(self, cfg: ModelConfig, tp_group=None):
        super().__init__(cfg.vocab_size, cfg.hidden_size, tp_group)
        self.weight_prefix = "embed."
        self.max_positions = cfg.max_position_embeddings

    def forward(self, inputs):
        """Embeddings of the input ids; of (input ids, document ids), (embeddings, document ids)."""
        if isinstance(inputs, tuple):
            input_ids, ids = inputs
            return self.forward(input_ids), ids
        if inputs.shape[1] > self.max_positions:
            raise ValueError(f"sequence length {inputs.shape[1]} exceeds max_position_embeddings "
                             f"{self.max_positions}")
        return super().forward(inputs)


def tied_head_forward(module: EmbeddingPipe, x: torch.Tensor) -> torch.Tensor:
    """The tied embedding as the last stage's output layer: the hidden states go on to the loss, which reads the
    weight (`output_loss`)."""
    return x


class StageDocuments:
    """The `Documents` of the micro-batch a stage runs, built once for all its layers (they receive the same
    document-ids tensor), so the mask or flash-attn's cumulative lengths are not rebuilt per layer."""

    def __init__(self, resets: DocumentResets):
        self.resets, self.last = resets, None

    def of(self, ids: torch.Tensor) -> Documents:
        if self.last is None or self.last.ids is not ids:
            self.last = self.resets.documents(ids)
        return self.last


class PositionEmbeddingPipe(nn.Embedding):
    """GPT-2's learned positions, added after the token embedding."""

    def __init__(self, cfg: ModelConfig, documents: Optional[StageDocuments] = None):
        super().__init__(cfg.max_position_embeddings, cfg.hidden_size)
        self.weight_prefix = "pos_embed."
        self.documents = documents

    def forward(self, inputs):
        if isinstance(inputs, tuple):
            x, ids = inputs
            return x + learned_positions(self.weight, x.shape[1], self.documents.of(ids)), ids
        return inputs + self.weight[: inputs.shape[1]]


class TransformerLayerPipe(TransformerLayer):
    def __init__(self, cfg: ModelConfig, index: int, step_plan: PlanHolder, tp_group=None,
                 documents: Optional[StageDocuments] = None):
        super().__init__(cfg, rotary_tables(cfg), tp_group, index)
        self.step_plan = step_plan
        self.weight_prefix = f"layers.{index}."
        self.documents = documents

    def forward(self, inputs):
        layer_plan = self.step_plan.layer(self.index)
        if layer_plan is not None and not layer_plan.active:
            return inputs  # eq. 7: a skipped layer passes the activations through
        if isinstance(inputs, tuple):
            x, ids = inputs
            return super().forward(x, layer_plan, self.documents.of(ids)), ids
        return super().forward(inputs, layer_plan)


class FinalNormPipe(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.final_norm = build_norm(cfg)
        self.weight_prefix = ""

    def forward(self, inputs):
        return self.final_norm(inputs[0] if isinstance(inputs, tuple) else inputs)  # the document ids end here


class LMHeadPipe(nn.Module):
    """The column-parallel output projection's weight (this rank's vocabulary shard); the hidden states go on to
    the loss, which projects them chunk by chunk (`output_loss`)."""

    def __init__(self, cfg: ModelConfig, tp_group=None):
        super().__init__()
        size, rank = group_size_rank(tp_group)
        start, end = vocab_range(cfg.vocab_size, rank, size)
        self.lm_head = nn.Linear(cfg.hidden_size, end - start, bias=False)
        self.weight_prefix = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def output_loss(weight_owner: nn.Module, group, vocab_size: int, hidden: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
    """The engine's loss on the last stage: mean next-token loss of the final hidden states through the output
    layer's weight, in chunks of tokens."""
    return chunked_linear_cross_entropy(hidden, weight_owner.weight, labels, group, vocab_size)


def build_pipeline_model(cfg: ModelConfig, state, step_plan: PlanHolder, seed: Optional[int] = None,
                         subnet_cfg=None, resets: Optional[DocumentResets] = None):
    """A DeepSpeed PipelineModule of the model on `state`'s topology (a ParallelState); pass it to
    `deepspeed.initialize(model=..., mpu=None)`. `step_plan` is set by the loop before each `train_batch()`;
    `resets`: what the document ids of (input ids, document ids) micro-batches reset."""
    from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec

    pp = state.get_pipe_parallel_world_size()
    validate_layout(cfg, state.tp_size, pp, subnet_cfg=subnet_cfg)
    group = state.tp_group
    specs = [TiedLayerSpec("embed", EmbeddingPipe, cfg, group) if cfg.tie_embeddings
             else LayerSpec(EmbeddingPipe, cfg, group)]
    documents = None if resets is None else StageDocuments(resets)
    if not cfg.is_llama:
        specs.append(LayerSpec(PositionEmbeddingPipe, cfg, documents))
    specs += [LayerSpec(TransformerLayerPipe, cfg, i, step_plan, group, documents) for i in range(cfg.num_layers)]
    specs.append(LayerSpec(FinalNormPipe, cfg))
    specs.append(TiedLayerSpec("embed", EmbeddingPipe, cfg, group, forward_fn=tied_head_forward)
                 if cfg.tie_embeddings else LayerSpec(LMHeadPipe, cfg, group))
    module = PipelineModule(layers=specs, topology=state.topology(), partition_method="type:TransformerLayerPipe")
    if module.stage_id == module.num_stages - 1:  # the output layer's weight is on the last stage
        owner = module.tied_modules["embed"] if cfg.tie_embeddings else module.forward_funcs[-1].lm_head
        module.loss_fn = functools.partial(output_loss, owner, group, cfg.vocab_size)
    per_stage = [sum(isinstance(m, TransformerLayerPipe) for m in module.forward_funcs)]
    if per_stage[0] != cfg.num_layers // pp:
        raise UsageError(f"pipeline stage holds {per_stage[0]} of {cfg.num_layers} layers; "
                         f"--pipeline-model-parallel-size {pp} must split the layers evenly")
    prefixes = pipeline_layer_prefixes(cfg)
    for index, func in enumerate(module.forward_funcs, module._local_start):
        if getattr(func, "weight_prefix", prefixes[index]) != prefixes[index]:
            raise RuntimeError(f"pipeline layer {index} holds {func.weight_prefix!r} but pipeline_layer_prefixes "
                               f"says {prefixes[index]!r}; keep the two in step")
    named = global_named_parameters(module)
    mark_tensor_parallel(named, state.tp_size)
    if seed is not None:
        initialize_from_seed(named, cfg, seed, state.tp_rank, state.tp_size)
    return module


def pipeline_layer_prefixes(cfg: ModelConfig) -> list:
    """The global-name prefix of each PipelineModule layer's parameters, by layer index: what DeepSpeed's
    `layer_XX-model_YY-model_states.pt` checkpoint files hold (a tied head repeats "embed.")."""
    return (["embed."] + ([] if cfg.is_llama else ["pos_embed."]) + [f"layers.{i}." for i in range(cfg.num_layers)]
            + ["", "embed." if cfg.tie_embeddings else ""])


def global_named_parameters(module) -> list:
    """(global name, parameter) of this stage's parameters; a tied module counts once."""
    seen = []
    for m in module.modules():
        if hasattr(m, "weight_prefix") and all(m is not s for s in seen):
            seen.append(m)
    return [(m.weight_prefix + n, p) for m in seen for n, p in m.named_parameters()]
