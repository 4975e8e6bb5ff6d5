"""Per-rank memory of a training layout, from the model's shape: what `tools/memory_plan.py` prints.

Model states (Megatron's and the ZeRO paper's accounting, per rank, P = this rank's parameters after tensor and
pipeline splitting, N = data-parallel size, w = 2 bytes under bf16 else 4). The plan counts live tensors, what a
GPU's allocated-bytes counter counts (on the CPU, tools/bench/memory.py has glibc return every freed block of 1 MiB
or more, so that its RSS counts the same):

- weights: w P, or w P / N under ZeRO-3 plus the gathered weights: the module that runs, and, once DeepSpeed has
  recorded the order the modules run in (from a step's second repetition on), what its prefetcher gathers ahead
  and keeps for the backward pass, up to stage3_max_live_parameters (ds_configs/zero3.json: two layers) or
  stage3_max_reuse_distance (`zero3_retained`); a stage that samples layers runs another order every step, and
  DeepSpeed releases each module's weights after use;
- gradients: w P (ZeRO-0), w P / N (ZeRO-1/2: this rank's partition of the reduced buckets, from the end of the
  backward pass to the step; ZeRO-3: its flat partition buffer), and the reduce bucket of reduce_bucket_size elements
  (ZeRO-1/2 allocate it each backward pass and reduce it through a flat copy; ZeRO-3 keeps one, and while it reduces
  adds the full-size gradients waiting for it and the reduce-scatter's flat copy: three buckets). A bucket is
  `torch.empty`: on the CPU only what is written is resident, at most the gradients of the layers a stage runs;
- optimizer: an fp32 master partition 4 P / N (ZeRO keeps one even for fp32 weights; ZeRO-0 with fp32 has none) and
  Adam's two moments 8 P / N from the first step on. The step adds an fp32 gradient partition, 4 P / N, which
  DeepSpeed frees after the step; ZeRO-1/2's end of the backward pass first makes the gradient partition beside
  the bucket. SparseAdamW adds one int64 step count per trained row (on the host);
- deepspeed.initialize flattens the weights into one buffer while the originals still exist: w P more for a
  moment (w P / N under ZeRO-3, which flattens only its partition), then creates the master partition and a
  zero-filled gradient partition; ZeRO-3's also gathers each weight whole, one at a time, to register its gradient
  hook: the all-gather's output and the weight it becomes, two copies of the largest weight
  (`MemoryPlan.initialize_peak`, `zero3_hook_transient`);
- offload (ZeRO-Offload / -Infinity): the optimizer terms move to host memory, and under ZeRO-3 the weight
  partition too.

Activations per micro-batch are counted tensor by tensor from what this implementation saves for the backward
pass (est_megatron.model: pre-norm layers, fused QKV, torch's fused attention, SwiGLU or GELU MLP), with the
sizes a plan realises (`PlanSampler.counts`, the same counts `subnet.flops` prices): an EST stage keeps fewer
heads and MLP columns, skips layers, and saves its gathered weight slices (they are new tensors). Selective
recompute keeps the QKV projection and the attention output instead of the attention core's tensors; full
recompute keeps each recomputed layer's input only and re-materialises one layer at a time in the backward
pass. The loss is computed in chunks of tokens (`loss_activations`): it keeps the gradients of the hidden states and
of the output weight instead of the logits, and holds a chunk's logits at a time (a pipeline's last stage too).
Under pipeline parallelism the first stage holds `min(PP, micro-batches)`
micro-batches of layer activations in flight (1F1B), the last stage one and the loss.

The peak is the largest of four phases: start-up (weights plus the seeded initialisation's full-size draw of
the largest part), during `deepspeed.initialize`, forward/backward (states + gathered weights + the larger of the
loss's moment, activations and the loss's chunk of logits, and a reduction's, the reduce buckets and what
activations the backward pass still holds: `MemoryPlan.training_bytes`), and the optimizer step, each plus the fixed
runtime overhead (CUDA context, NCCL and allocator slack on a GPU; the interpreter, torch and DeepSpeed on the CPU,
and from `deepspeed.initialize` on what its first use imports). `tools/bench/memory.py` prints these predictions
beside the peaks it measures.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from est_megatron.config import ModelConfig, SubnetConfig
from est_megatron.errors import UsageError
from est_megatron.subnet.flops import SubnetCounts
from est_megatron.subnet.plan import PlanSampler
from est_megatron.subnet.schedule import parse_schedule
from est_megatron.tensor_parallel.output_layer import CHUNK_LOGITS
from est_megatron.training.ds_config import zero3_live_budget, zero3_setting

GIB = 2 ** 30
FP32, INT64 = 4, 8
ZERO3_ONE_RANK_LAYERS = 2  # ZeRO-3 on one rank: the layer that runs and the one prefetched
INIT_PARTS = 1.5  # the seeded initialisation's transient, in parts of the model (plan_memory)
ZERO3_BUCKETS = 3  # ZeRO-3 reducing: its reduce bucket, the full-size gradients waiting for it, the flat copy
DEFAULT_REDUCE_BUCKET = 50_000_000  # elements, as ds_configs/zero*.json set reduce_bucket_size
# The fixed runtime overhead per rank when not given: a CUDA context, NCCL buffers and allocator slack (an
# assumption, not measured here), or on the CPU what tools/bench/memory.py measured after imports and process-group
# start on a 2-core box (torch + DeepSpeed + gloo).
DEFAULT_OVERHEAD_GIB = {"cuda": 2.5, "cpu": 0.25}
# Host memory that deepspeed.initialize's first use adds to a CPU run: modules imported by the first torch
# optimizer (torch._dynamo) and by DeepSpeed's optimizer checks; measured, see zero3_hook_transient.
SETUP_IMPORTS_GIB = 0.1


@dataclass(frozen=True)
class PlannedRun:
    """A training run as the planner sees it: how it is laid out and batched (planning.training_run reads it from the
    training flags)."""

    tp: int = 1
    pp: int = 1
    dp: int = 1
    zero: int = 1
    offload_optimizer: bool = False
    offload_params: bool = False
    bf16: bool = True
    recompute: Optional[str] = None  # None, "selective" or "full"
    recompute_num_layers: Optional[int] = None  # full: the first N layers of each pipeline stage (None = all)
    micro_batch_size: int = 1
    seq_length: int = 2048
    micro_batches: int = 1  # per optimizer step on each data-parallel rank (gradient accumulation)
    sparse_optimizer: bool = False  # SparseAdamW (EST): per-row/column step counts
    reduce_bucket: int = DEFAULT_REDUCE_BUCKET
    zero3_retained: Optional[int] = None  # elements ZeRO-3 may keep gathered (zero3_retained; None: the shipped auto)

    def check(self, model: ModelConfig) -> "PlannedRun":
        for name in ("tp", "pp", "dp", "micro_batch_size", "seq_length", "micro_batches"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.zero not in (0, 1, 2, 3):
            raise UsageError(f"--zero {self.zero} is not a ZeRO stage; use 0, 1, 2 or 3")
        if self.pp > 1 and self.zero > 1:
            raise UsageError(f"ZeRO-{self.zero} does not run with pipeline parallelism; use --zero 1 with --pp "
                             f"{self.pp}, or --pp 1")
        if self.offload_params and self.zero != 3:
            raise UsageError("--offload-params needs --zero 3 (ZeRO-Infinity); add it or drop the flag")
        if self.offload_optimizer and self.zero == 0:
            raise UsageError("--offload-optimizer needs ZeRO (--zero 1, 2 or 3)")
        if self.zero3_retained is not None and self.zero3_retained < 0:
            raise UsageError(f"--max-live-parameters {self.zero3_retained} must not be negative")
        if self.recompute not in (None, "selective", "full"):
            raise UsageError(f"--recompute {self.recompute!r} is unknown; use selective or full")
        if self.recompute_num_layers is not None and self.recompute != "full":
            raise UsageError("--recompute-num-layers needs --recompute full")
        for name, size in (("num_query_groups", model.num_query_groups), ("ffn_hidden_size", model.ffn_hidden_size)):
            if size % self.tp:
                raise UsageError(f"--tp {self.tp} does not divide {name} {size}; pick a divisor of it")
        if model.num_layers % self.pp:
            raise UsageError(f"--pp {self.pp} does not divide the {model.num_layers} layers; pick a divisor")
        if self.seq_length > model.max_position_embeddings:
            raise UsageError(f"--seq-length {self.seq_length} exceeds the model's {model.max_position_embeddings} "
                             "positions; shorten it or raise --max-position-embeddings")
        return self

    @property
    def weight_bytes(self) -> int:
        return 2 if self.bf16 else FP32


# ---- parameters per rank ----

def stage_parameters(model: ModelConfig, tp: int = 1, pp: int = 1) -> List[int]:
    """Parameters one rank holds on each pipeline stage (a tied embedding is on the first and the last)."""
    d = model.hidden_size
    vocab = math.ceil(model.vocab_size / tp) * d  # vocab-parallel rows (padded)
    norm = d if model.is_llama else 2 * d
    layers = model.num_layers // pp * model.layer_parameters(tp)
    first = vocab + (0 if model.is_llama else model.max_position_embeddings * d)
    last = norm + (vocab if model.tie_embeddings and pp > 1 else 0 if model.tie_embeddings else vocab)
    stages = [layers] * pp
    stages[0] += first
    stages[-1] += last
    return stages


def trained_units(model: ModelConfig, tp: int = 1, pp: int = 1) -> int:
    """SparseAdamW's units on the largest stage: a row per weight, one per bias or norm."""
    hd = model.head_dim
    per_layer = (model.num_query_groups * (model.heads_per_group + 2) * hd + model.num_attention_heads * hd
                 + (3 if model.is_llama else 2) * model.ffn_hidden_size) // tp + 2 + (4 if model.bias else 0)
    return model.num_layers // pp * per_layer + 4


