"""Tokenizer types and Hugging Face tokenizer exports: every --tokenizer-type through preprocessing, inspection and
export, and `AutoTokenizer.from_pretrained(export)` giving exactly our ids (with and without special tokens)."""
import json
import os

import numpy as np
import pytest
import sentencepiece as spm
import transformers

from data_fixtures import load_tool, tokenizer_model, write_jsonl  # noqa: F401  (pytest fixture)
from est_megatron.checkpoint.tokenizer import checkpoint_tokenizer, folder_tokenizer
from est_megatron.config import model_preset
from est_megatron.data.corpus import Corpus
from est_megatron.data.tokenizer import GPT2BPETokenizer, HuggingFaceTokenizer, TokenizerSpec
from est_megatron.errors import UsageError
from est_megatron.hf import write_hf_checkpoint
from est_megatron.model.transformer import Transformer

# Text the tokenizers never saw: accents, symbols, CJK, emoji, digit runs, runs of spaces, tabs, newlines.
HELD_OUT = ["Held-out: naïve café ☃ 漢字 🚀 — the model 2024-11-25, x =  3.14\n\tdone  ",
            " leading space", "trailing space ", "", "multiple\n\nlines\r\nand\ttabs", "print(return_0123)"]
CORPUS = ["the model learns tokens from text", "print return def class 0123", "alpha beta gamma delta 4567"] * 30


