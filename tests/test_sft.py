"""SFT data: prompt tokens are masked from the loss, response tokens are trained, packing and padding."""
import json
import types

import numpy as np
import pytest
import torch

from data_fixtures import tokenizer_model  # noqa: F401  (pytest fixture)
from est_megatron.config import model_preset
from est_megatron.data.sft import (IGNORE, SFTDataset, build_sft_data, collate, encode_example, read_records,
                                   split_batch)
from est_megatron.data.tokenizer import SentencePieceTokenizer
from est_megatron.errors import UsageError
from est_megatron.model.transformer import Transformer


def test_prompt_tokens_are_masked_and_response_tokens_trained(tokenizer_model):  # noqa: F811
    tok = SentencePieceTokenizer(tokenizer_model)
    tokens, labels = encode_example({"prompt": "the model learns", "response": "alpha beta"}, tok)
    prompt, response = tok.encode("the model learns"), tok.encode("alpha beta")
    assert tokens == [tok.bos_id] + prompt + response + [tok.eos_id]
    assert labels == [IGNORE] * (1 + len(prompt)) + response + [tok.eos_id]
    chat = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "print"},
                         {"role": "assistant", "content": "return"}, {"role": "user", "content": "def"},
                         {"role": "assistant", "content": "class"}]}
    tokens, labels = encode_example(chat, tok)
    trained = [t for t, label in zip(tokens, labels) if label != IGNORE]
    assert trained == tok.encode("return") + [tok.eos_id] + tok.encode("class") + [tok.eos_id]


def test_loss_ignores_prompt_positions(tokenizer_model):  # noqa: F811
    """Changing the logits at prompt positions leaves the loss unchanged; at response positions it changes."""
    tok = SentencePieceTokenizer(tokenizer_model)
    example = encode_example({"prompt": "the model learns tokens", "response": "alpha"}, tok)
    ds = SFTDataset([example], 16, 2, 0, "pad", tok.eos_id)
    inputs, labels = split_batch(collate([ds[0], ds[1]]))
    n_prompt = 1 + len(tok.encode("the model learns tokens"))
    assert (labels[:, : n_prompt - 1] == IGNORE).all() and (labels[:, n_prompt - 1] != IGNORE).all()
    assert (labels[:, len(example[0]) - 1:] == IGNORE).all()  # padding
    cfg = model_preset("tiny", vocab_size=512)
    torch.manual_seed(0)
    model = Transformer(cfg)
    logits = model(inputs).detach()
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 512), labels.reshape(-1), ignore_index=IGNORE)
    torch.testing.assert_close(model(inputs, labels=labels), loss)
    moved = logits.clone()
    moved[:, : n_prompt - 1] += torch.randn_like(moved[:, : n_prompt - 1])
    same = torch.nn.functional.cross_entropy(moved.reshape(-1, 512), labels.reshape(-1), ignore_index=IGNORE)
    torch.testing.assert_close(same, loss)
    moved[:, n_prompt - 1] += 5 * torch.randn_like(moved[:, n_prompt - 1])
    assert not torch.allclose(torch.nn.functional.cross_entropy(moved.reshape(-1, 512), labels.reshape(-1),
                                                                ignore_index=IGNORE), loss)


def test_packing_fills_windows_and_keeps_masks(tokenizer_model, tmp_path):  # noqa: F811
    path = tmp_path / "sft.jsonl"
    records = [{"prompt": f"print {i} the", "response": "alpha " * (i % 4 + 1)} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    args = types.SimpleNamespace(tokenizer_model=tokenizer_model, data_path=[str(path)], sft_valid_fraction=0.1,
                                 seq_length=32, train_steps=3, global_batch_size=4, seed=0, sft_packing="pack",
                                 eval_iters=1)
    tok, (train, valid, _) = build_sft_data(args)
    assert len(train) == 12 and len(valid) == 4
    window = train[0]
    assert window.shape == (2, 33)
    trained = window[1] != IGNORE
    np.testing.assert_array_equal(window[1][trained], window[0][trained])  # labels are the tokens themselves
    assert 0 < trained.sum() < 33
    with pytest.raises(UsageError, match="prompt"):
        (tmp_path / "bad.jsonl").write_text('{"text": "x"}\n')
        read_records([str(tmp_path / "bad.jsonl")])
