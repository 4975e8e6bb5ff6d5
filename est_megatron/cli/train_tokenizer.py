"""Train a Llama-style SentencePiece BPE tokenizer (byte fallback, split digits, unk=0 bos=1 eos=2, no pad) from
the same raw inputs as tools/preprocess_data.py. Use it where Llama's own tokenizer.model is not at hand.

    python tools/train_tokenizer.py --input /data/SlimPajama/train --format slimpajama \
        --model-prefix tok/llama_like --vocab-size 32000 --max-sentences 2000000
"""
import argparse

from est_megatron.data import sources
from est_megatron.data.tokenizer_training import train_tokenizer
from est_megatron.errors import exit_on_usage_error
from est_megatron.help_format import HelpFormatter


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    sources.add_source_args(p)
    p.add_argument("--model-prefix", required=True, help="writes PREFIX.model and PREFIX.vocab")
    p.add_argument("--vocab-size", type=int, default=32000, help="pieces in the model (Llama: 32000)")
    p.add_argument("--max-sentences", "--input-sentence-size", dest="max_sentences", type=int, default=0,
                   help="SentencePiece samples this many lines (0: all that were read)")
    p.add_argument("--max-chars", type=int, default=200_000_000,
                   help="stop reading input after this many characters (bounds memory and time)")
    p.add_argument("--character-coverage", type=float, default=0.99995,
                   help="share of the text's characters that get their own pieces (the rarest fall back to bytes); "
                        "lower it (e.g. 0.9995) for text with many distinct characters, such as CJK")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar while the input is read")
    return p


@exit_on_usage_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    model, summary = train_tokenizer(args.input, sources.options_from_args(args), args.model_prefix, args.vocab_size,
                                     max_sentences=args.max_sentences, max_chars=args.max_chars,
                                     character_coverage=args.character_coverage, progress=args.progress)
    print(summary)
    return model


if __name__ == "__main__":
    main()