# ---- activations ----

@dataclass(frozen=True)
class LayerShape:
    """One layer's realised sizes on one TP rank: query heads, key/value heads, MLP columns, and whether the heads
    and columns are gathered (an EST plan) rather than the whole weights."""

    query_heads: int
    kv_heads: int
    columns: int
    heads_gathered: bool
    columns_gathered: bool


def layer_shape(model: ModelConfig, counts: SubnetCounts, tp: int) -> LayerShape:
    return LayerShape(counts.query_heads // tp, counts.kv_heads // tp, counts.mlp_columns // tp,
                      counts.query_heads < model.num_attention_heads, counts.mlp_columns < model.ffn_hidden_size)


def _norm_bytes(model: ModelConfig, act: int) -> int:
    """Per token, what a norm saves besides its input: RMSNorm runs in fp32 (an fp32 copy of a bf16 input, the
    1/rms, the normalised fp32 input, the cast output); LayerNorm saves mean, 1/std and its output."""
    d = model.hidden_size
    if model.is_llama:
        return FP32 + FP32 * d + act * d + (FP32 * d if act != FP32 else 0)
    return 2 * FP32 + act * d


def layer_activation_bytes(model: ModelConfig, shape: LayerShape, act: int, recompute: Optional[str]) -> int:
    """Bytes per token one layer keeps for its backward pass (without full recompute)."""
    d, hd = model.hidden_size, model.head_dim
    q, kv, f = shape.query_heads, shape.kv_heads, shape.columns
    # The residual stream entering each block is saved by its norm (RMSNorm in fp32 keeps its fp32 copy instead).
    residuals = 2 * act * d if (not model.is_llama or act == FP32) else 0
    norms = 2 * _norm_bytes(model, act)
    qkv = act * (q + 2 * kv) * hd  # the QKV projection (its value slots stay referenced by the attention)
    if recompute == "selective":
        attention = qkv + act * q * hd  # the core's input and its output
    else:
        rotated = act * (q + kv) * hd if model.is_llama else 0  # queries and keys after RoPE
        queries = act * q * hd if q > kv else 0  # several query heads per group: copied into one tensor
        attention = qkv + rotated + queries + FP32 * q + act * q * hd  # + log-sum-exp, output (= context)
    mlp = act * (4 * f if model.is_llama else 2 * f)  # SwiGLU: [gate; up], silu(gate), product; GELU: in, out
    return residuals + norms + attention + mlp


