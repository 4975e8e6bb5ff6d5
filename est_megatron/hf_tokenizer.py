"""Hugging Face tokenizer files for an export, so `AutoTokenizer.from_pretrained(export)` needs no extra package
and gives exactly the ids training saw.

Every tokenizer type becomes one fast `tokenizer.json` built with the `tokenizers` library: a SentencePiece model
is converted here (its own vocabulary, BPE merges ranked by the merged piece's score as SentencePiece ranks them,
its normaliser settings, byte fallback); a HuggingFaceTokenizer is its own tokenizer.json; GPT-2's BPE is built
from vocab.json + merges.txt. The post-processor adds BOS exactly when the shards' documents start with one, and
tokenizer_config.json names the generic fast class, so no model-specific tokenizer class re-interprets the file
(GPT-2's class would split text differently from a SentencePiece model trained for a GPT-2 run).
"""
from __future__ import annotations

import json
import os
from typing import Optional

from est_megatron.data.tokenizer import SentencePieceTokenizer
from est_megatron.errors import UsageError

# SentencePiece ModelProto piece types.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED = 1, 2, 3, 4
_BPE_MODEL, _UNIGRAM_MODEL = 2, 1


def sentencepiece_to_fast(model_path: str):
    """A `tokenizers.Tokenizer` that encodes and decodes like the SentencePiece model (BPE or unigram)."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers

    proto = sentencepiece_model_pb2.ModelProto()
    with open(model_path, "rb") as f:
        proto.ParseFromString(f.read())
    pieces, spec, norm = proto.pieces, proto.trainer_spec, proto.normalizer_spec
    if spec.model_type == _BPE_MODEL:
        vocab = {p.piece: i for i, p in enumerate(pieces)}
        merges = []
        for i in sorted((i for i, p in enumerate(pieces) if p.type == _NORMAL), key=lambda i: (-pieces[i].score, i)):
            piece = pieces[i].piece
            merges += [(piece[:k], piece[k:]) for k in range(1, len(piece))
                       if piece[:k] in vocab and piece[k:] in vocab]
        model = models.BPE(vocab=vocab, merges=merges, unk_token=pieces[spec.unk_id].piece, fuse_unk=True,
                           byte_fallback=spec.byte_fallback)
    elif spec.model_type == _UNIGRAM_MODEL:
        model = models.Unigram([(p.piece, p.score) for p in pieces], spec.unk_id, spec.byte_fallback)
    else:
        raise UsageError(f"{model_path} is a SentencePiece {'char' if spec.model_type == 4 else 'word'} model; "
                         "only BPE and unigram models convert to a Hugging Face tokenizer.json")
    tok = Tokenizer(model)
    steps = [normalizers.Precompiled(norm.precompiled_charsmap)] if norm.precompiled_charsmap else []
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    steps.append(normalizers.Replace(" ", "▁"))
    tok.normalizer = normalizers.Sequence(steps)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
                                    + ([decoders.Strip(" ", 1, 0)] if norm.add_dummy_prefix else []))
    tok.add_tokens([AddedToken(p.piece, special=p.type != _USER_DEFINED, normalized=False)
                    for p in pieces if p.type in (_UNKNOWN, _CONTROL, _USER_DEFINED)])
    return tok


def fast_tokenizer(tokenizer):
    """A `tokenizers.Tokenizer` that encodes like any of our tokenizer types (a copy: the export changes it)."""
    from tokenizers import Tokenizer
    if isinstance(tokenizer, SentencePieceTokenizer):
        return sentencepiece_to_fast(tokenizer.model_path)
    return Tokenizer.from_str(tokenizer.backend.to_str())


def _token(tokenizer, token_id: int) -> Optional[str]:
    if token_id is None or token_id < 0:
        return None
    if isinstance(tokenizer, SentencePieceTokenizer):
        return tokenizer.sp.id_to_piece(token_id)
    return tokenizer.backend.id_to_token(token_id)


def special_ids(tokenizer) -> dict:
    """bos/eos/pad ids for config.json (None where the tokenizer has no such token)."""
    ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
    return {k: (v if v is not None and v >= 0 else None) for k, v in ids.items()}


def write_tokenizer_files(directory: str, tokenizer, add_bos: bool, model_max_length: int,
                          base_config: Optional[dict] = None) -> None:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json for `AutoTokenizer`.

    `add_bos`: whether encoding with special tokens prepends BOS (as the training data's documents did).
    `base_config`: an imported checkpoint's own tokenizer_config.json, whose other entries (chat template, ...) stay.
    """
    from tokenizers import processors

    fast = fast_tokenizer(tokenizer)
    bos, eos = _token(tokenizer, tokenizer.bos_id), _token(tokenizer, tokenizer.eos_id)
    pad, unk = _token(tokenizer, tokenizer.pad_id), None
    if isinstance(tokenizer, SentencePieceTokenizer):
        unk = _token(tokenizer, tokenizer.sp.unk_id())
    if add_bos and bos is None:
        raise UsageError("the training data starts documents with BOS but the tokenizer has no BOS token")
    fast.post_processor = (processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                         special_tokens=[(bos, tokenizer.bos_id)])
                           if add_bos else processors.TemplateProcessing(single="$A", pair="$A $B"))
    fast.save(os.path.join(directory, "tokenizer.json"))
    specials = {k: v for k, v in (("bos_token", bos), ("eos_token", eos), ("unk_token", unk), ("pad_token", pad))
                if v is not None}
    config = dict(base_config or {})
    for key in ("tokenizer_file", "vocab_file", "merges_file", "auto_map", "legacy", "add_prefix_space"):
        config.pop(key, None)  # settings of a model-specific class that no longer applies
    config.update(specials, tokenizer_class="PreTrainedTokenizerFast", add_bos_token=add_bos, add_eos_token=False,
                  model_max_length=model_max_length, clean_up_tokenization_spaces=False)
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(directory, "special_tokens_map.json"), "w") as f:
        json.dump(specials, f, indent=2)
