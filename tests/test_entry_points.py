"""launch/continual_pretrain.py and launch/finetune.py run 2 steps on CPU from an imported HF checkpoint."""
import json
import os
import random
import subprocess
import sys

import pytest
import torch
import transformers

from data_fixtures import load_tool, make_text, tokenizer_model, write_jsonl  # noqa: F401
from est_megatron.checkpoint.reader import load_est_weights
from est_megatron.model.transformer import Transformer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ["--train-steps", "2", "--micro-batch-size", "2", "--global-batch-size", "4", "--seq-length", "32",
          "--eval-iters", "1", "--eval-interval", "2", "--log-interval", "1", "--no-progress", "--lr-warmup-steps", "0",
          "--ds_config", os.path.join(REPO, "ds_configs", "zero1.json")]


def run(script, argv):
    """A fresh process per run, as `deepspeed`/`python` would start it (DeepSpeed keeps global state)."""
    done = subprocess.run([sys.executable, os.path.join(REPO, "launch", script)] + argv, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def imported(tmp_path_factory, tokenizer_model):  # noqa: F811
    """A tiny random Llama built by transformers (GQA), saved with our tokenizer and converted to ours."""
    root = tmp_path_factory.mktemp("entry")
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64))
    hf.save_pretrained(root / "hf")
    with open(tokenizer_model, "rb") as src, open(root / "hf" / "tokenizer.model", "wb") as dst:
        dst.write(src.read())
    load_tool("tools/convert_hf_to_est.py").main(["--hf-dir", str(root / "hf"), "--save", str(root / "init")])
    rng = random.Random(0)
    write_jsonl(str(root / "raw" / "docs.jsonl"), [{"text": make_text(rng, 200)} for _ in range(60)])
    load_tool("tools/preprocess_data.py").main(["--input", str(root / "raw"), "--format", "jsonl",
                                                "--tokenizer-model", tokenizer_model,
                                                "--output-prefix", str(root / "shards" / "docs"), "--no-progress"])
    return root


def metrics(log_dir):
    with open(os.path.join(log_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("method", ["sat", "raptr"])
def test_continual_pretrain_two_steps_then_export(imported, tmp_path, method):
    argv = COMMON + ["--init-from", str(imported / "init"), "--method", method, "--data-path",
                     str(imported / "shards" / "docs"), "--save", str(tmp_path / "ckpt"), "--log-dir",
                     str(tmp_path / "logs"), "--sat-decay-start", "1", "--raptr-schedule", "2,4:0.5,1"]
    out = run("continual_pretrain.py", argv)
    assert f"method {method}" in out and "initialised from" in out
    records = [r for r in metrics(tmp_path / "logs") if "loss" in r]
    assert [r["step"] for r in records] == [1, 2]
    if method == "sat":  # r = 0.5 throughout 2 steps (t_d = step 1, first ladder at 1: r = 0.375 -> 0.5 heads)
        assert records[0]["p_mlp"] == 0.5 and records[1]["p_mlp"] < 1.0
    else:
        assert records[0]["p_layers"] == 0.5 and records[1]["p_layers"] == 1.0
    # the trained checkpoint exports to Hugging Face with equal logits
    load_tool("tools/convert_to_hf.py").main(["--load", str(tmp_path / "ckpt"), "--output", str(tmp_path / "hf")])
    assert os.path.isfile(tmp_path / "hf" / "tokenizer.model")
    cfg, state = load_est_weights(str(tmp_path / "ckpt"))
    ours = Transformer(cfg).eval()
    ours.load_state_dict(state)
    initial = load_est_weights(str(imported / "init"))[1]
    assert not torch.equal(state["layers.0.attn.qkv.weight"], initial["layers.0.attn.qkv.weight"])  # trained
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, 400, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), atol=1e-5, rtol=1e-5)


def test_finetune_two_steps_on_chat_and_prompt_records(imported, tmp_path):
    rng = random.Random(1)
    records = [{"prompt": make_text(rng, 8), "response": make_text(rng, 6)} for _ in range(30)]
    records += [{"messages": [{"role": "user", "content": make_text(rng, 5)},
                              {"role": "assistant", "content": make_text(rng, 5)}]} for _ in range(30)]
    write_jsonl(str(tmp_path / "sft.jsonl"), records)
    argv = COMMON + ["--init-from", str(imported / "init"), "--data-path", str(tmp_path / "sft.jsonl"),
                     "--method", "sat", "--log-dir", str(tmp_path / "logs"), "--sft-packing", "pack",
                     "--sft-valid-fraction", "0.1"]
    run("finetune.py", argv)
    rows = metrics(tmp_path / "logs")
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert any("val_loss" in r for r in rows)


def test_entry_points_need_an_initial_checkpoint():
    continual = load_tool("launch/continual_pretrain.py")
    with pytest.raises(SystemExit) as exit_info:
        continual.main(["--data-path", "x", "--tokenizer-model", "y"])
    assert exit_info.value.code == 2
