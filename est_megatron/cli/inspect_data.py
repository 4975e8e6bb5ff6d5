"""Look at preprocessed data: counts of a shard set, and the text of a document or of a training sample as the
model sees it (document ends shown as <eos>/<bos>).

    python tools/inspect_data.py --data-path /data/shards/slimpajama
    python tools/inspect_data.py --data-path /data/shards/slimpajama --document 12
    python tools/inspect_data.py --data-path 0.7 /data/sp 0.3 /data/sc --sample 5 --seq-length 2048
"""
import argparse
import json
import os

from est_megatron.data import SPLIT_NAMES, build_datasets
from est_megatron.data.blend import parse_data_path
from est_megatron.data.corpus import Corpus
from est_megatron.data.shard_writer import manifest_path
from est_megatron.data.tokenizer import add_tokenizer_args, spec_from_args, spec_from_json
from est_megatron.errors import UsageError, exit_on_usage_error
from est_megatron.help_format import HelpFormatter


def describe(prefix):
    """Counts of one data-path prefix, with the manifest's provenance when there is one."""
    corpus = Corpus(prefix)
    lines = [f"{prefix}: {len(corpus.shards)} shard(s), {len(corpus):,} documents, {corpus.num_tokens:,} tokens, "
             f"dtype {corpus.shards[0].dtype}"]
    if os.path.isfile(manifest_path(prefix)):
        with open(manifest_path(prefix)) as f:
            m = json.load(f)
        tok = m["tokenizer"]
        files = ", ".join(tok[k] for k in ("model", "vocab_file", "merge_file") if tok.get(k))
        lines += [f"  tokenizer {tok.get('type', 'SentencePieceTokenizer')} {files} (vocab {tok['vocab_size']}, "
                  f"sha256 {tok['sha256'][:16]}...)",
                  f"  input format {m['input_format']}, {len(m['sources'])} source file(s), eod appended: "
                  f"{m['append_eod']}, bos added: {m['add_bos']}",
                  f"  skipped: {', '.join(f'{k} {v:,}' for k, v in m['skipped'].items()) or 'none'}"]
        lines += [f"  {s['prefix']}: {s['documents']:,} documents, {s['tokens']:,} tokens" for s in m["shards"]]
    return lines


def tokenizer_spec(args, prefix):
    """The --tokenizer-* flags when given, else the tokenizer the prefix's manifest names."""
    if args.tokenizer_model or args.vocab_file:
        return spec_from_args(args)
    path = manifest_path(prefix)
    if not os.path.isfile(path):
        raise UsageError("no manifest names the tokenizer; pass --tokenizer-model (or --tokenizer-type with its "
                         "files) to detokenize")
    with open(path) as f:
        return spec_from_json(json.load(f)["tokenizer"])


def render(tokenizer, ids):
    """Detokenized text with control tokens made visible."""
    marks = {tokenizer.bos_id: "<bos>", tokenizer.eos_id: "<eos>"}  # GPT-2's one <|endoftext|> reads as <eos>
    out, run = [], []
    for i in (int(t) for t in ids):
        if i in marks:
            out += [tokenizer.decode(run), marks[i]]
            run = []
        else:
            run.append(i)
    out.append(tokenizer.decode(run))
    return "".join(out)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--data-path", nargs="+", required=True, help="PREFIX, or Megatron's weighted pairs")
    add_tokenizer_args(p, model_help="tokenizer to detokenize with (default: the one the manifest names)")
    p.add_argument("--document", type=int, help="show document i (of the first prefix, across its shards)")
    p.add_argument("--sample", type=int, help="show sample i of the built dataset (needs --seq-length)")
    p.add_argument("--seq-length", type=int, help="the training sequence length (for --sample)")
    p.add_argument("--split", default="969,30,1", help="train,valid,test document split weights, as in training")
    p.add_argument("--which", choices=SPLIT_NAMES, default="train", help="split the sample is taken from")
    p.add_argument("--seed", type=int, default=1234, help="the training seed (it shuffles the samples)")
    p.add_argument("--num-samples", type=int, help="samples of the dataset (default: sample + 1); match training "
                                                   "to see its exact samples")
    p.add_argument("--data-cache-path", "--cache-dir", dest="cache_dir",
                   help="where sample indices are cached (default: beside the shards)")
    p.add_argument("--ids", action="store_true", help="also print the token ids")
    return p


@exit_on_usage_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    prefixes = [prefix for _, prefix in parse_data_path(args.data_path)]
    out = [line for prefix in prefixes for line in describe(prefix)]
    if args.document is not None or args.sample is not None:
        tokenizer = tokenizer_spec(args, prefixes[0]).load()
    if args.document is not None:
        corpus = Corpus(prefixes[0])
        if not 0 <= args.document < len(corpus):
            raise UsageError(f"--document {args.document} is out of range: {prefixes[0]} has {len(corpus)} documents")
        ids = corpus.tokens(args.document)
        out += [f"--- document {args.document} ({ids.size} tokens) ---", render(tokenizer, ids)]
        out += [f"ids: {ids.tolist()}"] if args.ids else []
    if args.sample is not None:
        if args.seq_length is None or args.sample < 0:
            raise UsageError("--sample needs a non-negative index and --seq-length (the training sequence length)")
        which = SPLIT_NAMES.index(args.which)
        counts = [0, 0, 0]
        counts[which] = args.num_samples or args.sample + 1
        if args.sample >= counts[which]:
            raise UsageError(f"--sample {args.sample} is not below --num-samples {counts[which]}")
        dataset = build_datasets(args.data_path, args.split, args.seq_length, args.seed, tuple(counts),
                                 args.cache_dir)[which]
        if dataset is None:
            raise UsageError(f"the {args.which} split has weight 0 in --split {args.split}")
        ids = dataset[args.sample]
        out += [f"--- {args.which} sample {args.sample} ({ids.size} tokens = seq_length + 1) ---",
                render(tokenizer, ids)]
        out += [f"ids: {ids.tolist()}"] if args.ids else []
    print("\n".join(out))
    return out


if __name__ == "__main__":
    main()
