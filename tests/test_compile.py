"""--compile: compiled transformer layers give the eager losses and gradients for every method, with activation
recompute and packed documents; a stage compiles once; the recompile bound falls back to eager with one warning;
unverified layouts are refused; and the training entry point with --compile matches an eager run.

Compiled with aot_eager (the graphs torch.compile traces, without inductor's code generation, which takes a
minute per graph on a CPU): what these tests check is the tracing, the guards and the recompiles.
"""
import pytest
import torch

from dist_utils import launch, read_metrics, tiny_shards, train_flags, train_losses  # noqa: F401 (fixture)
from est_megatron.config import model_preset
from est_megatron.errors import UsageError
from est_megatron.model.documents import DocumentResets
from est_megatron.model.recompute import Recompute
from est_megatron.model.regional_compile import CompileWatch, compile_layers
from est_megatron.model.transformer import Transformer
from est_megatron.training.arguments import build_parser
from est_megatron.training.compile_flag import check_compile_layout
from est_megatron.training.methods import MethodContext, build_method, method_options, subnet_config

STEPS = 4
METHOD_FLAGS = {
    "dense": [],
    "est": ["--est-schedule", "0.5,1:0.5,0.5,0.5/0.75,0.5,1", "--est-rescale"],
    "raptr": ["--raptr-schedule", "3,4:0.5,1", "--raptr-scale-residual", "--est-layer-strata", "1"],
    "sat": ["--sat-decay-start", "0", "--sat-ladders", "2", "--sat-rescale"],
}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def method_of(name, cfg):
    args = build_parser().parse_args(["--method", name, "--train-steps", str(STEPS), "--seq-length", "16"]
                                     + METHOD_FLAGS[name])
    return build_method(name, MethodContext(cfg, subnet_config(args, cfg), STEPS, 5, method_options(args)))


def batch(cfg, step):
    gen = torch.Generator().manual_seed(step)
    tokens = torch.randint(0, cfg.vocab_size, (2, 17), generator=gen)
    return tokens[:, :-1], tokens[:, 1:]


def run_pair(method_name, recompute=Recompute(), resets=None, num_stages=None):
    """Per step, then for a validation forward of the dense model: (stage, eager and compiled losses, largest
    gradient gap, the compiled layer's recompiles so far)."""
    cfg = model_preset("tiny")
    eager, compiled = Transformer(cfg, seed=3), Transformer(cfg, seed=3)
    recompute.apply(compiled)
    method = method_of(method_name, cfg)
    limit = compile_layers(compiled, method.num_stages if num_stages is None else num_stages, "aot_eager")
    warnings = []
    watch = CompileWatch(limit, warnings.append)
    rows = []
    for step in range(STEPS):
        inputs, labels = batch(cfg, step)
        method.prepare(step, eager, inputs)
        plan = method.plan(step)
        documents = [None if resets is None else resets.documents((inputs == 7).long().cumsum(1))
                     for _ in range(2)]
        losses = []
        for model, docs in zip((eager, compiled), documents):
            model.zero_grad(set_to_none=True)
            loss = model(inputs, plan, labels, docs)
            loss.backward()
            losses.append(loss.item())
        gap = max((a.grad - b.grad).abs().max().item() for a, b in zip(eager.parameters(), compiled.parameters())
                  if a.grad is not None)
        rows.append((None if plan is None else plan.stage, losses, gap, watch.recompiles))
    with torch.no_grad():
        rows.append(("validation", [model(inputs, None, labels).item() for model in (eager, compiled)], 0.0,
                     watch.recompiles))
    watch.close()  # a later test's watch must see torch's warning
    return rows, watch, warnings


def assert_matches_eager(rows):
    for _, (eager_loss, compiled_loss), gap, _ in rows:
        assert compiled_loss == pytest.approx(eager_loss, rel=1e-6)
        assert gap < 1e-6


