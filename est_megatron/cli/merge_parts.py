"""Join the parts of a preprocessing run split across machines into one corpus (PREFIX.manifest.json).

    python tools/merge_parts.py --output-prefix /data/shards/slimpajama

Every part (tools/preprocess_data.py --num-parts N --part K with this --output-prefix) must be complete and in
PREFIX's folder. No data is copied: the manifest lists the parts' shards in part order, so `--data-path PREFIX`
reads exactly the documents, in the same order, that one machine would have written.
"""
import argparse

from est_megatron.data.parts import merge_parts
from est_megatron.errors import exit_on_usage_error
from est_megatron.help_format import HelpFormatter


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--output-prefix", required=True, help="the --output-prefix the parts were run with")
    return p


@exit_on_usage_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    manifest = merge_parts(args.output_prefix)
    print(f"wrote {args.output_prefix}.manifest.json: {len(manifest['merged_from'])} parts, "
          f"{len(manifest['shards'])} shard(s), {manifest['documents']:,} documents, {manifest['tokens']:,} tokens")
    return manifest


if __name__ == "__main__":
    main()
