"""Raw text inputs: find the files of a corpus and cut them into chunks of records for the tokenizer workers.

Formats: SlimPajama trees (`*.jsonl.zst`/`*.jsonl`, `{"text", "meta": {"redpajama_set_name"}}`, RedPajamaGithub
dropped by default as TinyLlama did), Starcoder trees (`*.parquet`, column `content`), generic jsonl and parquet,
and Hugging Face `datasets`. Files are read in sorted order so the output does not depend on directory listing
order. JSON lines are parsed in the workers (`chunk_texts`), so the main process only decompresses and splits
lines; file-level faults (missing file, truncated zstd, missing column) are found here, record-level faults
(bad JSON, no text field) in `chunk_texts`. Both go to a `BadInputs`, which raises or counts them.
"""
import argparse
import collections
import dataclasses
import glob
import json
import os
from typing import BinaryIO, Iterator, List, Optional, Sequence, Tuple

import zstandard

from est_megatron.errors import UsageError

FORMATS = ("slimpajama", "starcoder", "jsonl", "parquet", "hf")
EXTENSIONS = {
    "slimpajama": (".jsonl.zst", ".jsonl"),
    "jsonl": (".jsonl.zst", ".jsonl"),
    "starcoder": (".parquet",),
    "parquet": (".parquet",),
}
DEFAULT_EXCLUDED_SETS = ("RedPajamaGithub",)
CHUNK_BYTES = 1 << 18
CHUNK_RECORDS = 1024


@dataclasses.dataclass(frozen=True)
class SourceOptions:
    """How records are read and filtered; shared by preprocessing and tokenizer training."""

    format: str
    json_key: str = "text"
    column: str = "text"
    hf_split: str = "train"
    hf_column: str = "text"
    hf_streaming: bool = False
    keep_sets: tuple = ()
    exclude_sets: tuple = DEFAULT_EXCLUDED_SETS
    skip_bad_records: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise UsageError(f"unknown --format {self.format!r}; use one of {', '.join(FORMATS)}")

    @property
    def text_key(self) -> str:
        return "text" if self.format == "slimpajama" else self.json_key

    @property
    def text_column(self) -> str:
        return {"starcoder": "content", "hf": self.hf_column}.get(self.format, self.column)


def add_source_args(parser: argparse.ArgumentParser) -> None:
    """The input flags shared by tools/preprocess_data.py and tools/train_tokenizer.py."""
    parser.add_argument("--input", action="append", required=True,
                        help="file, folder (searched recursively) or glob; repeatable. For --format hf: a dataset "
                             "name or a folder written by save_to_disk")
    parser.add_argument("--format", choices=FORMATS, default="jsonl",
                        help="slimpajama (*.jsonl.zst/*.jsonl trees), starcoder (*.parquet trees, column "
                             "content), jsonl, parquet, or hf (a Hugging Face dataset)")
    parser.add_argument("--json-key", default="text", help="text field of --format jsonl records")
    parser.add_argument("--column", default="text", help="text column of --format parquet files")
    parser.add_argument("--hf-split", default="train", help="split of a --format hf dataset")
    parser.add_argument("--hf-column", default="text", help="text column of a --format hf dataset")
    parser.add_argument("--hf-streaming", action="store_true",
                        help="--format hf: stream the dataset (datasets' streaming=True) instead of downloading and "
                             "storing it whole, for a dataset larger than the disk")
    parser.add_argument("--keep-sets", nargs="+", default=[],
                        help="SlimPajama: keep only these redpajama_set_name values (overrides --exclude-sets)")
    parser.add_argument("--exclude-sets", nargs="*", default=list(DEFAULT_EXCLUDED_SETS),
                        help="SlimPajama: drop these sets (default: RedPajamaGithub; pass nothing to keep all)")
    parser.add_argument("--skip-bad-records", action="store_true",
                        help="skip, count and report bad records/files instead of stopping at the first one")


def options_from_args(args: argparse.Namespace) -> "SourceOptions":
    """SourceOptions from the flags of `add_source_args`."""
    return SourceOptions(format=args.format, json_key=args.json_key, column=args.column, hf_split=args.hf_split,
                         hf_column=args.hf_column, hf_streaming=args.hf_streaming, keep_sets=tuple(args.keep_sets),
                         exclude_sets=tuple(args.exclude_sets), skip_bad_records=args.skip_bad_records)


@dataclasses.dataclass
class Chunk:
    """A run of consecutive records of one file: raw JSON lines (kind 'lines'), texts (kind 'texts'), or the
    faults found reading the file (kind 'faults': (where, reason, problem) triples), which travel in order with
    the records so that counts are taken where the records are consumed."""

    path: str
    first: int  # line number (1-based) of the first line, or row number (0-based) of the first record
    kind: str
    items: list
    nbytes: int = 0
    end: int = 0  # records of the file read through this chunk (where a resumed run starts reading it)
    fraction: Optional[float] = None  # share of the file's bytes read through this chunk, when known


