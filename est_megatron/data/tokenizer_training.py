"""Train a Llama-style SentencePiece tokenizer from raw corpora: the library behind tools/train_tokenizer.py and the
demo's tokenizer step.

The input is read with the same readers and filters as preprocessing (`data.sources`), split into non-empty lines
(SentencePiece's unit is a sentence) and capped at a number of characters, which bounds memory and time.
"""
from __future__ import annotations

import sys
from typing import Iterable, Iterator, Sequence, Tuple

from tqdm import tqdm

from est_megatron.data import sources
from est_megatron.data.tokenizer import SentencePieceTokenizer, train_llama_style
from est_megatron.errors import UsageError


def capped_lines(texts: Iterable[str], max_chars: int, progress: bool = False) -> Iterator[str]:
    """Non-empty lines of the documents until max_chars are read; the bar counts characters read, then a line says
    that training (silent and often the longer part) has begun."""
    bar = tqdm(total=max_chars, unit="char", unit_scale=True, desc="reading", disable=not progress,
               dynamic_ncols=True)
    total = 0
    try:
        for line in (line for text in texts for line in text.splitlines() if line.strip()):
            yield line
            total += len(line)
            bar.update(len(line))
            if total >= max_chars:
                break
    except BaseException:
        bar.leave = False  # wipe the bar so that an error is the one line left
        raise
    finally:
        bar.close()
    if progress:
        print(f"read {total:,} characters; training the tokenizer...", file=sys.stderr, flush=True)


def train_tokenizer(inputs: Sequence[str], options: sources.SourceOptions, model_prefix: str, vocab_size: int,
                    max_sentences: int = 0, max_chars: int = 200_000_000, character_coverage: float = 0.99995,
                    progress: bool = False) -> Tuple[str, str]:
    """(path of MODEL_PREFIX.model, a summary line) of a tokenizer trained on `inputs` read with `options`."""
    if max_chars < 1:
        raise UsageError(f"--max-chars {max_chars} must be positive")
    bad = sources.BadInputs(options.skip_bad_records)
    texts = sources.iter_texts(sources.discover(list(inputs), options.format), options, bad)
    model = train_llama_style(capped_lines(texts, max_chars, progress), model_prefix, vocab_size,
                              max_sentences=max_sentences, character_coverage=character_coverage)
    tok = SentencePieceTokenizer(model)
    skipped = dict(bad.counts) or 0
    return model, f"wrote {model}: {tok.vocab_size} pieces, sha256 {tok.sha256[:16]}...; skipped {skipped}"
