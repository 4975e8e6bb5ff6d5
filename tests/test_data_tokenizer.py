"""Llama-style tokenizer training: special ids, byte fallback, the CLI and its errors."""
import json
import random

import pytest

from data_fixtures import load_tool, make_text, slimpajama_records, tokenizer_model, write_jsonl  # noqa: F401
from est_megatron.data.tokenizer import SentencePieceTokenizer, train_llama_style
from est_megatron.errors import UsageError


def test_special_ids_and_byte_fallback(tokenizer_model):  # noqa: F811
    tok = SentencePieceTokenizer(tokenizer_model)
    assert (tok.sp.unk_id(), tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, -1)
    assert tok.sp.id_to_piece(3) == "<0x00>" and tok.sp.IsByte(3)
    assert tok.vocab_size == 400
    unseen = "naïve ☃ 漢字 🚀 the model"
    ids = tok.encode(unseen)
    assert 0 not in ids  # nothing is unknown: unseen characters become byte pieces
    assert tok.decode(ids) == unseen
    assert all(sum(c.isdigit() for c in tok.sp.id_to_piece(i)) <= 1 for i in tok.encode("a 2024 0123 89"))
    assert len(tok.sha256) == 64


def test_train_tokenizer_cli_on_slimpajama(tmp_path):
    write_jsonl(str(tmp_path / "in" / "a.jsonl.zst"), slimpajama_records(400), compress=True)
    tool = load_tool("tools/train_tokenizer.py")
    model = tool.main(["--input", str(tmp_path / "in"), "--format", "slimpajama", "--model-prefix",
                       str(tmp_path / "tok" / "m"), "--vocab-size", "350", "--max-sentences", "500",
                       "--max-chars", "100000"])
    tok = SentencePieceTokenizer(model)
    assert tok.vocab_size <= 350 and tok.eos_id == 2
    assert tok.decode(tok.encode("alpha beta\n")) == "alpha beta\n"  # whitespace kept: identity normalisation


def test_vocab_too_small_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="--vocab-size 200 is too small"):
        train_llama_style(["a b c"], str(tmp_path / "m"), 200)


def test_no_text_is_a_usage_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text(json.dumps({"text": ""}) + "\n")
    tool = load_tool("tools/train_tokenizer.py")
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--input", str(tmp_path / "empty.jsonl"), "--model-prefix", str(tmp_path / "m"),
                   "--vocab-size", "300"])
    assert exit_info.value.code == 2


def test_vocab_larger_than_data_gives_smaller_model(tmp_path):
    model = train_llama_style([make_text(random.Random(0), 20)] * 50, str(tmp_path / "m"), 5000)
    assert 259 < SentencePieceTokenizer(model).vocab_size < 5000


def test_too_many_characters_for_the_vocabulary_gives_the_right_advice(tmp_path):
    rng = random.Random(0)
    chars = [chr(0x4E00 + i) for i in range(600)]  # 600 distinct CJK characters
    lines = ["".join(rng.choice(chars) for _ in range(30)) for _ in range(400)]
    with pytest.raises(UsageError, match=r"--vocab-size 400 is smaller than the \d+ pieces .* raise --vocab-size "
                                         r"above \d+ or lower --character-coverage"):
        train_llama_style(lines, str(tmp_path / "m"), 400, character_coverage=1.0)
    with pytest.raises(UsageError, match=r"--character-coverage 0.5 must lie in \[0.98, 1\]"):
        train_llama_style(lines, str(tmp_path / "m"), 400, character_coverage=0.5)