class BadInputs:
    """Collects faulty inputs: raises a UsageError naming file and place, or with skip on, counts them."""

    MAX_EXAMPLES = 100

    def __init__(self, skip: bool) -> None:
        self.skip = skip
        self.counts = collections.Counter()
        self.examples = []

    def report(self, path: str, where: str, reason: str, problem: str) -> None:
        message = f"{path}{', ' + where if where else ''}: {problem}"
        if not self.skip:
            raise UsageError(f"{message}; fix or remove it, or pass --skip-bad-records to skip and count it")
        self.counts[reason] += 1
        if len(self.examples) < self.MAX_EXAMPLES:
            self.examples.append(message)


def discover(inputs: Sequence[str], fmt: str) -> List[str]:
    """The files named by --input (files, folders searched recursively, globs), sorted and de-duplicated.

    Named files are kept even when missing, so that the reader reports them (or skips them with the others).
    """
    if not inputs:
        raise UsageError("no --input given; pass a file, folder or glob (repeatable)")
    if fmt == "hf":
        return list(inputs)
    extensions = EXTENSIONS[fmt]

    def walk(folder: str) -> List[str]:
        return [os.path.join(root, name) for root, _, names in os.walk(folder)
                for name in names if name.endswith(extensions)]

    files = set()
    for pattern in inputs:
        if os.path.isdir(pattern):
            found = walk(pattern)
            if not found:
                raise UsageError(f"folder {pattern} holds no {'/'.join(extensions)} files for --format {fmt}; "
                                 f"check --input and --format")
            files.update(found)
        elif glob.has_magic(pattern):  # a match may be a file, or a folder searched like one named directly
            matches = glob.glob(pattern, recursive=True)
            found = [f for m in matches for f in (walk(m) if os.path.isdir(m) else [m]) if os.path.isfile(f)]
            if not found:
                raise UsageError(f"--input {pattern} matches no {'/'.join(extensions)} files for --format {fmt} "
                                 f"({len(matches)} paths matched); check the pattern and --format")
            files.update(found)
        else:
            files.add(pattern)
    return sorted(files)


def iter_chunks(files: Sequence[str], options: SourceOptions, skip_records: int = 0) -> Iterator[Chunk]:
    """Chunks of records of all files, in order; the first `skip_records` records of the first file are read
    past (a resumed run), not returned."""
    for index, path in enumerate(files):
        skip = skip_records if index == 0 else 0
        if options.format == "hf":
            yield from _hf_chunks(path, options, skip)
        elif not os.path.isfile(path) or not os.access(path, os.R_OK):
            yield _fault(path, "", "unreadable_file", "file does not exist or cannot be read")
        elif path.endswith(".parquet"):
            yield from _parquet_chunks(path, options.text_column, skip)
        else:
            yield from _line_chunks(path, skip)


def _fault(path: str, where: str, reason: str, problem: str) -> Chunk:
    return Chunk(path, 0, "faults", [(where, reason, problem)])


def _line_chunks(path: str, skip: int) -> Iterator[Chunk]:
    size = max(os.path.getsize(path), 1)
    faults = []
    try:
        with open(path, "rb") as f:
            lines = f if not path.endswith(".zst") else _zstd_lines(path, f, faults)
            first, batch, nbytes, line_no = skip + 1, [], 0, 0
            for line in lines:
                line_no += 1
                if line_no <= skip:
                    continue
                batch.append(line)
                nbytes += len(line)
                if nbytes >= CHUNK_BYTES or len(batch) >= CHUNK_RECORDS:
                    yield Chunk(path, first, "lines", batch, nbytes, line_no, min(f.tell() / size, 1.0))
                    first, batch, nbytes = line_no + 1, [], 0
            if batch:
                yield Chunk(path, first, "lines", batch, nbytes, line_no, 1.0)
    except OSError as err:
        faults.append(("", "unreadable_file", f"cannot be read ({err.strerror or err})"))
    for where, reason, problem in faults:
        yield _fault(path, where, reason, problem)


def _zstd_lines(path: str, f: BinaryIO, faults: list) -> Iterator[bytes]:
    """Lines of a zstd stream (several frames allowed); a corrupt or truncated stream ends it with a fault."""
    decompressor = zstandard.ZstdDecompressor()
    dobj, pending, line_no, in_frame = decompressor.decompressobj(), b"", 0, False
    while True:
        block = f.read(1 << 20)
        if not block:
            break
        while block:
            in_frame = True
            try:
                out = dobj.decompress(block)
            except zstandard.ZstdError as err:
                faults.append((f"after line {line_no}", "corrupt_zstd", f"corrupt zstd data ({err})"))
                return
            block = b""
            if dobj.eof:  # a frame ended; the rest of the block starts the next frame
                block, dobj, in_frame = dobj.unused_data, decompressor.decompressobj(), False
            lines = (pending + out).split(b"\n")
            pending = lines.pop()
            line_no += len(lines)
            yield from lines
    if in_frame:
        faults.append((f"after line {line_no}", "truncated_zstd",
                       "zstd stream ends mid-frame (truncated file; the records read before the cut are kept)"))
        return
    if pending:
        yield pending


