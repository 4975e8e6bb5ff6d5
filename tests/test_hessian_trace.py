"""Hutchinson's Hessian-trace estimate against exact traces from the full Hessian: a quadratic with a known
Hessian, and a small Llama (double backward through its attention on the math path), per parameter group; and
tools/hessian_trace.py on a converted checkpoint."""
import json
import math

import pytest
import torch
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from data_fixtures import load_tool
from dist_utils import tiny_shards  # noqa: F401
from est_megatron.checkpoint.standalone import save_est_checkpoint
from est_megatron.config import ModelConfig
from est_megatron.evaluation.hessian import hutchinson_trace, model_groups, parameter_kind, whole_logits_loss
from est_megatron.model.transformer import Transformer


class Quadratic(torch.nn.Module):
    """0.5 θᵀAθ + bᵀθ over θ = [x; y]: its Hessian is A whatever the batch."""

    def __init__(self, A):
        super().__init__()
        self.A = A
        self.x = torch.nn.Parameter(torch.randn(A.shape[0] // 3, dtype=torch.float64))
        self.y = torch.nn.Parameter(torch.randn(A.shape[0] - A.shape[0] // 3, dtype=torch.float64))

    def forward(self, b):
        theta = torch.cat([self.x, self.y])
        return 0.5 * theta @ self.A @ theta + b @ theta


def _spd(n, seed):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=torch.float64)
    return m @ m.T / n + torch.diag(torch.rand(n, generator=g, dtype=torch.float64))


def test_quadratic_trace_within_stated_error():
    A = _spd(30, 0)
    model = Quadratic(A)
    params = dict(model.named_parameters())
    groups = {"total": ["x", "y"], "x": ["x"], "y": ["y"]}
    batches = [torch.randn(30, dtype=torch.float64) for _ in range(3)]
    est = hutchinson_trace(model, params, batches, probes=200, groups=groups, seed=1, progress=False)
    exact = {"total": A.trace(), "x": A[:10, :10].trace(), "y": A[10:, 10:].trace()}
    for g in groups:
        assert 0 < est.stderr[g] < 0.1 * float(exact[g])  # informative, not vacuous
        assert abs(est.trace[g] - float(exact[g])) < 4 * est.stderr[g], g
    # a diagonal Hessian: Rademacher probes give vᵀDv = tr(D) exactly, with no spread (Gaussian probes would not)
    D = torch.diag(torch.arange(1.0, 31.0, dtype=torch.float64))
    diagonal = Quadratic(D)
    est = hutchinson_trace(diagonal, dict(diagonal.named_parameters()), batches[:1], probes=3,
                           groups={"total": ["x", "y"]}, progress=False)
    assert est.trace["total"] == pytest.approx(465.0, abs=1e-9) and est.stderr["total"] < 1e-9


TINY = ModelConfig(flavour="llama", num_layers=2, hidden_size=8, num_attention_heads=2, num_query_groups=1,
                   ffn_hidden_size=8, vocab_size=16, max_position_embeddings=16).validate()


def _exact_diagonal(model, batch):
    """The full Hessian's diagonal, from torch.autograd.functional.hessian on the flattened parameters."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])

    def loss(theta):
        tensors, start = {}, 0
        for name, shape in zip(names, shapes):
            tensors[name] = theta[start:start + shape.numel()].view(shape)
            start += shape.numel()
        return whole_logits_loss(functional_call(model, tensors, (batch[:, :-1],)), batch[:, 1:])

    with sdpa_kernel(SDPBackend.MATH):
        hessian = torch.autograd.functional.hessian(loss, flat, vectorize=True)
    diagonal, start, out = hessian.diagonal(), 0, {}
    for name, shape in zip(names, shapes):
        out[name] = float(diagonal[start:start + shape.numel()].sum())
        start += shape.numel()
    return out


def test_small_llama_trace_within_stated_error():
    torch.manual_seed(0)
    model = Transformer(TINY).double().eval()
    g = torch.Generator().manual_seed(3)
    batches = [torch.randint(0, TINY.vocab_size, (2, 9), generator=g) for _ in range(2)]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(30):  # near a minimum, as a trained checkpoint is: a trace the probes can pin down
        for batch in batches:
            optimizer.zero_grad()
            model(batch[:, :-1], labels=batch[:, 1:]).backward()
            optimizer.step()
    params = dict(model.named_parameters())
    groups = model_groups(list(params))
    assert {"total", "attention", "mlp", "embeddings", "norms", "layer 0", "layer 1 attention"} <= set(groups)
    assert sorted(sum((groups[k] for k in ("attention", "mlp", "embeddings", "norms")), [])) == sorted(params)

    def loss(batch):
        return whole_logits_loss(model(batch[:, :-1]), batch[:, 1:])

    est = hutchinson_trace(loss, params, batches, probes=64, groups=groups, seed=5, progress=False)
    per_param = [_exact_diagonal(model, b) for b in batches]
    exact = {grp: sum(sum(d[n] for n in names) for d in per_param) / len(batches) for grp, names in groups.items()}
    assert parameter_kind("layers.1.attn.qkv.weight") == "attention" and parameter_kind("lm_head.weight") == \
        "embeddings"
    assert est.stderr["total"] < 0.15 * abs(exact["total"])
    for grp in ("total", "attention", "mlp", "embeddings", "layer 0", "layer 1"):
        assert abs(est.trace[grp] - exact[grp]) < 4 * est.stderr[grp], (grp, est.trace[grp], exact[grp])


def test_tool_on_a_checkpoint(tiny_shards, tmp_path, capsys):  # noqa: F811
    import sentencepiece as spm
    vocab = spm.SentencePieceProcessor(model_file=tiny_shards["tokenizer"]).vocab_size()
    cfg = ModelConfig(**{**TINY.__dict__, "vocab_size": vocab, "max_position_embeddings": 32}).validate()
    torch.manual_seed(0)
    save_est_checkpoint(str(tmp_path / "ckpt"), cfg, Transformer(cfg).state_dict())
    tool = load_tool("tools/hessian_trace.py")
    out = tmp_path / "h.json"
    assert tool.main(["--load", str(tmp_path / "ckpt"), "--data-path", tiny_shards["prefix"], "--seq-length", "16",
                      "--batches", "2", "--probes", "3", "--micro-batch-size", "2", "--output", str(out),
                      "--data-cache-dir", str(tmp_path / "cache"), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    groups = report["groups"]
    assert report["batches"] == 2 and report["probes_per_batch"] == 3 and len(groups["total"]["per_batch"]) == 2
    kinds = sum(groups[k]["trace"] for k in ("attention", "mlp", "embeddings", "norms"))
    assert kinds == pytest.approx(groups["total"]["trace"], rel=1e-9)  # the kinds partition the model
    assert all(math.isfinite(groups[g]["stderr"]) for g in groups)
    printed = capsys.readouterr().out
    assert "total" in printed and "layer 1" in printed
    with pytest.raises(SystemExit):
        tool.main(["--load", str(tmp_path / "ckpt"), "--data-path", tiny_shards["prefix"], "--seq-length", "16",
                   "--probes", "1", "--no-progress", "--data-cache-dir", str(tmp_path / "cache")])
    assert "--probes must be at least 2" in capsys.readouterr().err
