"""Hugging Face conversion: tiny random transformers models (no downloads), lossless round trips, equal logits."""
import json
import os
import shutil

import pytest
import torch
import transformers

from data_fixtures import load_tool, tokenizer_model  # noqa: F401  (pytest fixture)
from est_megatron.checkpoint.reader import load_est_weights
from est_megatron.checkpoint.standalone import save_est_checkpoint
from est_megatron.config import model_preset
from est_megatron.errors import UsageError
from est_megatron.hf import est_to_hf_state, hf_to_est_state, model_config_from_hf
from est_megatron.model.documents import DocumentResets
from est_megatron.model.transformer import Transformer
from est_megatron.training.packed_documents import PackedDocuments

to_est = load_tool("tools/convert_hf_to_est.py")
to_hf = load_tool("tools/convert_to_hf.py")
IDS = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(0))


def tiny_llama(tie=False, bias=False, vocab=97):
    torch.manual_seed(1)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=tie, rope_theta=5000.0, rms_norm_eps=1e-5,
                                   attention_bias=bias, mlp_bias=bias)
    model = transformers.LlamaForCausalLM(cfg).eval()
    if bias:  # random init leaves biases at zero: make them matter
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".bias"):
                    p.normal_()
    return model


def tiny_gpt2():
    torch.manual_seed(2)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)).eval()


def ours_from(directory):
    model_cfg, state = load_est_weights(directory)
    model = Transformer(model_cfg).eval()
    model.load_state_dict(state, strict=True)
    return model


@pytest.mark.parametrize("make", [tiny_llama, lambda: tiny_llama(tie=True), lambda: tiny_llama(bias=True),
                                  tiny_gpt2], ids=["llama-gqa", "llama-tied", "llama-bias", "gpt2"])
def test_import_export_round_trip_is_lossless_and_logits_match(make, tmp_path):
    hf_model = make()
    hf_model.save_pretrained(tmp_path / "hf")
    assert to_est.main(["--hf-dir", str(tmp_path / "hf"), "--save", str(tmp_path / "ours")]) == 0
    ours = ours_from(tmp_path / "ours")
    with torch.no_grad():
        expected = hf_model(IDS).logits
        torch.testing.assert_close(ours(IDS), expected, atol=1e-5, rtol=1e-5)

    assert to_hf.main(["--load", str(tmp_path / "ours"), "--output", str(tmp_path / "back")]) == 0
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert type(back) is type(hf_model)
    original = hf_model.state_dict()
    for name, tensor in back.state_dict().items():
        if name in original:
            assert torch.equal(tensor, original[name]), name  # bit-exact re-layout
    with torch.no_grad():
        torch.testing.assert_close(back(IDS).logits, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2], ids=["llama-gqa", "gpt2"])
def test_packed_documents_match_hf_on_each_document(make):
    """--reset-position-ids --reset-attention-mask --eod-mask-loss on two packed documents: our logits and loss are
    HF's on each document run alone, with no loss on the prediction made at the EOD."""
    hf_model, eod = make(), 2
    ours = Transformer(model_config_from_hf(hf_model.config.to_dict())).eval()
    ours.load_state_dict(hf_to_est_state(ours.config, hf_model.state_dict()), strict=True)
    gen = torch.Generator().manual_seed(3)
    first = torch.cat([torch.randint(3, 97, (5,), generator=gen), torch.tensor([eod])])
    second = torch.randint(3, 97, (8,), generator=gen)
    tokens = torch.cat([first, second])[None]
    packing = PackedDocuments(eod, DocumentResets(position_ids=True, attention_mask=True), eod_mask_loss=True)
    inputs, labels, documents = packing.split(tokens[:, :-1], tokens[:, 1:])
    with torch.no_grad():
        expected = torch.cat([hf_model(first[None]).logits, hf_model(second[None, :-1]).logits], dim=1)
        torch.testing.assert_close(ours(inputs, documents=documents), expected, atol=1e-5, rtol=1e-5)
        loss = ours(inputs, labels=labels, documents=documents)
    assert int((labels == -100).sum()) == 1  # the prediction at the EOD: the next document's first token
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(expected[0], labels[0]), atol=1e-5,
                               rtol=1e-5)


@pytest.mark.parametrize("preset", ["tiny", "tiny-gpt2"])
def test_ours_to_hf_to_ours_is_bit_exact(preset):
    cfg = model_preset(preset)
    torch.manual_seed(0)
    state = Transformer(cfg).state_dict()
    again = hf_to_est_state(cfg, est_to_hf_state(cfg, state))
    assert again.keys() == state.keys()
    assert all(torch.equal(again[k], state[k]) for k in state)


def test_pytorch_bin_weights_and_tokenizer_travel(tmp_path, tokenizer_model):  # noqa: F811
    hf_model = tiny_llama(vocab=512)  # room for the 400-piece tokenizer
    hf_dir = tmp_path / "hf"
    hf_model.config.save_pretrained(hf_dir)
    torch.save(hf_model.state_dict(), hf_dir / "pytorch_model.bin")
    shutil.copyfile(tokenizer_model, hf_dir / "tokenizer.model")
    assert to_est.main(["--hf-dir", str(hf_dir), "--save", str(tmp_path / "ours")]) == 0
    assert os.path.isfile(tmp_path / "ours" / "tokenizer.model")
    assert to_hf.main(["--load", str(tmp_path / "ours"), "--output", str(tmp_path / "out"), "--dtype", "bf16"]) == 0
    with open(tmp_path / "out" / "tokenizer_config.json") as f:
        assert json.load(f)["add_bos_token"] is False  # nothing says the data had BOS
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    assert tok("the model learns").input_ids == sp.encode("the model learns")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert back.model.embed_tokens.weight.dtype == torch.bfloat16


def test_unsupported_checkpoints_fail_with_one_line(tmp_path):
    cfg = tiny_llama().config.to_dict()
    with pytest.raises(UsageError, match="RoPE type"):
        model_config_from_hf(dict(cfg, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}))
    with pytest.raises(UsageError, match="model_type"):
        model_config_from_hf(dict(cfg, model_type="bert"))
    with pytest.raises(SystemExit):
        to_est.main(["--hf-dir", str(tmp_path), "--save", str(tmp_path / "x")])  # no config.json
    gpt2 = model_preset("tiny-gpt2", tie_embeddings=False)
    save_est_checkpoint(str(tmp_path / "untied"), gpt2, Transformer(gpt2).state_dict())
    with pytest.raises(SystemExit):  # GPT2LMHeadModel always ties its head
        to_hf.main(["--load", str(tmp_path / "untied"), "--output", str(tmp_path / "y")])
