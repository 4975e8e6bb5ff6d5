"""Tokenizers of the data pipeline and training, under Megatron's `--tokenizer-type` names.

- SentencePieceTokenizer (default): a SentencePiece model, Llama's tokenizer.model or one trained with
  `train_llama_style` (Llama's settings: BPE with byte fallback, so no id is ever unknown for text; digits split one
  by one, identity normalisation, a dummy prefix space, whitespace kept as is, unk=0 bos=1 eos=2 and no pad).
- HuggingFaceTokenizer: a Hugging Face fast tokenizer, a `tokenizer.json` or a folder holding one (e.g. Llama 3's);
  the special tokens come from the folder's tokenizer_config.json, else from the usual names.
- GPT2BPETokenizer: GPT-2's byte-level BPE from `vocab.json` + `merges.txt` (`<|endoftext|>` is BOS and EOS).

Each encodes text without special tokens (the pipeline adds BOS/EOS itself) and records a `spec` (type and files)
and a sha256 of its files, which shard manifests and checkpoints keep.
"""
import argparse
import dataclasses
import hashlib
import json
import os
import re
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Union

import sentencepiece as spm

from est_megatron.errors import UsageError

TOKENIZER_TYPES = ("SentencePieceTokenizer", "HuggingFaceTokenizer", "GPT2BPETokenizer")
# Pieces a byte-fallback model always holds: unk, bos, eos and the 256 byte pieces.
RESERVED_PIECES = 3 + 256
# Special tokens looked for when a tokenizer.json comes without a tokenizer_config.json.
BOS_NAMES = ("<|begin_of_text|>", "<s>", "<bos>", "<|endoftext|>")
EOS_NAMES = ("<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>")
GPT2_EOD = "<|endoftext|>"


def file_sha256(*paths: str) -> str:
    """One digest over the files' bytes in order (a tokenizer can span several files)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
    """Which tokenizer and its files: picklable for preprocessing workers, JSON for manifests."""

    type: str = "SentencePieceTokenizer"
    model: Optional[str] = None
    vocab_file: Optional[str] = None
    merge_file: Optional[str] = None

    def __post_init__(self) -> None:
        if self.type not in TOKENIZER_TYPES:
            raise UsageError(f"unknown --tokenizer-type {self.type!r}; use one of {', '.join(TOKENIZER_TYPES)}")
        if self.type == "GPT2BPETokenizer":
            if not (self.vocab_file and self.merge_file):
                raise UsageError("--tokenizer-type GPT2BPETokenizer needs --vocab-file (vocab.json) and --merge-file "
                                 "(merges.txt)")
        elif not self.model:
            raise UsageError(f"--tokenizer-type {self.type} needs --tokenizer-model: "
                             + ("a SentencePiece .model (e.g. Llama's tokenizer.model)"
                                if self.type == "SentencePieceTokenizer" else "a tokenizer.json or a folder with one"))

    def load(self) -> "Tokenizer":
        if self.type == "SentencePieceTokenizer":
            return SentencePieceTokenizer(self.model)
        if self.type == "HuggingFaceTokenizer":
            return HuggingFaceTokenizer(self.model)
        return GPT2BPETokenizer(self.vocab_file, self.merge_file)

    def to_json(self) -> Dict[str, Optional[str]]:
        return {k: (os.path.abspath(v) if v and k != "type" else v) for k, v in dataclasses.asdict(self).items()}


def add_tokenizer_args(parser: argparse.ArgumentParser,
                       model_help: str = "SentencePiece .model, or for HuggingFaceTokenizer a tokenizer.json "
                                         "or a folder with one") -> None:
    """Megatron's tokenizer flags, shared by the tools and the training entry points."""
    parser.add_argument("--tokenizer-type", choices=TOKENIZER_TYPES, default="SentencePieceTokenizer",
                        help="tokenizer library and format")
    parser.add_argument("--tokenizer-model", help=model_help)
    parser.add_argument("--vocab-file", help="GPT2BPETokenizer: GPT-2's vocab.json")
    parser.add_argument("--merge-file", help="GPT2BPETokenizer: GPT-2's merges.txt")


def spec_from_args(args: argparse.Namespace) -> TokenizerSpec:
    return TokenizerSpec(getattr(args, "tokenizer_type", None) or "SentencePieceTokenizer",
                         getattr(args, "tokenizer_model", None), getattr(args, "vocab_file", None),
                         getattr(args, "merge_file", None))


