"""Raw text to Megatron shards: tokenize records in parallel, write PREFIX_NNNNN.bin/.idx and PREFIX.manifest.json.

Work is cut into ordered chunks (sources.py). With N > 1 workers the chunks go to a process pool through a
bounded window of `apply_async` results consumed in submission order, i.e. Pool.imap's ordering without its
eager reading of the whole input into memory; the output is byte-identical for any N. Each worker parses,
filters and batch-encodes its chunk (with one tokenizer thread, so N workers use N cores and 1 worker uses
one) and returns one numpy array of tokens plus document lengths, so the writer never loops per token.

Big corpora: `--num-parts N --part K` runs one contiguous, byte-balanced share of the input files (parts.py;
tools/merge_parts.py joins the parts), and a killed run resumes: the same command reads its progress record
(progress_record.py) and goes on from the last input-file boundary (or the last minute) with the output an
uninterrupted run writes. The manifest, written last, marks a run complete and records the largest token id,
which training checks against its tokenizer.
"""
import collections
import dataclasses
import datetime
import itertools
import json
import multiprocessing
import os
import signal
import sys
import time
from typing import Any, Dict, Iterable, Iterator, List, Sequence, Tuple, Union

import numpy as np
from tqdm import tqdm

from est_megatron.data import parts, sources
from est_megatron.data.atomic import save_json
from est_megatron.data.indexed import token_dtype
from est_megatron.data.progress_record import ProgressRecord
from est_megatron.data.shard_writer import ShardedWriter, manifest_path, remove_shards
from est_megatron.data.tokenizer import TokenizerSpec
from est_megatron.errors import UsageError

MANIFEST_VERSION = 1
RECORD_SECONDS = 60.0  # the progress record is also written this often within one input file
# Test hook: seconds to wait after each chunk, so that a test's kill lands while the run is writing.
TEST_DELAY_S = float(os.environ.get("EST_MEGATRON_TEST_PREPROCESS_DELAY", "0"))


@dataclasses.dataclass
class Encoded:
    """A tokenized chunk: its place in the input, document lengths, tokens, filtered counts and faults."""

    path: str
    end: int
    fraction: float
    nbytes: int
    records: int
    lengths: np.ndarray
    tokens: np.ndarray
    filtered: collections.Counter
    faults: List[Tuple[str, str, str]]


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
        records = 0 if chunk.kind == "faults" else len(chunk.items)
        return Encoded(chunk.path, chunk.end, chunk.fraction, chunk.nbytes, records, lengths, tokens, filtered,
                       faults)


_encoder = None


def _init_worker(*args: Any) -> None:
    """A pool worker: ended by the pool (SIGTERM, default action), never by Ctrl-C, which the main process
    handles; the main process's own handlers are not inherited."""
    global _encoder
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
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


def settings_of(spec_sha256: str, options: sources.SourceOptions, append_eod: bool, add_bos: bool, shard_size: int,
                dtype: np.dtype, files_sha256: str, part: int, num_parts: int) -> Dict[str, Any]:
    """What decides the output: a resumed run and the parts of one corpus must agree on all of it."""
    filters = {k: v for k, v in dataclasses.asdict(options).items() if k not in ("skip_bad_records", "hf_streaming")}
    return {"tokenizer_sha256": spec_sha256, "options": {**filters, "keep_sets": list(options.keep_sets),
                                                         "exclude_sets": list(options.exclude_sets)},
            "append_eod": append_eod, "add_bos": add_bos, "shard_size": shard_size, "dtype": dtype.name,
            "files_sha256": files_sha256, "part": [part, num_parts]}


def _source_entry(files: Sequence[str], sizes: Sequence[int], index: int) -> Dict[str, Any]:
    path, size = (files[index], sizes[index]) if index < len(files) else ("", 0)
    return {"path": path, "bytes": size, "records": 0, "documents": 0, "tokens": 0}


