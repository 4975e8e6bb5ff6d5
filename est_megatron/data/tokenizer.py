"""SentencePiece tokenizer: load a model (Llama's tokenizer.model or one we trained) and train a Llama-style one.

Llama's settings: BPE with byte fallback (no id is ever unknown for text: unseen characters become byte pieces),
digits split one by one, identity normalisation, a dummy prefix space, whitespace kept as is, unk=0 bos=1 eos=2
and no pad piece.
"""
import hashlib
import os

import sentencepiece as spm

from est_megatron.errors import UsageError

# Pieces a byte-fallback model always holds: unk, bos, eos and the 256 byte pieces.
RESERVED_PIECES = 3 + 256


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class SentencePieceTokenizer:
    """Thin wrapper with the ids the data pipeline and training loop need."""

    def __init__(self, model_path):
        if not os.path.isfile(model_path):
            raise UsageError(f"tokenizer model {model_path} does not exist; pass Llama's tokenizer.model or train "
                             f"one with tools/train_tokenizer.py")
        self.model_path = model_path
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(model_path)
        except (OSError, RuntimeError) as err:
            raise UsageError(f"{model_path} is not a SentencePiece model ({err}); pass a .model file") from None
        self.sha256 = file_sha256(model_path)

    @property
    def vocab_size(self):
        return self.sp.GetPieceSize()

    @property
    def eos_id(self):
        return self.sp.eos_id()

    @property
    def bos_id(self):
        return self.sp.bos_id()

    @property
    def pad_id(self):
        return self.sp.pad_id()

    def encode(self, text):
        return self.sp.EncodeAsIds(text)

    def encode_batch(self, texts, num_threads=1):
        """Encode many texts in one call (far less per-call overhead than a Python loop)."""
        return self.sp.Encode(texts, num_threads=num_threads)

    def decode(self, ids):
        return self.sp.DecodeIds([int(i) for i in ids])


def train_llama_style(sentences, model_prefix, vocab_size, max_sentences=0, num_threads=None):
    """Train a Llama-style BPE model from an iterable of sentences; writes MODEL_PREFIX.model/.vocab.

    `max_sentences` > 0 makes SentencePiece sample that many sentences (input_sentence_size). The vocabulary size
    is a soft limit (hard_vocab_limit=False), so small corpora give a smaller model instead of failing.
    """
    if vocab_size <= RESERVED_PIECES:
        raise UsageError(f"--vocab-size {vocab_size} is too small: a byte-fallback model needs more than "
                         f"{RESERVED_PIECES} pieces (unk, bos, eos and 256 bytes); use e.g. 32000")
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
            character_coverage=0.99995,
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            max_sentence_length=16384,
            num_threads=num_threads or os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as err:
        if counted.n == 0:
            raise UsageError("the tokenizer inputs hold no text; check --input and --format") from None
        raise UsageError(f"SentencePiece training failed: {err}; try a smaller --vocab-size or more text") from None
    return f"{model_prefix}.model"


class _Counted:
    """Iterable that counts what it yields (to tell 'no text' apart from other training failures)."""

    def __init__(self, items):
        self.items, self.n = items, 0

    def __iter__(self):
        for item in self.items:
            self.n += 1
            yield item