@pytest.fixture(scope="module")
def bpe_files(tmp_path_factory):
    """GPT-2-style byte-level BPE files (vocab.json, merges.txt) and a Llama-3-style tokenizer.json with
    <|begin_of_text|>/<|end_of_text|> and no tokenizer_config.json, trained here with the tokenizers library."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    root = tmp_path_factory.mktemp("bpe")
    out = {}
    for name, specials in (("gpt2", ["<|endoftext|>"]), ("llama3", ["<|begin_of_text|>", "<|end_of_text|>"])):
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                            show_progress=False))
        (root / name).mkdir()
        if name == "gpt2":
            tok.model.save(str(root / name))
            out["vocab"], out["merges"] = str(root / name / "vocab.json"), str(root / name / "merges.txt")
        else:
            tok.save(str(root / name / "tokenizer.json"))
            out["llama3"] = str(root / name)
    return out


def spec_of(kind, tokenizer_model, bpe_files):  # noqa: F811
    return {"SentencePieceTokenizer": TokenizerSpec("SentencePieceTokenizer", tokenizer_model),
            "HuggingFaceTokenizer": TokenizerSpec("HuggingFaceTokenizer", bpe_files["llama3"]),
            "GPT2BPETokenizer": TokenizerSpec("GPT2BPETokenizer", None, bpe_files["vocab"], bpe_files["merges"])}[kind]


def export(directory, preset, spec, add_bos):
    cfg = model_preset(preset, vocab_size=512)
    write_hf_checkpoint(str(directory), cfg, Transformer(cfg).state_dict(), tokenizer=spec, add_bos=add_bos)
    with open(os.path.join(directory, "config.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("preset,add_bos", [("tiny", True), ("tiny", False), ("tiny-gpt2", False)])
def test_sentencepiece_exports_load_with_autotokenizer_and_give_our_ids(tokenizer_model, tmp_path, preset,  # noqa: F811
                                                                        add_bos):
    config = export(tmp_path, preset, TokenizerSpec(model=tokenizer_model), add_bos)
    sp = spm.SentencePieceProcessor(model_file=tokenizer_model)
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, None)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert not isinstance(tok, transformers.GPT2TokenizerFast)  # GPT-2's class would split text its own way
    for text in HELD_OUT:
        ids = sp.encode(text)
        assert tok(text, add_special_tokens=False).input_ids == ids, text
        assert tok(text).input_ids == ([1] if add_bos else []) + ids, text
        assert tok.decode(ids) == sp.decode(ids)
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert (model.config.bos_token_id, model.config.eos_token_id) == (1, 2)
    with open(tmp_path / "tokenizer_config.json") as f:
        assert json.load(f)["add_bos_token"] is add_bos


def test_gpt2_bpe_encodes_like_gpt2(bpe_files):
    ours = GPT2BPETokenizer(bpe_files["vocab"], bpe_files["merges"])
    folder = os.path.dirname(bpe_files["vocab"])  # vocab.json + merges.txt: transformers' GPT-2 tokenizer
    gpt2 = transformers.AutoTokenizer.from_pretrained(folder, tokenizer_type="gpt2")
    for text in HELD_OUT + CORPUS[:3]:
        assert ours.encode(text) == gpt2(text).input_ids, text
        assert ours.decode(ours.encode(text)) == text
    assert ours.eos_id == ours.bos_id == gpt2.convert_tokens_to_ids("<|endoftext|>")


def test_tokenizer_json_without_config_finds_its_special_tokens(bpe_files):
    tok = HuggingFaceTokenizer(bpe_files["llama3"])
    assert tok.backend.id_to_token(tok.bos_id) == "<|begin_of_text|>"
    assert tok.backend.id_to_token(tok.eos_id) == "<|end_of_text|>" and tok.pad_id == -1
    assert HuggingFaceTokenizer(os.path.join(bpe_files["llama3"], "tokenizer.json")).sha256 == tok.sha256


@pytest.mark.parametrize("kind", ["SentencePieceTokenizer", "HuggingFaceTokenizer", "GPT2BPETokenizer"])
def test_each_tokenizer_type_preprocesses_inspects_and_exports(kind, tokenizer_model, bpe_files,  # noqa: F811
                                                               tmp_path, capsys):
    spec = spec_of(kind, tokenizer_model, bpe_files)
    tok = spec.load()
    flags = ["--tokenizer-type", kind] + (["--vocab-file", spec.vocab_file, "--merge-file", spec.merge_file]
                                          if spec.vocab_file else ["--tokenizer-model", spec.model])
    texts = CORPUS[:3] + HELD_OUT[:1]
    write_jsonl(str(tmp_path / "d.jsonl"), [{"text": t} for t in texts])
    manifest = load_tool("tools/preprocess_data.py").main(
        ["--input", str(tmp_path / "d.jsonl"), "--output-prefix", str(tmp_path / "o"), "--add-bos",
         "--no-progress"] + flags)
    assert manifest["tokenizer"]["type"] == kind and manifest["tokenizer"]["sha256"] == tok.sha256
    corpus = Corpus(str(tmp_path / "o"))
    for i, text in enumerate(texts):
        np.testing.assert_array_equal(corpus.tokens(i), [tok.bos_id] + tok.encode(text) + [tok.eos_id])
    out = load_tool("tools/inspect_data.py").main(["--data-path", str(tmp_path / "o"), "--document", "3"])
    bos_mark = "<eos>" if tok.bos_id == tok.eos_id else "<bos>"  # GPT-2 has one <|endoftext|> for both
    assert out[-1] == bos_mark + texts[3] + "<eos>"  # the manifest named the tokenizer
    assert kind in out[1]

    config = export(tmp_path / "hf", "tiny", spec, add_bos=manifest["add_bos"])
    assert (config["bos_token_id"], config["eos_token_id"]) == (tok.bos_id, tok.eos_id)
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in HELD_OUT:
        assert auto(text, add_special_tokens=False).input_ids == tok.encode(text), text
        assert auto(text).input_ids == [tok.bos_id] + tok.encode(text), text


def test_add_bos_follows_the_manifest_of_a_training_run(tokenizer_model, tmp_path):  # noqa: F811
    write_jsonl(str(tmp_path / "d.jsonl"), [{"text": t} for t in CORPUS[:5]])
    for name, extra in (("plain", []), ("bos", ["--add-bos"])):
        load_tool("tools/preprocess_data.py").main(["--input", str(tmp_path / "d.jsonl"), "--tokenizer-model",
                                                    tokenizer_model, "--output-prefix", str(tmp_path / name),
                                                    "--no-progress"] + extra)
    for name, expected in (("plain", False), ("bos", True)):
        run = tmp_path / f"run_{name}"
        (run / "step_000001").mkdir(parents=True)
        (run / "latest").write_text("step_000001")
        args = {"data_path": [str(tmp_path / name)], "tokenizer_type": "SentencePieceTokenizer",
                "tokenizer_model": tokenizer_model}
        (run / "step_000001" / "est_state.json").write_text(json.dumps({"args": args}))
        spec, add_bos = checkpoint_tokenizer(str(run))
        assert spec == TokenizerSpec(model=tokenizer_model) and add_bos is expected


def test_gpt2_import_keeps_its_bpe_tokenizer(bpe_files, tmp_path):
    torch_model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=400, n_embd=32, n_layer=1,
                                                                       n_head=2, n_positions=32))
    torch_model.save_pretrained(tmp_path / "hf")
    for key in ("vocab", "merges"):
        with open(bpe_files[key], "rb") as src, open(tmp_path / "hf" / os.path.basename(bpe_files[key]), "wb") as dst:
            dst.write(src.read())
    load_tool("tools/convert_hf_to_est.py").main(["--hf-dir", str(tmp_path / "hf"), "--save", str(tmp_path / "ours")])
    spec = folder_tokenizer(str(tmp_path / "ours"))
    assert spec.type == "GPT2BPETokenizer" and os.path.basename(spec.merge_file) == "merges.txt"
    load_tool("tools/convert_to_hf.py").main(["--load", str(tmp_path / "ours"), "--output", str(tmp_path / "back")])
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "back")
    assert auto(HELD_OUT[0]).input_ids == spec.load().encode(HELD_OUT[0])


def test_tokenizer_flags_fail_with_one_line(tmp_path, bpe_files):
    with pytest.raises(UsageError, match="needs --vocab-file .* and --merge-file"):
        TokenizerSpec("GPT2BPETokenizer", None, bpe_files["vocab"], None)
    with pytest.raises(UsageError, match="needs --tokenizer-model"):
        TokenizerSpec("HuggingFaceTokenizer")
    with pytest.raises(UsageError, match="holds no tokenizer.json"):
        HuggingFaceTokenizer(str(tmp_path))
    with pytest.raises(UsageError, match="is not a SentencePiece model.*HuggingFaceTokenizer"):
        TokenizerSpec(model=bpe_files["vocab"]).load()