def assert_one_compile_per_stage(rows):
    for (stage, *_, before), (next_stage, *_, after) in zip(rows, rows[1:]):
        if next_stage == stage:
            assert after == before, f"recompiled within stage {stage}"


@pytest.mark.parametrize("method", sorted(METHOD_FLAGS))
def test_compiled_layers_match_eager_and_compile_once_per_stage(method):
    rows, watch, warnings = run_pair(method)
    assert_matches_eager(rows)
    assert_one_compile_per_stage(rows)
    assert len({row[0] for row in rows[:-1]}) == (1 if method == "dense" else 2)
    assert not warnings and not watch.limit_hit and watch.graphs >= 1


@pytest.mark.parametrize("recompute", [Recompute("full"), Recompute("selective")], ids=["full", "selective"])
def test_compiled_layers_with_activation_recompute(recompute):
    rows, _, _ = run_pair("est", recompute)
    assert_matches_eager(rows)
    assert_one_compile_per_stage(rows)


def test_compiled_layers_with_packed_documents():
    rows, watch, _ = run_pair("est", resets=DocumentResets(position_ids=True, attention_mask=True))
    assert_matches_eager(rows)
    assert_one_compile_per_stage(rows)
    assert watch.graphs == watch.recompiles + 1 == 3  # two stages and validation, no graph break on the documents


def test_recompile_bound_runs_eagerly_with_one_warning():
    # a bound of 2 graphs (as for zero stages), two stages' shapes and the validation forward: the last runs eagerly
    rows, watch, warnings = run_pair("est", num_stages=0)
    assert_matches_eager(rows)
    assert watch.limit_hit and len(warnings) == 1
    assert "--compile" in warnings[0] and "eagerly" in warnings[0]
    assert watch.recompiles == 1  # two graphs, then eager


@pytest.mark.parametrize("flags,zero_stage,flash,named", [
    (["--tensor-model-parallel-size", "2"], 1, False, "--tensor-model-parallel-size 2"),
    (["--pipeline-model-parallel-size", "2"], 1, False, "--pipeline-model-parallel-size 2"),
    ([], 3, False, "ZeRO-3"),
    (["--reset-attention-mask"], 1, True, "--reset-attention-mask on flash-attn"),
])
def test_unverified_layouts_are_refused(flags, zero_stage, flash, named):
    args = build_parser().parse_args(["--compile"] + flags)
    with pytest.raises(UsageError, match="--compile") as err:
        check_compile_layout(args, zero_stage, flash)
    assert named in str(err.value)
    check_compile_layout(build_parser().parse_args(flags), zero_stage, flash)  # without --compile: no refusal


def test_entry_point_compiled_run_matches_eager(tiny_shards, tmp_path):  # noqa: F811
    """Two processes (data parallel, ZeRO-2), EST over two stages, packed documents: --compile's losses are the
    eager run's; the logged recompiles grow only at a stage's first step."""
    flags = {"--reset-position-ids": True, "--reset-attention-mask": True, "--eod-mask-loss": True}
    eager = launch(train_flags(tiny_shards, tmp_path / "eager", **flags), nproc=2)
    assert eager.returncode == 0, eager.stderr[-3000:]
    compiled = launch(train_flags(tiny_shards, tmp_path / "compiled", **flags, **{
        "--compile": True, "--compile-backend": "aot_eager"}), nproc=2)
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    assert "compile: each transformer layer under torch.compile" in compiled.stdout
    records = read_metrics(tmp_path / "compiled" / "logs")
    assert train_losses(records) == pytest.approx(train_losses(read_metrics(tmp_path / "eager" / "logs")),
                                                  rel=1e-5)
    steps = [r for r in records if "loss" in r and "event" not in r]
    assert [r["stage"] for r in steps] == [1, 1, 2, 2]
    assert [r["recompiles"] for r in steps] == [0, 0, 1, 1]
    assert not any(r["compile_eager_fallback"] for r in steps)
