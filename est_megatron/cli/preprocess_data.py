"""Tokenize raw corpora into Megatron-compatible indexed shards (PREFIX_NNNNN.bin/.idx + PREFIX.manifest.json).

    python tools/preprocess_data.py --input /data/SlimPajama/train --format slimpajama \
        --tokenizer-model tokenizer.model --output-prefix /data/shards/slimpajama --workers 16
    python tools/preprocess_data.py --input openwebtext.jsonl --tokenizer-type GPT2BPETokenizer \
        --vocab-file gpt2/vocab.json --merge-file gpt2/merges.txt --output-prefix /data/shards/owt

On 4 machines: the same command with --num-parts 4 --part K on machine K (0..3), then
`python tools/merge_parts.py --output-prefix /data/shards/slimpajama`. A killed run (SIGTERM, Ctrl-C, kill -9)
resumes when the same command is run again.
"""
import argparse
import signal
import sys

from est_megatron.data import sources
from est_megatron.data.preprocess import preprocess, summary_line
from est_megatron.data.tokenizer import add_tokenizer_args, spec_from_args
from est_megatron.errors import exit_on_usage_error
from est_megatron.help_format import HelpFormatter


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    sources.add_source_args(p)
    add_tokenizer_args(p)
    p.add_argument("--output-prefix", required=True, help="shards become PREFIX_00000.bin/.idx, ...")
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes (output identical for any N)")
    p.add_argument("--shard-size", type=int, default=1 << 30, help="start a new shard after this many tokens")
    p.add_argument("--no-append-eod", dest="append_eod", action="store_false",
                   help="do not append the EOS token to each document")
    p.add_argument("--add-bos", action="store_true", help="prepend the BOS token to each document")
    p.add_argument("--num-parts", type=int, default=1,
                   help="split the input files into this many byte-balanced parts, one per machine; part K writes "
                        "PREFIX.partK-of-N_NNNNN shards; tools/merge_parts.py joins them")
    p.add_argument("--part", type=int, default=0, help="which part (0-based) this machine runs")
    p.add_argument("--restart", action="store_true",
                   help="discard an interrupted run of this --output-prefix instead of resuming it")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def _stop(signum, frame):
    raise KeyboardInterrupt


@exit_on_usage_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    options = sources.options_from_args(args)
    previous = signal.signal(signal.SIGTERM, _stop)  # a stop keeps the progress record: the same command resumes
    try:
        manifest = preprocess(args.input, options, spec_from_args(args), args.output_prefix, workers=args.workers,
                              shard_size=args.shard_size, append_eod=args.append_eod, add_bos=args.add_bos,
                              progress=args.progress, num_parts=args.num_parts, part=args.part, restart=args.restart)
    except KeyboardInterrupt:
        print("stopped; run the same command again to resume", file=sys.stderr, flush=True)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(summary_line(manifest))
    for example in manifest["bad_record_examples"][:10]:
        print(f"  skipped: {example}")
    return manifest


if __name__ == "__main__":
    main()