def gathered_weight_bytes(model: ModelConfig, shape: LayerShape, weight: int) -> int:
    """One active layer's gathered weight slices (saved by its matmuls for the backward pass) and their int64 row
    and column indices; 0 when dense."""
    d, hd = model.hidden_size, model.head_dim
    total = 0
    if shape.heads_gathered:
        rows, columns = (shape.query_heads + 2 * shape.kv_heads) * hd, shape.query_heads * hd
        total += (rows * d + d * columns) * weight + (rows + columns) * INT64
    if shape.columns_gathered:
        rows = (2 if model.is_llama else 1) * shape.columns
        total += (rows * d + d * shape.columns) * weight + (rows + shape.columns) * INT64
    return total


@dataclass
class ActivationPlan:
    """Per micro-batch activation bytes of one stage of training on the largest pipeline stage."""

    layers: int  # what the transformer layers keep through the forward pass, for the backward pass
    head: int  # what the output layer and the loss keep (on the pipeline's last stage when pipelined)
    layer_transient: int  # a fully recomputed layer's tensors, re-materialised in the backward pass
    head_transient: int  # the loss's largest short-lived addition: a chunk's logits, or its backward's gradients
    in_flight: int  # micro-batches whose layer activations coexist on the first pipeline stage (1F1B)

    @property
    def saved(self) -> int:
        return self.layers + self.head

    @property
    def transient(self) -> int:
        return max(self.layer_transient, self.head_transient)

    @property
    def backward(self) -> int:
        """What the backward pass holds past the loss: the saved activations (all micro-batches in flight) and a
        recomputed layer; the loss's working set is gone."""
        return max(self.layers * self.in_flight, self.saved) + self.layer_transient

    @property
    def peak(self) -> int:
        """Without a pipeline one micro-batch is in flight. With one, the first stage holds `in_flight` micro-batches
        of layer activations and no loss, the last stage one micro-batch and the loss: the larger of the two (the
        model states are those of the largest stage, so the sum bounds either)."""
        last = self.saved + self.transient
        if self.in_flight == 1:
            return last
        return max(self.layers * self.in_flight + self.layer_transient, last)