def spec_from_json(obj: Dict[str, Optional[str]]) -> TokenizerSpec:
    """The spec a manifest recorded (manifests before tokenizer types held a SentencePiece `model` only)."""
    return TokenizerSpec(obj.get("type", "SentencePieceTokenizer"), obj.get("model"), obj.get("vocab_file"),
                         obj.get("merge_file"))


def _existing(path: str, flag: str) -> str:
    if not os.path.exists(path):
        raise UsageError(f"{flag} {path} does not exist; check the path")
    return path


class SentencePieceTokenizer:
    """A SentencePiece model through the sentencepiece library (its batch encode is the fastest path)."""

    type = "SentencePieceTokenizer"

    def __init__(self, model_path: str) -> None:
        if not os.path.isfile(model_path):
            raise UsageError(f"tokenizer model {model_path} does not exist; pass Llama's tokenizer.model or train "
                             f"one with tools/train_tokenizer.py")
        self.model_path = model_path
        self.spec = TokenizerSpec(self.type, model_path)
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(model_path)
        except (OSError, RuntimeError) as err:
            raise UsageError(f"{model_path} is not a SentencePiece model ({err}); pass a .model file, or "
                             "--tokenizer-type HuggingFaceTokenizer for a tokenizer.json") from None
        self.sha256 = file_sha256(model_path)

    @property
    def vocab_size(self) -> int:
        return self.sp.GetPieceSize()

    @property
    def eos_id(self) -> int:
        return self.sp.eos_id()

    @property
    def bos_id(self) -> int:
        return self.sp.bos_id()

    @property
    def pad_id(self) -> int:
        return self.sp.pad_id()

    def encode(self, text: str) -> List[int]:
        return self.sp.EncodeAsIds(text)

    def encode_batch(self, texts: List[str], num_threads: int = 1) -> List[List[int]]:
        """Encode many texts in one call (far less per-call overhead than a Python loop)."""
        return self.sp.Encode(texts, num_threads=num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.DecodeIds([int(i) for i in ids])


class _TokenizersLibrary:
    """Shared by the tokenizers-backed types: `backend` is a `tokenizers.Tokenizer`, `bos`/`eos`/`pad` token
    strings (or None). Encoding never adds special tokens: the data pipeline places BOS/EOS itself."""

    def _set_specials(self, bos: Optional[str], eos: Optional[str], pad: Optional[str]) -> None:
        self.bos_token, self.eos_token, self.pad_token = bos, eos, pad
        if eos is None or self.backend.token_to_id(eos) is None:
            raise UsageError(f"{self.spec.model or self.spec.vocab_file}: no end-of-text token found (looked for "
                             f"{eos or ', '.join(EOS_NAMES)}); put a tokenizer_config.json with eos_token beside "
                             "tokenizer.json")

    def _id(self, token: Optional[str]) -> int:
        return -1 if token is None else self.backend.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def eos_id(self) -> int:
        return self._id(self.eos_token)

    @property
    def bos_id(self) -> int:
        return self._id(self.bos_token)

    @property
    def pad_id(self) -> int:
        return self._id(self.pad_token)

    def encode(self, text: str) -> List[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: List[str], num_threads: int = 1) -> List[List[int]]:
        """Many texts: on one thread (a preprocessing worker's share of the cores), else the library's pool."""
        if num_threads == 1:
            return [self.backend.encode(text, add_special_tokens=False).ids for text in texts]
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)


class HuggingFaceTokenizer(_TokenizersLibrary):
    """A Hugging Face fast tokenizer file, loaded with the tokenizers library (no network, no model hub)."""

    type = "HuggingFaceTokenizer"

    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer
        if not os.path.exists(path):
            raise UsageError(f"--tokenizer-model {path} does not exist; HuggingFaceTokenizer reads a local "
                             "tokenizer.json or a folder with one (download a Hub tokenizer first)")
        folder = path if os.path.isdir(path) else os.path.dirname(path)
        json_path = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.isfile(json_path):
            raise UsageError(f"{path} holds no tokenizer.json; --tokenizer-type HuggingFaceTokenizer needs a "
                             "tokenizer.json or a folder with one")
        self.spec = TokenizerSpec(self.type, path)
        try:
            self.backend = Tokenizer.from_file(json_path)
        except Exception as err:  # the library raises its own Exception subclass for any malformed file
            raise UsageError(f"{json_path} is not a Hugging Face tokenizer.json ({err}); pass the file "
                             "transformers' save_pretrained writes") from None
        config_path = os.path.join(folder, "tokenizer_config.json")
        files = [json_path]
        config = {}
        if os.path.isfile(config_path):
            files.append(config_path)
            with open(config_path) as f:
                config = json.load(f)
        self.sha256 = file_sha256(*files)
        vocab = self.backend.get_vocab(with_added_tokens=True)

        def special(key: str, names: Sequence[str]) -> Optional[str]:
            token = config.get(key)
            token = token.get("content") if isinstance(token, dict) else token
            return token if token else next((n for n in names if n in vocab), None)

        self._set_specials(special("bos_token", BOS_NAMES), special("eos_token", EOS_NAMES),
                           special("pad_token", ()))


