#!/usr/bin/env python
"""Train a Llama-style SentencePiece BPE tokenizer (byte fallback, split digits, unk=0 bos=1 eos=2, no pad) from
the same raw inputs as tools/preprocess_data.py. Use it where Llama's own tokenizer.model is not at hand.

    python tools/train_tokenizer.py --input /data/SlimPajama/train --format slimpajama \
        --model-prefix tok/llama_like --vocab-size 32000 --max-sentences 2000000
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from est_megatron.data import sources  # noqa: E402
from est_megatron.data.tokenizer import SentencePieceTokenizer, train_llama_style  # noqa: E402
from est_megatron.errors import UsageError, exit_on_usage_error  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sources.add_source_args(p)
    p.add_argument("--model-prefix", required=True, help="writes PREFIX.model and PREFIX.vocab")
    p.add_argument("--vocab-size", type=int, default=32000, help="pieces in the model (Llama: 32000)")
    p.add_argument("--max-sentences", "--input-sentence-size", dest="max_sentences", type=int, default=0,
                   help="SentencePiece samples this many lines (0: all that were read)")
    p.add_argument("--max-chars", type=int, default=200_000_000,
                   help="stop reading input after this many characters (bounds memory and time)")
    return p


def capped_lines(texts, max_chars):
    """Non-empty lines of the documents (SentencePiece's unit is a sentence) until max_chars are read."""
    total = 0
    for text in texts:
        for line in text.splitlines():
            if line.strip():
                yield line
                total += len(line)
                if total >= max_chars:
                    return


@exit_on_usage_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.max_chars < 1:
        raise UsageError(f"--max-chars {args.max_chars} must be positive")
    options = sources.options_from_args(args)
    bad = sources.BadInputs(options.skip_bad_records)
    texts = sources.iter_texts(sources.discover(args.input, args.format), options, bad)
    model = train_llama_style(capped_lines(texts, args.max_chars), args.model_prefix, args.vocab_size,
                              max_sentences=args.max_sentences)
    tok = SentencePieceTokenizer(model)
    print(f"wrote {model}: {tok.vocab_size} pieces, sha256 {tok.sha256[:16]}...; skipped {dict(bad.counts) or 0}")
    return model


if __name__ == "__main__":
    main()
