"""Raw text to Megatron shards: tokenize records in parallel, write PREFIX_NNNNN.bin/.idx and PREFIX.manifest.json.

Work is cut into ordered chunks (sources.py). With N > 1 workers the chunks go to a process pool through a
bounded window of `apply_async` results consumed in submission order, i.e. Pool.imap's ordering without its
eager reading of the whole input into memory; the output is byte-identical for any N. Each worker parses,
filters and batch-encodes its chunk (with one tokenizer thread, so N workers use N cores and 1 worker uses
one) and returns one numpy array of tokens plus document lengths, so the writer never loops per token.
A shard is closed once it holds at least --shard-size tokens (documents are never split). Shards and the
manifest are written under temporary names and renamed when complete, manifest last; a failed run removes the
shards it finished. The manifest records the largest token id, which training checks against its tokenizer.
"""
import collections
import datetime
import itertools
import multiprocessing
import os
import time
from typing import Any, Dict, Iterable, Iterator, List, Sequence, Tuple, Union

import numpy as np
from tqdm import tqdm

from est_megatron.data import sources
from est_megatron.data.atomic import save_json
from est_megatron.data.indexed import IndexedDatasetWriter, bin_path, idx_path, token_dtype
from est_megatron.data.tokenizer import TokenizerSpec
from est_megatron.errors import UsageError

MANIFEST_VERSION = 1
# An encoded chunk: path, first record, records, bytes, document lengths, tokens, filtered counts, faults.
Encoded = Tuple[str, int, int, int, np.ndarray, np.ndarray, collections.Counter, List[Tuple[str, str, str]]]


def manifest_path(prefix: str) -> str:
    return f"{prefix}.manifest.json"


def shard_prefix(prefix: str, index: int) -> str:
    return f"{prefix}_{index:05d}"


class ChunkEncoder:
    """Turns a chunk into (lengths, tokens) with EOS/BOS added; one per process."""

    def __init__(self, tokenizer_spec: TokenizerSpec, options: sources.SourceOptions, append_eod: bool,
                 add_bos: bool) -> None:
        self.tokenizer = tokenizer_spec.load()
        self.options, self.append_eod, self.add_bos = options, append_eod, add_bos
        self.dtype = token_dtype(self.tokenizer.vocab_size)

    def __call__(self, chunk: sources.Chunk) -> Encoded:
        texts, filtered, faults = sources.chunk_texts(chunk, self.options)
        ids = self.tokenizer.encode_batch(texts, num_threads=1) if texts else []
        docs = [d for d in ids if d]
        filtered["empty"] += len(ids) - len(docs)
        extra = int(self.append_eod) + int(self.add_bos)
        lengths = np.fromiter((len(d) + extra for d in docs), dtype=np.int64, count=len(docs))
        if extra:
            before = [[self.tokenizer.bos_id]] if self.add_bos else []
            after = [[self.tokenizer.eos_id]] if self.append_eod else []
            docs = [piece for d in docs for piece in (*before, d, *after)]
        tokens = np.fromiter(itertools.chain.from_iterable(docs), dtype=self.dtype, count=int(lengths.sum()))
        return chunk.path, chunk.first, len(chunk.items), chunk.nbytes, lengths, tokens, filtered, faults


_encoder = None


def _init_worker(*args: Any) -> None:
    global _encoder
    _encoder = ChunkEncoder(*args)


def _encode_in_worker(chunk: sources.Chunk) -> Encoded:
    return _encoder(chunk)


def _ordered_results(encoder_args: Tuple[Any, ...], chunks: Iterable[sources.Chunk],
                     workers: int) -> Iterator[Encoded]:
    """Encoded chunks in input order; N workers through a bounded in-order window of async results."""
    if workers == 1:
        encoder = ChunkEncoder(*encoder_args)
        yield from map(encoder, chunks)
        return
    with multiprocessing.get_context("fork").Pool(workers, _init_worker, encoder_args) as pool:
        window = collections.deque()
        for chunk in chunks:
            window.append(pool.apply_async(_encode_in_worker, (chunk,)))
            if len(window) >= 4 * workers:
                yield window.popleft().get()
        while window:
            yield window.popleft().get()


class ShardedWriter:
    """Writes documents into PREFIX_00000, PREFIX_00001, ... closing a shard once it has shard_size tokens."""

    def __init__(self, prefix: str, dtype: np.dtype, shard_size: int) -> None:
        self.prefix, self.dtype, self.shard_size = prefix, dtype, shard_size
        self.shards = []
        self.max_token_id = -1
        self._writer = None

    def add(self, lengths: np.ndarray, tokens: np.ndarray) -> None:
        if tokens.size:
            self.max_token_id = max(self.max_token_id, int(tokens.max()))
        start_doc, start_tok = 0, 0
        while start_doc < lengths.size:
            if self._writer is None:
                self._writer = IndexedDatasetWriter(shard_prefix(self.prefix, len(self.shards)), self.dtype)
            room = self.shard_size - self._writer.num_tokens
            cum = np.cumsum(lengths[start_doc:])
            take = min(int(np.searchsorted(cum, room, side="left")) + 1, cum.size)
            n_tok = int(cum[take - 1])
            self._writer.add_documents(tokens[start_tok:start_tok + n_tok], lengths[start_doc:start_doc + take])
            start_doc, start_tok = start_doc + take, start_tok + n_tok
            if self._writer.num_tokens >= self.shard_size:
                self._close()

    def _close(self) -> None:
        w = self._writer
        w.finalize()
        self.shards.append({"prefix": os.path.basename(w.prefix), "documents": w.num_documents,
                            "tokens": w.num_tokens})
        self._writer = None

    def finish(self) -> None:
        if self._writer is not None:
            self._close()

    def abort(self) -> None:
        """Remove what this run wrote: the open shard's temporary files and every finished shard."""
        if self._writer is not None:
            self._writer.abort()
        for index in range(len(self.shards)):
            for path in (bin_path(shard_prefix(self.prefix, index)), idx_path(shard_prefix(self.prefix, index))):
                if os.path.exists(path):
                    os.remove(path)
        self.shards = []