def _check_read_files(state: Dict[str, Any], files: Sequence[str], sizes: Sequence[int], prefix: str) -> None:
    """The files an interrupted run read are still the same (paths and sizes), so its output stays valid."""
    read = state["finished_sources"] + ([state["current_source"]] if state.get("current_source") else [])
    for i, source in enumerate(read):
        if i >= len(files) or (files[i], sizes[i]) != (source["path"], source["bytes"]):
            raise UsageError(f"{source['path']} (input file {i}) changed, or the list of input files did, since "
                             f"the interrupted run of {prefix} read it; restore it, or pass --restart to start over")


def preprocess(inputs: Sequence[str], options: sources.SourceOptions, tokenizer: Union[TokenizerSpec, str],
               output_prefix: str, workers: int = 1, shard_size: int = 1 << 30, append_eod: bool = True,
               add_bos: bool = False, progress: bool = True, num_parts: int = 1, part: int = 0,
               restart: bool = False) -> Dict[str, Any]:
    """Run the whole pipeline (or part `part` of `num_parts`); returns the manifest (also written to disk).

    `tokenizer` is a TokenizerSpec, or the path of a SentencePiece model. An interrupted run of the same output
    prefix is resumed (or, with `restart`, discarded)."""
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
    all_files = sources.discover(inputs, options.format)
    if options.format == "hf" and num_parts > 1:
        raise UsageError("--num-parts splits input files, and --format hf reads one dataset; preprocess each of "
                         "its data files as --format jsonl/parquet parts instead")
    all_sizes = parts.file_sizes(all_files)
    first_file, stop_file = parts.share(all_sizes, num_parts, part)
    files, sizes = all_files[first_file:stop_file], all_sizes[first_file:stop_file]
    prefix = parts.part_prefix(output_prefix, part, num_parts)
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    settings = settings_of(tokenizer.sha256, options, append_eod, add_bos, shard_size, dtype,
                           parts.files_digest(all_files, all_sizes), part, num_parts)
    # One run resumes if the files it read are unchanged; a part also needs the others' cut (all the sizes).
    record = ProgressRecord(prefix, {k: v for k, v in settings.items() if num_parts > 1 or k != "files_sha256"})
    if restart:
        record.remove()
        remove_shards(prefix)
    done = None if restart else _complete_manifest(prefix, settings)
    if done is not None:
        print(f"{manifest_path(prefix)} is already complete with these settings; nothing to do (--restart "
              f"writes it again)", file=sys.stderr)
        return done
    if os.path.exists(manifest_path(prefix)):
        os.remove(manifest_path(prefix))  # an old manifest must never describe the new shards
    state = record.load() or {}
    if state:
        _check_read_files(state, files, sizes, prefix)
    writer = ShardedWriter(prefix, dtype, shard_size, state.get("writer"))
    bad = sources.BadInputs(options.skip_bad_records)
    bad.counts.update(state.get("bad_counts", {}))
    bad.examples.extend(state.get("bad_examples", []))
    skipped = collections.Counter(state.get("skipped", {}))
    finished = state.get("finished_sources", [])
    index = state.get("next_file", 0)  # the file being read
    current = state.get("current_source") or _source_entry(files, sizes, index)
    n_docs, n_tokens, n_bytes = state.get("documents", 0), state.get("tokens", 0), state.get("bytes", 0)
    elapsed_before, attempts = state.get("elapsed_s", 0.0), state.get("attempts", 0) + 1
    encoder_args = (spec, options, append_eod, add_bos)
    bar = None  # created at the first result, so an early error prints nothing but its own line
    last_saved = time.monotonic()
    position = {path: i for i, path in enumerate(files)}
    bytes_before = list(itertools.accumulate(sizes, initial=0))  # on-disk bytes of the files before each file
    done = state.get("input_done", 0)  # the bar's position: input bytes read (a resumed run starts where it stood)

    def save(next_file: int, next_record: int) -> None:
        writer.sync()
        record.save({"next_file": next_file, "next_record": next_record, "finished_files": len(finished),
                     "current_source": current if next_record else None, "writer": writer.state(),
                     "documents": n_docs, "tokens": n_tokens, "bytes": n_bytes, "skipped": dict(skipped),
                     "bad_counts": dict(bad.counts), "bad_examples": bad.examples,
                     "elapsed_s": elapsed_before + time.time() - started, "attempts": attempts,
                     "input_done": done})

    def finish_files(until: int) -> None:
        """Files before `until` are read: their counts go to the record's list of finished files."""
        nonlocal index, current
        while index < until:
            finished.append(current)
            record.finished_file(current)
            index += 1
            current = _source_entry(files, sizes, index)

    try:
        for enc in _ordered_results(encoder_args, sources.iter_chunks(files[index:], options,
                                                                      state.get("next_record", 0)), workers):
            file_index = position[enc.path]
            if file_index != index:
                finish_files(file_index)
                save(index, 0)
                last_saved = time.monotonic()
            for where, reason, problem in enc.faults:
                bad.report(enc.path, where, reason, problem)
            writer.add(enc.lengths, enc.tokens)
            skipped.update(enc.filtered)
            current["records"] += enc.records
            current["documents"] += int(enc.lengths.size)
            current["tokens"] += int(enc.tokens.size)
            n_docs, n_tokens, n_bytes = n_docs + enc.lengths.size, n_tokens + enc.tokens.size, n_bytes + enc.nbytes
            if TEST_DELAY_S:
                time.sleep(TEST_DELAY_S)
            if bar is None:  # input bytes read, with MB/s and an ETA (a streamed dataset: text bytes, no ETA)
                bar = tqdm(desc="preprocess", total=bytes_before[-1] or None, unit="B", unit_scale=True,
                           initial=done, disable=not progress, dynamic_ncols=True)
            done = bytes_before[index] + (enc.fraction or 0.0) * sizes[index] if bytes_before[-1] else n_bytes
            if enc.end and time.monotonic() - last_saved > RECORD_SECONDS:
                save(index, enc.end)
                last_saved = time.monotonic()
            bar.update(max(done - bar.n, 0))
            rate = (n_tokens - state.get("tokens", 0)) / max(time.time() - started, 1e-9)
            bar.set_postfix_str(f"{rate:,.0f} tok/s, {n_docs:,} docs", refresh=False)
        finish_files(len(files))
        writer.finish()
    except BaseException:
        writer.close()
        record.close()
        if bar is not None:
            bar.leave = False  # wipe the bar so the error is the one line left
            bar.close()
        raise
    if bar is not None:
        bar.close()
    if n_docs == 0:
        record.remove()
        raise UsageError(f"no documents came out of {', '.join(inputs)} (all records empty, filtered or bad); "
                         f"check --input, --format and the set filters")
    skipped.update(bad.counts)
    elapsed = elapsed_before + time.time() - started
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
        "settings": settings,
        "sources": finished,
        "skipped": {reason: n for reason, n in sorted(skipped.items()) if n},
        "bad_record_examples": bad.examples,
        "run": {"created": datetime.datetime.now().isoformat(timespec="seconds"), "elapsed_s": round(elapsed, 3),
                "attempts": attempts, "workers": workers, "tokens_per_s": round(n_tokens / max(elapsed, 1e-9), 1)},
    }
    save_json(manifest_path(prefix), manifest)
    record.remove()
    return manifest


def _complete_manifest(prefix: str, settings: Dict[str, Any]) -> Union[Dict[str, Any], None]:
    """The manifest of a finished run of PREFIX with exactly these settings, if there is one."""
    try:
        with open(manifest_path(prefix)) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("settings") == settings else None


def summary_line(manifest: Dict[str, Any]) -> str:
    skipped = ", ".join(f"{k} {v}" for k, v in manifest["skipped"].items()) or "none"
    attempts = manifest["run"].get("attempts", 1)
    resumed = f", over {attempts} runs (resumed)" if attempts > 1 else ""
    return (f"wrote {len(manifest['shards'])} shard(s): {manifest['documents']:,} documents, "
            f"{manifest['tokens']:,} {manifest['dtype']} tokens in {manifest['run']['elapsed_s']:.1f}s "
            f"({manifest['run']['tokens_per_s']:,.0f} tok/s{resumed}); skipped: {skipped}")
