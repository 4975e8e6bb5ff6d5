"""Trace of the loss Hessian by Hutchinson's estimator: tr(H) = E[vᵀHv] for v with independent Rademacher (±1)
entries, the flatness measure of the paper's Table 5.

For each batch the gradient is taken once with its graph kept (create_graph), then each probe v costs one more
backward pass: autograd.grad(grad, params, grad_outputs=v) is the Hessian-vector product Hv (double backward), and
vᵀHv is summed per parameter, so every parameter group (the whole model, attention, MLP, embeddings, each layer)
gets its own estimate from the same probes: E[v_Gᵀ(Hv)_G] = tr(H_GG) because the probes' entries are independent.
Memory is a training step's with its graph twice over, one probe at a time; the Hessian itself is never formed.

The standard error is that of the probes given the batches: the estimate targets the trace of the Hessian of the
loss over exactly these batches, sqrt(sum_b var_b / K) / N for N batches of K probes with var_b the variance of
vᵀHv over batch b's probes (so at least two probes per batch). `stderr_data` adds the spread between batches
(sd of the per-batch means / sqrt(N)): the uncertainty about the trace over the data distribution.

PyTorch's fused attention kernels (flash / memory-efficient, on CPU and GPU) have no double backward, so Hessian-
vector products run attention on scaled_dot_product_attention's math path, the same function computed unfused.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm import tqdm

from est_megatron.errors import UsageError

_LAYER = re.compile(r"^layers\.(\d+)\.(attn|mlp)?")


def parameter_kind(name: str) -> str:
    """embeddings (input, position and output embeddings), attention, mlp or norms."""
    match = _LAYER.match(name)
    if match and match.group(2):
        return "attention" if match.group(2) == "attn" else "mlp"
    if name.startswith(("embed.", "pos_embed.", "lm_head.")):
        return "embeddings"
    return "norms"


def model_groups(names: Sequence[str]) -> Dict[str, List[str]]:
    """Group -> parameter names: `total`, each kind (the kinds partition the model, so they sum to the total),
    `layer i` and `layer i attention` / `layer i mlp`."""
    groups: Dict[str, List[str]] = {"total": list(names)}
    for name in names:
        groups.setdefault(parameter_kind(name), []).append(name)
    for name in names:
        match = _LAYER.match(name)
        if match:
            groups.setdefault(f"layer {match.group(1)}", []).append(name)
            if match.group(2):
                groups.setdefault(f"layer {match.group(1)} {parameter_kind(name)}", []).append(name)
    return groups


@dataclass
class TraceEstimate:
    """Per group: trace estimate, its standard error over the probes, and with the batch-to-batch spread."""

    trace: Dict[str, float]
    stderr: Dict[str, float]
    stderr_data: Dict[str, float]
    per_batch: Dict[str, List[float]]
    batches: int
    probes: int
    num_parameters: Dict[str, int]

    def to_json(self) -> dict:
        return {"batches": self.batches, "probes_per_batch": self.probes,
                "groups": {g: {"trace": self.trace[g], "stderr": self.stderr[g], "stderr_data": self.stderr_data[g],
                               "parameters": self.num_parameters[g], "per_batch": self.per_batch[g]}
                           for g in self.trace}}


def whole_logits_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss from whole logits: twice differentiable, as Hessian-vector products need (the model's
    own loss, given labels, is computed in chunks with a backward that is differentiable once only)."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.reshape(-1), ignore_index=-100)


def hutchinson_trace(loss_fn: Callable, params: Dict[str, torch.nn.Parameter], batches: Iterable, probes: int,
                     groups: Dict[str, List[str]], seed: int = 0, progress: bool = True,
                     num_batches: Optional[int] = None) -> TraceEstimate:
    """Hutchinson's trace estimate of the Hessian of loss_fn(batch) in `params`, per group, over `batches`."""
    if probes < 2:
        raise UsageError(f"--probes must be at least 2 (the standard error needs two per batch), got {probes}")
    names = list(params)
    tensors = [params[n] for n in names]
    index = {n: i for i, n in enumerate(names)}
    generator = torch.Generator(device=tensors[0].device).manual_seed(seed)  # probes drawn where they are used
    samples = []  # per batch: (probes, parameters) float64 of v_pᵀ(Hv)_p
    bar = tqdm(total=None if num_batches is None else num_batches * probes, desc="Hessian-vector products",
               unit="probe", disable=not progress)
    for batch in batches:
        with sdpa_kernel(SDPBackend.MATH):
            grads = torch.autograd.grad(loss_fn(batch), tensors, create_graph=True)
            rows = []
            for k in range(probes):
                vs = [torch.randint(0, 2, t.shape, generator=generator, device=t.device, dtype=t.dtype) * 2 - 1
                      for t in tensors]
                hvs = torch.autograd.grad(grads, tensors, grad_outputs=vs, retain_graph=k < probes - 1,
                                          allow_unused=True)
                rows.append(torch.stack([(v * hv).sum().double() if hv is not None else
                                         torch.zeros((), dtype=torch.float64, device=v.device)
                                         for v, hv in zip(vs, hvs)]).cpu())
                bar.update(1)
        del grads
        samples.append(torch.stack(rows))
    bar.close()
    if not samples:
        raise UsageError("no batches to estimate the Hessian trace on; give more data or a smaller --micro-batch-size")
    data = torch.stack(samples)  # (batches, probes, parameters)
    n = data.shape[0]
    result = TraceEstimate({}, {}, {}, {}, n, probes, {})
    for group, members in groups.items():
        values = data[:, :, [index[m] for m in members]].sum(dim=2)  # (batches, probes)
        means = values.mean(dim=1)
        result.trace[group] = float(means.mean())
        result.stderr[group] = math.sqrt(float(values.var(dim=1).sum()) / probes) / n
        result.stderr_data[group] = float(means.std()) / math.sqrt(n) if n > 1 else float("nan")
        result.per_batch[group] = means.tolist()
        result.num_parameters[group] = sum(params[m].numel() for m in members)
    return result


def format_table(estimate: TraceEstimate, groups: Sequence[str]) -> str:
    rows = [("group", "parameters", "trace", "stderr", "stderr (data)")]
    for g in groups:
        data = estimate.stderr_data[g]
        rows.append((g, f"{estimate.num_parameters[g]:,}", f"{estimate.trace[g]:.6g}", f"{estimate.stderr[g]:.3g}",
                     "-" if math.isnan(data) else f"{data:.3g}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