def preprocess(inputs: Sequence[str], options: sources.SourceOptions, tokenizer: Union[TokenizerSpec, str],
               output_prefix: str, workers: int = 1, shard_size: int = 1 << 30, append_eod: bool = True,
               add_bos: bool = False, progress: bool = True) -> Dict[str, Any]:
    """Run the whole pipeline; returns the manifest (also written to PREFIX.manifest.json).

    `tokenizer` is a TokenizerSpec, or the path of a SentencePiece model."""
    if workers < 1:
        raise UsageError(f"--workers {workers} must be at least 1")
    if shard_size < 1:
        raise UsageError(f"--shard-size {shard_size} must be a positive number of tokens")
    started = time.time()
    spec = TokenizerSpec(model=tokenizer) if isinstance(tokenizer, str) else tokenizer
    tokenizer = spec.load()
    if add_bos and tokenizer.bos_id < 0:
        raise UsageError(f"--add-bos: the {spec.type} has no BOS token; drop --add-bos")
    dtype = token_dtype(tokenizer.vocab_size)
    out_dir = os.path.dirname(os.path.abspath(output_prefix))
    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(manifest_path(output_prefix)):
        os.remove(manifest_path(output_prefix))  # an old manifest must never describe the new shards
    files = sources.discover(inputs, options.format)
    bad = sources.BadInputs(options.skip_bad_records)
    skipped = collections.Counter()
    per_source = {}
    writer = ShardedWriter(output_prefix, dtype, shard_size)
    bar = None  # created at the first result, so an early error prints nothing but its own line
    n_docs = n_tokens = n_bytes = 0
    encoder_args = (spec, options, append_eod, add_bos)
    try:
        for path, first, n_records, nbytes, lengths, tokens, filtered, faults in _ordered_results(
                encoder_args, sources.iter_chunks(files, options, bad), workers):
            for where, reason, problem in faults:
                bad.report(path, where, reason, problem)
            writer.add(lengths, tokens)
            skipped.update(filtered)
            src = per_source.setdefault(path, {"path": path, "records": 0, "documents": 0, "tokens": 0})
            src["records"] += n_records
            src["documents"] += int(lengths.size)
            src["tokens"] += int(tokens.size)
            n_docs, n_tokens, n_bytes = n_docs + lengths.size, n_tokens + tokens.size, n_bytes + nbytes
            elapsed = max(time.time() - started, 1e-9)
            if bar is None:
                bar = tqdm(desc="preprocess", unit="doc", disable=not progress, dynamic_ncols=True)
            bar.update(int(lengths.size))
            bar.set_postfix_str(f"{n_tokens / elapsed:,.0f} tok/s {n_bytes / elapsed / 1e6:.1f} MB/s", refresh=False)
        writer.finish()
    except BaseException:
        writer.abort()
        if bar is not None:
            bar.leave = False  # wipe the bar so the error is the one line left
            bar.close()
        raise
    if bar is not None:
        bar.close()
    if n_docs == 0:
        raise UsageError(f"no documents came out of {', '.join(inputs)} (all records empty, filtered or bad); "
                         f"check --input, --format and the set filters")
    skipped.update(bad.counts)
    elapsed = time.time() - started
    manifest = {
        "format": "est_megatron shard manifest",
        "version": MANIFEST_VERSION,
        "dtype": dtype.name,
        "shards": writer.shards,
        "documents": int(n_docs),
        "tokens": int(n_tokens),
        "max_token_id": writer.max_token_id,
        "append_eod": append_eod,
        "add_bos": add_bos,
        "tokenizer": {**spec.to_json(), "sha256": tokenizer.sha256, "vocab_size": tokenizer.vocab_size,
                      "eos_id": tokenizer.eos_id, "bos_id": tokenizer.bos_id},
        "input_format": options.format,
        "sources": [per_source.get(p, {"path": p, "records": 0, "documents": 0, "tokens": 0}) for p in files],
        "skipped": {reason: n for reason, n in sorted(skipped.items()) if n},
        "bad_record_examples": bad.examples,
        "run": {"created": datetime.datetime.now().isoformat(timespec="seconds"), "elapsed_s": round(elapsed, 3),
                "workers": workers, "tokens_per_s": round(n_tokens / max(elapsed, 1e-9), 1)},
    }
    save_json(manifest_path(output_prefix), manifest)
    return manifest


def summary_line(manifest: Dict[str, Any]) -> str:
    skipped = ", ".join(f"{k} {v}" for k, v in manifest["skipped"].items()) or "none"
    return (f"wrote {len(manifest['shards'])} shard(s): {manifest['documents']:,} documents, "
            f"{manifest['tokens']:,} {manifest['dtype']} tokens in {manifest['run']['elapsed_s']:.1f}s "
            f"({manifest['run']['tokens_per_s']:,.0f} tok/s); skipped: {skipped}")