def _parquet_chunks(path: str, column: str, skip: int) -> Iterator[Chunk]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, ValueError) as err:
        yield _fault(path, "", "unreadable_file", f"is not a readable parquet file ({err})")
        return
    names = pf.schema_arrow.names
    if column not in names:
        yield _fault(path, "", "missing_column",
                     f"has no column {column!r} (columns: {', '.join(names)}); pass --column for --format parquet")
        return
    rows = max(pf.metadata.num_rows, 1)
    row = 0
    for batch in pf.iter_batches(batch_size=CHUNK_RECORDS, columns=[column]):
        texts = batch.column(0).to_pylist()
        first, row = row, row + len(texts)
        if row <= skip:
            continue
        texts = texts[max(skip - first, 0):]
        first = max(first, skip)
        yield Chunk(path, first, "texts", texts, sum(len(t) for t in texts if isinstance(t, str)), row, row / rows)


def _hf_chunks(name: str, options: SourceOptions, skip: int) -> Iterator[Chunk]:
    """A Hugging Face dataset in chunks: loaded (memory-mapped), or streamed with --hf-streaming, so that a
    dataset larger than the disk is never stored whole."""
    import datasets

    try:
        if any(os.path.isfile(os.path.join(name, marker)) for marker in ("state.json", "dataset_dict.json")):
            ds = datasets.load_from_disk(name)  # a folder written by save_to_disk
        else:
            ds = datasets.load_dataset(name, split=options.hf_split, streaming=options.hf_streaming)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as err:
        raise UsageError(f"cannot load Hugging Face dataset {name!r} ({err}); pass a dataset name, a folder of "
                         f"data files, or a folder written by Dataset.save_to_disk") from None
    if isinstance(ds, datasets.DatasetDict):
        if options.hf_split not in ds:
            raise UsageError(f"dataset {name} has no split {options.hf_split!r} (splits: {', '.join(ds)}); "
                             f"pass --hf-split")
        ds = ds[options.hf_split]
    column = options.hf_column
    columns = ds.column_names
    if columns is not None and column not in columns:
        raise UsageError(f"dataset {name} has no column {column!r} (columns: {', '.join(columns)}); "
                         f"pass --hf-column")
    if isinstance(ds, datasets.Dataset):
        rows = max(len(ds), 1)
        for row in range(skip, len(ds), CHUNK_RECORDS):
            texts = ds[row:row + CHUNK_RECORDS][column]
            end = row + len(texts)
            yield Chunk(name, row, "texts", texts, sum(len(t) for t in texts if isinstance(t, str)), end, end / rows)
        return
    row = skip
    stream = ds.skip(skip) if skip else ds
    for batch in stream.iter(batch_size=CHUNK_RECORDS):
        if column not in batch:
            raise UsageError(f"dataset {name} has no column {column!r} (columns: {', '.join(batch)}); "
                             f"pass --hf-column")
        texts = batch[column]
        yield Chunk(name, row, "texts", texts, sum(len(t) for t in texts if isinstance(t, str)), row + len(texts))
        row += len(texts)


def chunk_texts(chunk: Chunk, options: SourceOptions) \
        -> Tuple[List[str], collections.Counter, List[Tuple[str, str, str]]]:
    """The texts of a chunk's records that pass the filters, with counts of filtered records and faults.

    Returns (texts, filtered: Counter of reasons, faults: list of (where, reason, problem)).
    """
    filtered, faults = collections.Counter(), []
    if chunk.kind == "faults":
        return [], filtered, list(chunk.items)
    if chunk.kind == "texts":
        texts = []
        for i, text in enumerate(chunk.items):
            if isinstance(text, str):
                texts.append(text)
            elif text is None:
                filtered["empty"] += 1
            else:
                faults.append((f"row {chunk.first + i}", "bad_record", f"value is {type(text).__name__}, not text"))
        return texts, filtered, faults
    texts, key, slim = [], options.text_key, options.format == "slimpajama"
    keep, exclude = set(options.keep_sets), set(options.exclude_sets)
    for i, line in enumerate(chunk.items):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            faults.append((f"line {chunk.first + i}", "invalid_json", f"invalid JSON ({err})"))
            continue
        text = record.get(key) if isinstance(record, dict) else None
        if not isinstance(text, str):
            faults.append((f"line {chunk.first + i}", "bad_record", f"record has no string field {key!r}"
                           + ("" if slim else "; pass --json-key")))
            continue
        if slim:
            meta = record.get("meta")
            name = meta.get("redpajama_set_name") if isinstance(meta, dict) else None
            if (keep and name not in keep) or (not keep and name in exclude):
                filtered[f"set:{name}"] += 1
                continue
        texts.append(text)
    return texts, filtered, faults


def iter_texts(files: Sequence[str], options: SourceOptions, bad: BadInputs) -> Iterator[str]:
    """All texts in order, in this process (for tokenizer training)."""
    for chunk in iter_chunks(files, options):
        texts, _, faults = chunk_texts(chunk, options)
        for where, reason, problem in faults:
            bad.report(chunk.path, where, reason, problem)
        yield from texts
