"""Checkpoints of tensor- and pipeline-parallel runs: merged to single-process weights, exported to Hugging Face,
and resumed exactly under TP=2.

The real loop (launch/pretrain_tinyllama.py) trains the tiny Llama with a vocabulary of 301 (odd, so TP=2 pads
it to 302 and the merge must drop the padded row), seq 16, 3 scheduled steps stopped after 2 by --exit-interval.
"""
import os

import pytest
import torch
import transformers

from data_fixtures import load_tool
from dist_utils import launch, read_metrics, tiny_shards, train_flags, train_losses  # noqa: F401
from est_megatron.config import model_preset
from est_megatron.checkpoint.reader import load_est_weights
from est_megatron.model.transformer import Transformer
from est_megatron.tensor_parallel.sharding import merge_tensor_parallel, shard

to_hf = load_tool("tools/convert_to_hf.py")


def run(shards, workdir, tp=1, pp=1, **extra):
    flags = train_flags(shards, workdir, zero=1, steps=3, **{
        "--seq-length": "16", "--make-vocab-size-divisible-by": "301", "--tensor-model-parallel-size": str(tp),
        "--pipeline-model-parallel-size": str(pp), **extra})
    result = launch(flags, nproc=tp * pp)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "terminate called" not in output
    return output


def interrupted(shards, workdir, tp, pp):
    """2 of 3 steps, then save and stop: the checkpoint is workdir/ckpt."""
    run(shards, workdir, tp, pp, **{"--save": str(workdir / "ckpt"), "--exit-interval": "2"})
    return workdir


@pytest.fixture(scope="module")
def tp2_checkpoint(tiny_shards, tmp_path_factory):  # noqa: F811
    return interrupted(tiny_shards, tmp_path_factory.mktemp("tp2"), 2, 1)


@pytest.fixture(scope="module")
def pp2_checkpoint(tiny_shards, tmp_path_factory):  # noqa: F811
    return interrupted(tiny_shards, tmp_path_factory.mktemp("pp2"), 1, 2)


@pytest.mark.parametrize("preset", ["tiny", "tiny-gpt2"])
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_unshard_inverts_shard(preset, tp):
    cfg = model_preset(preset, vocab_size=301)
    torch.manual_seed(0)
    full = {k: torch.randn_like(v) for k, v in Transformer(cfg).state_dict().items()}
    parts = [{k: shard(k, v, cfg, rank, tp) for k, v in full.items()} for rank in range(tp)]
    if tp > 1:
        assert parts[0]["embed.weight"].shape[0] == -(-301 // tp)  # padded vocabulary shards
    merged = merge_tensor_parallel(parts, cfg)
    assert merged.keys() == full.keys()
    assert all(torch.equal(merged[k], full[k]) for k in full)


def test_tp_and_pp_checkpoints_merge_and_export_to_hf(tp2_checkpoint, pp2_checkpoint, tmp_path):
    names = os.listdir(tp2_checkpoint / "ckpt" / "step_000002")
    assert {"mp_rank_00_model_states.pt", "mp_rank_01_model_states.pt"} <= set(names)
    assert any(n.startswith("layer_") for n in os.listdir(pp2_checkpoint / "ckpt" / "step_000002"))

    cfg, tp_state = load_est_weights(str(tp2_checkpoint / "ckpt"))
    _, pp_state = load_est_weights(str(pp2_checkpoint / "ckpt"))
    assert cfg.vocab_size == 301 and tp_state["embed.weight"].shape == (301, cfg.hidden_size)
    # Both layouts train the single-process model (losses agree to ~1e-5), so their merged weights agree closely;
    # a wrong layout in the merge would differ by the size of the weights themselves.
    for name, tensor in tp_state.items():
        torch.testing.assert_close(tensor, pp_state[name], atol=5e-5, rtol=0, msg=name)

    ids = torch.randint(0, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    for ckpt, state in ((tp2_checkpoint, tp_state), (pp2_checkpoint, pp_state)):
        ours = Transformer(cfg).eval()
        ours.load_state_dict(state, strict=True)
        assert to_hf.main(["--load", str(ckpt / "ckpt"), "--output", str(tmp_path / ckpt.name)]) == 0
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / ckpt.name).eval()
        with torch.no_grad():
            torch.testing.assert_close(hf(ids).logits, ours(ids), atol=1e-5, rtol=1e-5)


def test_tp2_resume_matches_uninterrupted(tp2_checkpoint, tiny_shards, tmp_path):  # noqa: F811
    output = run(tiny_shards, tp2_checkpoint, 2, 1, **{"--load": str(tp2_checkpoint / "ckpt")})
    assert "resumed from" in output
    resumed = train_losses(read_metrics(tp2_checkpoint / "logs"))
    run(tiny_shards, tmp_path, 2, 1)
    straight = train_losses(read_metrics(tmp_path / "logs"))
    assert len(resumed) == 3
    assert resumed == pytest.approx(straight, abs=1e-6, rel=0)