class GPT2BPETokenizer(_TokenizersLibrary):
    """GPT-2's byte-level BPE (vocab.json + merges.txt) as GPT-2 encodes it; `<|endoftext|>` is BOS and EOS."""

    type = "GPT2BPETokenizer"

    def __init__(self, vocab_file: str, merge_file: str) -> None:
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
        self.spec = TokenizerSpec(self.type, None, vocab_file, merge_file)
        _existing(vocab_file, "--vocab-file")
        _existing(merge_file, "--merge-file")
        try:
            self.backend = Tokenizer(models.BPE.from_file(vocab_file, merge_file))
        except Exception as err:  # the library raises its own Exception subclass for malformed files
            raise UsageError(f"{vocab_file} / {merge_file} are not GPT-2 vocab.json / merges.txt ({err})") from None
        self.backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        self.backend.decoder = decoders.ByteLevel()
        self.backend.add_special_tokens([AddedToken(GPT2_EOD, special=True, normalized=False)])
        self.sha256 = file_sha256(vocab_file, merge_file)
        self._set_specials(GPT2_EOD, GPT2_EOD, None)


Tokenizer = Union[SentencePieceTokenizer, HuggingFaceTokenizer, GPT2BPETokenizer]


def train_llama_style(sentences: Iterable[str], model_prefix: str, vocab_size: int, max_sentences: int = 0,
                      num_threads: Optional[int] = None, character_coverage: float = 0.99995) -> str:
    """Train a Llama-style BPE model from an iterable of sentences; writes MODEL_PREFIX.model/.vocab.

    `max_sentences` > 0 makes SentencePiece sample that many sentences (input_sentence_size). The vocabulary size
    is a soft limit (hard_vocab_limit=False), so small corpora give a smaller model instead of failing.
    `character_coverage` is the share of characters that get their own pieces; the rarest characters are left to
    byte fallback. Text with many distinct characters needs a lower coverage or a larger vocabulary.
    """
    if vocab_size <= RESERVED_PIECES:
        raise UsageError(f"--vocab-size {vocab_size} is too small: a byte-fallback model needs more than "
                         f"{RESERVED_PIECES} pieces (unk, bos, eos and 256 bytes); use e.g. 32000")
    if not 0.98 <= character_coverage <= 1.0:
        raise UsageError(f"--character-coverage {character_coverage} must lie in [0.98, 1] (SentencePiece's "
                         "range), e.g. 0.9995")
    out_dir = os.path.dirname(os.path.abspath(model_prefix))
    os.makedirs(out_dir, exist_ok=True)
    counted = _Counted(sentences)
    try:
        spm.SentencePieceTrainer.Train(
            sentence_iterator=iter(counted),
            model_prefix=model_prefix,
            model_type="bpe",
            vocab_size=vocab_size,
            hard_vocab_limit=False,
            byte_fallback=True,
            split_digits=True,
            normalization_rule_name="identity",
            add_dummy_prefix=True,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            character_coverage=character_coverage,
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            max_sentence_length=16384,
            num_threads=num_threads or os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as err:
        if counted.n == 0:
            raise UsageError("the tokenizer inputs hold no text; check --input and --format") from None
        needed = re.search(r"required_chars\. \d+ vs (\d+)", str(err))
        if needed:
            raise UsageError(f"--vocab-size {vocab_size} is smaller than the {needed.group(1)} pieces that the "
                             f"text's characters need at --character-coverage {character_coverage}; raise "
                             f"--vocab-size above {needed.group(1)} or lower --character-coverage (down to "
                             "0.98)") from None
        raise UsageError(f"SentencePiece training failed: {err}; check the input text and --vocab-size") from None
    return f"{model_prefix}.model"


class _Counted:
    """Iterable that counts what it yields (to tell 'no text' apart from other training failures)."""

    def __init__(self, items: Iterable[str]) -> None:
        self.items, self.n = items, 0

    def __iter__(self) -> Iterator[str]:
        for item in self.items:
            self.n += 1
            yield item
