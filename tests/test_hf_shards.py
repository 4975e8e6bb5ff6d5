"""Sharded safetensors: exports past --max-shard-size are several files with an index that transformers loads, and
our own sharded checkpoints read back exactly."""
import json
import os

import pytest
import torch
import transformers

from data_fixtures import load_tool
from est_megatron.checkpoint.reader import load_est_weights
from est_megatron.checkpoint.safetensors_files import parse_shard_size
from est_megatron.checkpoint.standalone import save_est_checkpoint
from est_megatron.config import model_preset
from est_megatron.errors import UsageError
from est_megatron.model.transformer import Transformer

to_hf = load_tool("tools/convert_to_hf.py")
INDEX = "model.safetensors.index.json"


def weight_files(directory):
    return sorted(name for name in os.listdir(directory) if name.endswith(".safetensors"))


@pytest.mark.parametrize("preset", ["tiny", "tiny-gpt2"])
def test_sharded_export_loads_in_transformers_with_the_same_logits(preset, tmp_path, capsys):
    cfg = model_preset(preset)
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    save_est_checkpoint(str(tmp_path / "ours"), cfg, model.state_dict())
    assert weight_files(tmp_path / "ours") == ["model.safetensors"]  # small: one file, as before
    assert to_hf.main(["--load", str(tmp_path / "ours"), "--output", str(tmp_path / "hf"),
                       "--max-shard-size", "20KB"]) == 0
    assert "weight files" in capsys.readouterr().out
    shards = weight_files(tmp_path / "hf")
    assert len(shards) >= 3 and "model.safetensors" not in shards
    with open(tmp_path / "hf" / INDEX) as f:
        weight_map = json.load(f)["weight_map"]
    assert sorted(set(weight_map.values())) == shards
    for shard in shards:  # within the limit (plus its header), unless it holds one tensor larger than that
        held = sum(1 for name in weight_map.values() if name == shard)
        assert held == 1 or os.path.getsize(tmp_path / "hf" / shard) < 20_000 + 4096, shard
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), atol=1e-5, rtol=1e-5)
    # Exporting again, unsharded, into the same folder leaves no stale shard or index behind.
    assert to_hf.main(["--load", str(tmp_path / "ours"), "--output", str(tmp_path / "hf")]) == 0
    assert weight_files(tmp_path / "hf") == ["model.safetensors"] and not os.path.exists(tmp_path / "hf" / INDEX)


def test_sharded_est_checkpoint_reads_back_exactly(tmp_path):
    cfg = model_preset("tiny")
    torch.manual_seed(0)
    state = Transformer(cfg).state_dict()
    save_est_checkpoint(str(tmp_path / "ours"), cfg, state, max_shard_size="30KB")
    assert len(weight_files(tmp_path / "ours")) >= 3 and os.path.isfile(tmp_path / "ours" / INDEX)
    again_cfg, again = load_est_weights(str(tmp_path / "ours"))
    assert again_cfg == cfg and again.keys() == state.keys()
    assert all(torch.equal(again[k], state[k]) for k in state)
    os.remove(tmp_path / "ours" / weight_files(tmp_path / "ours")[1])
    with pytest.raises(UsageError, match="names model-00002-of-.*which is missing"):
        load_est_weights(str(tmp_path / "ours"))


def test_shard_sizes():
    assert parse_shard_size("5GB") == 5 * 10 ** 9 and parse_shard_size("2GiB") == 2 ** 31
    assert parse_shard_size("500MB") == 5 * 10 ** 8 and parse_shard_size("1234") == 1234
    for bad in ("5 parsecs", "-1GB", "GB", "0"):
        with pytest.raises(UsageError, match="--max-shard-size .* is not a size"):
            parse_shard_size(bad)
    with pytest.raises(SystemExit):
        to_hf.main(["--load", "nowhere", "--output", "x", "--max-shard-size", "lots"])