def loss_activations(model: ModelConfig, run: PlannedRun) -> Tuple[int, int]:
    """(saved, transient) bytes of the output layer and the loss for one micro-batch, besides the final norm's.

    The loss is computed in chunks of tokens (est_megatron.tensor_parallel.output_layer; on a pipeline's last stage
    too, as the engine's loss function): each
    chunk's logits, loss and logit gradient at once, the gradients of the hidden states (tokens x hidden, in the
    activations' type) and of this rank's output weight (fp32) accumulated in the forward pass and kept for the
    backward pass; the working set is a chunk's fp32 logits, their shifted copy and exponent, the previous chunk's
    softmax and its cast (or, with one chunk, the cast gradient and its fp32 copy for the weight gradient), and the
    backward pass scales both saved gradients into new tensors (the weight's then cast)."""
    tokens, act = run.micro_batch_size * run.seq_length, run.weight_bytes
    cast = act if act != FP32 else 0
    vocab = math.ceil(model.vocab_size / run.tp)
    d = model.hidden_size
    chunk_tokens = max(1, CHUNK_LOGITS // vocab)
    chunk = min(tokens, chunk_tokens) * vocab
    previous_chunk = chunk * (FP32 + cast) if tokens > chunk_tokens else 0
    working = 3 * chunk * FP32 + chunk * cast + previous_chunk
    backward = tokens * d * act + vocab * d * (FP32 + cast)
    return tokens * d * act + vocab * d * FP32, max(working, backward)


def activation_plan(model: ModelConfig, run: PlannedRun, counts: SubnetCounts) -> ActivationPlan:
    tokens = run.micro_batch_size * run.seq_length
    act = run.weight_bytes
    shape = layer_shape(model, counts, run.tp)
    active = active_layers(model, run, counts)
    full = (0 if run.recompute != "full" else
            active if run.recompute_num_layers is None else min(run.recompute_num_layers, active))
    stored = layer_activation_bytes(model, shape, act, run.recompute)
    gathered = gathered_weight_bytes(model, shape, run.weight_bytes)
    # A fully recomputed layer keeps its input only: its gathered weights are gathered again in the backward pass.
    # RoPE's cos and sin tables (all positions, fp32) are saved once, unless recompute covers every rotation.
    rotated = model.is_llama and active > full and run.recompute != "selective"
    rope = 2 * model.max_position_embeddings * model.head_dim * FP32 if rotated else 0
    layers = tokens * ((active - full) * stored + full * act * model.hidden_size) + (active - full) * gathered + rope
    loss_saved, loss_transient = loss_activations(model, run)
    head = tokens * _norm_bytes(model, act) + loss_saved  # the final norm, the output layer and the loss
    recomputed = tokens * layer_activation_bytes(model, shape, act, None) + gathered if full else 0
    return ActivationPlan(layers, head, recomputed, loss_transient, min(run.pp, run.micro_batches))


# ---- the plan ----

@dataclass
class MemoryPlan:
    """Per-rank bytes of one run: model states, activations per training stage, and the phase peaks."""

    model: ModelConfig
    run: PlannedRun
    parameters: int  # on the largest pipeline stage, after the tensor-parallel split
    weights: int  # this rank's own weights (its partition under ZeRO-3)
    gathered: int  # ZeRO-3: whole weights gathered from the other ranks while training (dense steps)
    gradients: int
    master: int
    moments: int
    fp32_partitions: int  # the step's fp32 gradient partition
    reduce_buffer: int  # the reduce buckets while gradients are reduced (resident part on the CPU)
    unit_counts: int
    host: int  # offloaded states (host memory)
    init_transient: int
    flatten_transient: int
    overhead: int
    step_transient: int = 0  # the sparse optimizer step's largest temporary (one block, not the whole model)
    hook_transient: int = 0  # ZeRO-3's initialize: each weight gathered whole in turn to register its hook
    device: str = "cuda"  # "cpu": peaks are RSS, with glibc returning freed blocks (tools/bench/memory.py)
    activations: Dict[str, ActivationPlan] = field(default_factory=dict)  # stage name -> activations
    stage_gathered: Dict[str, int] = field(default_factory=dict)  # stage name -> ZeRO-3's gathered weights
    stage_trained: Dict[str, int] = field(default_factory=dict)  # stage name -> parameters its layers run

    @property
    def host_weights(self) -> int:
        """One weight partition, w P / N: what ZeRO-Infinity keeps in host memory."""
        return math.ceil(self.parameters / self.run.dp) * self.run.weight_bytes

    def phases(self, stage: str, first_step: bool = False) -> Dict[str, int]:
        """Bytes at start-up (the model built), during deepspeed.initialize, in forward/backward of `stage`, and in
        the optimizer step. Before the first step the Adam moments do not exist yet (`first_step`); from then on
        they stay."""
        on_device = lambda n: 0 if self.run.offload_optimizer else n  # noqa: E731
        moments = 0 if first_step else on_device(self.moments)
        kept = self.overhead + self.imports + self.weights + self.gradients + on_device(self.master)
        return {
            "start-up": self.overhead + self.weights + self.init_transient,
            "initialize": self.initialize_peak(on_device(self.master), on_device(self.fp32_partitions)),
            "forward/backward": kept + moments + self.stage_gathered.get(stage, self.gathered)
            + self.training_bytes(stage),
            "step": kept + on_device(self.moments) + self.step_transient_bytes(on_device, stage),
        }

    @property
    def imports(self) -> int:
        """What deepspeed.initialize's first use imports on the CPU (SETUP_IMPORTS_GIB); it stays for the run."""
        return int(SETUP_IMPORTS_GIB * GIB) if self.device == "cpu" else 0

    def training_bytes(self, stage: str) -> int:
        """What forward/backward adds to the kept states besides gathered weights: the larger of two moments, not
        their sum. At the loss (the end of the forward pass): the activations and the loss's working set, beside
        the bucket ZeRO-3 keeps (ZeRO-1/2 allocate theirs in the backward pass). At a reduction: ZeRO-3's three
        buckets, ZeRO-1/2's bucket and the flat copy its all-reduce makes, and where a step's gradients need
        several buckets, the backward pass's activations (one bucket is reduced after they are freed). ZeRO-1/2
        hold their gradient partition (in the kept states) from the end of the backward pass to the step only;
        on a GPU ZeRO-2 allocates it whole at its first reduction (the CPU makes resident what is written). Traced
        with RSS around DeepSpeed's methods (docs/memory.md)."""
        acts, zero = self.activations[stage], self.run.zero
        if zero == 0:
            return acts.peak
        trained = self.stage_trained.get(stage, self.parameters)
        one_bucket = trained <= self.run.reduce_bucket
        overlap = 0 if one_bucket else acts.backward
        if zero == 3:
            bucket = self.reduce_buffer // ZERO3_BUCKETS
            filled = min(trained * self.run.weight_bytes, bucket)  # the stage's gradients in it, and their copies
            return bucket + max(acts.peak, (ZERO3_BUCKETS - 1) * filled + overlap)
        early = zero == 2 and not one_bucket and self.device == "cuda"
        reducing = 2 * self.stage_bucket(stage) + overlap + (self.gradients if early else 0)
        return max(acts.peak, reducing) - self.gradients

    def stage_bucket(self, stage: str) -> int:
        """ZeRO-1/2's reduce bucket in a step of `stage`: a GPU allocates all of it, the CPU makes resident what the
        stage's gradients are written to (fewer where it skips layers; ZeRO-3's kept bucket keeps every stage's)."""
        trained = self.stage_trained.get(stage, self.parameters) * self.run.weight_bytes
        return min(self.reduce_buffer, trained) if self.device == "cpu" else self.reduce_buffer

    def step_transient_bytes(self, on_device, stage: str) -> int:
        """What the step adds to the kept states: the fp32 gradient partition (and the sparse step's block
        copies); ZeRO-1/2 first make the gradient partition (kept) beside the reduce bucket, at the end of the
        backward pass; ZeRO-3 keeps its reduce bucket."""
        step = on_device(self.fp32_partitions + self.step_transient)
        if self.run.zero in (1, 2):
            return max(step, self.stage_bucket(stage))
        return step + (self.reduce_buffer // ZERO3_BUCKETS if self.run.zero == 3 else 0)

    def initialize_peak(self, master: int, gradient_partition: int) -> int:
        """deepspeed.initialize: the weights copied into a flat buffer while the originals exist, then the fp32
        master partition and a zero-filled gradient partition (ZeRO-1/2 create an fp32 one to set up the
        optimizer and free it again; ZeRO-3 keeps its flat one, and gathers every weight to register its gradient
        hook). On the CPU add what the first optimizer and DeepSpeed's checks import."""
        if self.run.zero == 3:
            gradient_partition, master = self.gradients, master + self.hook_transient
        return self.overhead + self.weights + max(self.flatten_transient, master + gradient_partition) + self.imports

    def peak(self, stage: str) -> int:
        return max(self.phases(stage).values())

    def table(self, gpu_memory_gb: float) -> str:
        """The printed plan: states, activations per stage, peaks, and whether each fits `gpu_memory_gb`."""
        lay, m = self.run, self.model
        gib = lambda n: f"{n / GIB:10.2f}"  # noqa: E731
        lines = [f"model: {m.num_parameters():,} parameters; this rank holds {self.parameters:,} "
                 f"(TP {lay.tp}, PP {lay.pp}, DP {lay.dp}); ZeRO-{lay.zero}"
                 f"{', optimizer offload' if lay.offload_optimizer else ''}"
                 f"{', parameter offload' if lay.offload_params else ''}; {'bf16' if lay.bf16 else 'fp32'}; "
                 f"micro-batch {lay.micro_batch_size} x {lay.seq_length}, {lay.micro_batches} per step; recompute "
                 f"{lay.recompute or 'none'}"
                 + (f" (first {lay.recompute_num_layers} layers)" if lay.recompute_num_layers else ""),
                 "", f"{'per rank':<34}{'GiB':>10}",
                 f"{'weights' + (' (partition on the host)' if lay.offload_params else ''):<34}"
                 f"{gib(self.host_weights if lay.offload_params else self.weights)}"]
        if lay.zero == 3:
            lines.append(f"{'gathered weights (ZeRO-3)':<34}{gib(self.gathered)}")
        host = " (host)" if lay.offload_optimizer else ""
        lines += [f"{'gradients':<34}{gib(self.gradients)}",
                  f"{'fp32 master weights' + host:<34}{gib(self.master)}",
                  f"{'Adam moments' + host:<34}{gib(self.moments)}",
                  f"{'step fp32 gradients' + host:<34}{gib(self.fp32_partitions)}",
                  f"{'reduce buckets (backward)':<34}{gib(self.reduce_buffer)}"]
        if self.unit_counts:
            lines.append(f"{'SparseAdamW step counts (host)':<34}{gib(self.unit_counts)}")
        if self.host:
            lines.append(f"{'offloaded to host memory':<34}{gib(self.host)}")
        lines.append(f"{'fixed runtime overhead':<34}{gib(self.overhead)}")
        lines += ["", f"{'stage':<16}{'activations':>12}{'x in flight':>12}{'transient':>11}{'peak GiB':>10}"
                  f"{'phase at peak':>18}  fits {gpu_memory_gb:g} GB"]
        for stage, acts in self.activations.items():
            phases = self.phases(stage)
            at = max(phases, key=phases.get)
            fits = "yes" if self.peak(stage) <= gpu_memory_gb * 1e9 else "NO"
            lines.append(f"{stage:<16}{acts.saved / GIB:12.2f}{acts.in_flight:>12}{acts.transient / GIB:11.2f}"
                         f"{self.peak(stage) / GIB:10.2f}{at:>18}  {fits}")
        worst = max(self.peak(s) for s in self.activations)
        lines.append("")
        lines.append(f"peak {worst / GIB:.2f} GiB per rank: " + (
            f"fits a {gpu_memory_gb:g} GB GPU" if worst <= gpu_memory_gb * 1e9 else
            f"does not fit a {gpu_memory_gb:g} GB GPU"))
        return "\n".join(lines)


def stage_counts(model: ModelConfig, schedule: str, subnet: Optional[SubnetConfig] = None) \
        -> List[Tuple[str, SubnetCounts]]:
    """(name, realised counts) of each distinct stage of an EST schedule (a preset name or a spec), dense last."""
    resolved = parse_schedule(schedule).resolve(1000)
    sampler = PlanSampler(model, subnet or SubnetConfig(), resolved, 0)
    out: List[Tuple[str, SubnetCounts]] = []
    seen = set()
    for index, rates in enumerate(resolved.rates):
        key = tuple(rates)
        if key in seen:
            continue
        seen.add(key)
        dense = all(r >= 1.0 for r in rates)
        counts = SubnetCounts.dense(model) if dense else SubnetCounts.from_sampler(sampler, rates)
        out.append(("dense" if dense else f"est stage {index + 1}", counts))
    if not any(name == "dense" for name, _ in out):
        out.append(("dense", SubnetCounts.dense(model)))
    return out


def zero3_hook_transient(model: ModelConfig, run: PlannedRun, device: str) -> int:
    """What ZeRO-3's initialize adds while it registers gradient hooks, gathering each weight whole (every rank,
    full size) and partitioning it again: the all-gather's output and the weight made from it, two copies of the
    largest weight at once (the launcher has glibc return each freed one on the CPU, est_megatron.host_heap), beside
    the reduce bucket allocated just before (on the CPU `torch.empty`, not resident until written)."""
    bucket = run.reduce_bucket if device == "cuda" else 0
    return (2 * largest_weight(model, run.tp) + bucket) * run.weight_bytes


def plan_memory(model: ModelConfig, run: PlannedRun, stages: Optional[List[Tuple[str, SubnetCounts]]] = None,
                overhead_bytes: Optional[int] = None, device: str = "cuda") -> MemoryPlan:
    """The memory plan of `model` under `run` for each (name, counts) stage (default: dense only)."""
    run.check(model)
    n, w = run.dp, run.weight_bytes
    per_stage = stage_parameters(model, run.tp, run.pp)
    p = max(per_stage)
    partition = math.ceil(p / n) if run.zero >= 1 else p
    # A bucket is torch.empty: the GPU allocates all of it, the CPU makes resident what gradients are written to.
    bucket = (run.reduce_bucket if device == "cuda" else min(run.reduce_bucket, p)) * w
    if run.zero == 3:
        weights = 0 if run.offload_params else math.ceil(p / n) * w
        gathered = zero3_gathered(model, run, p, SubnetCounts.dense(model))
    else:
        weights, gathered = p * w, 0
    gradients = partition * w
    master = partition * FP32 if (run.zero >= 1 or run.bf16) else 0
    moments = 2 * partition * FP32
    fp32_partitions = partition * FP32 if run.zero >= 1 else 0
    reduce_buffer = {0: 0, 1: bucket, 2: bucket, 3: ZERO3_BUCKETS * bucket}[run.zero]
    flatten_transient = (math.ceil(p / n) if run.zero == 3 else p) * w if run.zero >= 1 else 0
    unit_counts = trained_units(model, run.tp, run.pp) * INT64 if run.sparse_optimizer else 0
    host = (master + moments + fp32_partitions if run.offload_optimizer else 0) \
        + (math.ceil(p / n) * w if run.offload_params else 0) + unit_counts
    # Seeded initialisation draws each part (a layer, the embedding) whole in fp32 before keeping its slice: the
    # drawn part and what is left of the part before it (or, where TP pads the vocabulary, the padded copy). Measured
    # with tools/bench/memory.py (live memory, 28M to 254M parameters, 1 and 2 ranks): 1.35 to 1.65 parts.
    largest_part = max(model.layer_parameters(), model.vocab_size * model.hidden_size)
    init_transient = int(INIT_PARTS * largest_part * FP32)
    # The sparse step copies a partly trained block's rows out (parameter, gradient, both moments) or runs the masked
    # update's two full-size temporaries, one block at a time: at most four fp32 copies of the largest sampled block.
    largest_block = model.hidden_size * max(model.qkv_rows, model.up_rows) // run.tp
    step_transient = 4 * FP32 * min(largest_block, partition) if run.sparse_optimizer else 0
    hook_transient = zero3_hook_transient(model, run, device) if run.zero == 3 else 0
    if overhead_bytes is None:
        overhead_bytes = int(DEFAULT_OVERHEAD_GIB[device] * GIB)
    plan = MemoryPlan(model, run, p, weights, gathered, gradients, master, moments, fp32_partitions,
                      reduce_buffer, unit_counts, host, init_transient, flatten_transient, overhead_bytes,
                      step_transient, hook_transient, device)
    for name, counts in stages or [("dense", SubnetCounts.dense(model))]:
        plan.activations[name] = activation_plan(model, run, counts)
        plan.stage_gathered[name] = zero3_gathered(model, run, p, counts) if run.zero == 3 else 0
        plan.stage_trained[name] = trained_parameters(model, run, p, counts)
    return plan


def active_layers(model: ModelConfig, run: PlannedRun, counts: SubnetCounts) -> int:
    """Layers a step of `counts` runs on the largest pipeline stage."""
    layers_here = model.num_layers // run.pp
    return max(1, round(counts.layers / run.pp)) if counts.layers < model.num_layers else layers_here


def zero3_retained(zero_optimization: dict) -> int:
    """Elements ZeRO-3 may keep gathered besides the module that runs, from a resolved config's zero_optimization
    section (DeepSpeed's defaults for missing keys): its prefetcher gathers ahead of the forward pass until
    stage3_max_live_parameters are gathered (when stage3_prefetch_bucket_size is not 0) and marks what it passes
    for the backward pass, and a weight used again within stage3_max_reuse_distance is not released."""
    prefetches = zero3_setting(zero_optimization, "stage3_prefetch_bucket_size") > 0
    live = zero3_setting(zero_optimization, "stage3_max_live_parameters") if prefetches else 0
    return max(live, zero3_setting(zero_optimization, "stage3_max_reuse_distance"))


def largest_weight(model: ModelConfig, tp: int = 1) -> int:
    """Elements of the largest weight on one TP rank: the output (or embedding) matrix, QKV or [gate; up]."""
    return max(math.ceil(model.vocab_size / tp), model.qkv_rows // tp, model.up_rows // tp) * model.hidden_size


def trained_parameters(model: ModelConfig, run: PlannedRun, parameters: int, counts: SubnetCounts) -> int:
    """Parameters whose gradients a step of `counts` makes, of this rank's `parameters`: all but the skipped
    layers' (sampled heads and columns come from, and give gradients of, the whole weight)."""
    skipped = model.num_layers // run.pp - active_layers(model, run, counts)
    return parameters - skipped * model.layer_parameters(run.tp)


def zero3_gathered(model: ModelConfig, run: PlannedRun, parameters: int, counts: SubnetCounts) -> int:
    """ZeRO-3's whole weights gathered during a step of `counts` (a skipped layer is never gathered; sampled heads
    and columns come from the whole weight). Once DeepSpeed has recorded the order the modules run in, which
    repeats while every layer runs, it keeps up to `zero3_retained` elements gathered besides the module that runs
    (the largest weight: the output projection, at the start of the backward pass); a stage that samples layers
    runs another order every step, and DeepSpeed releases each module's weights after use. On one rank nothing is
    gathered from others: the running layers only."""
    layer = model.layer_parameters(run.tp)
    runs = trained_parameters(model, run, parameters, counts)
    if run.dp == 1:
        held = ZERO3_ONE_RANK_LAYERS * layer
    else:
        retained = run.zero3_retained
        if retained is None:
            retained = zero3_live_budget(model, run.tp)
        held = largest_weight(model, run.tp) + (retained if counts.layers >= model.num_layers else 0)
    return min(runs, held) * run.weight_bytes
