"""Preprocessing at SlimPajama's size: split into parts and merged, killed and resumed, streamed, with progress."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tqdm import tqdm

from data_fixtures import REPO, load_tool, slimpajama_records, tokenizer_model, write_jsonl  # noqa: F401
from est_megatron.data import parts, preprocess as preprocess_module, sources
from est_megatron.data.corpus import Corpus
from est_megatron.data.preprocess import preprocess
from est_megatron.data.progress_record import record_path

tool = load_tool("tools/preprocess_data.py")
merge_tool = load_tool("tools/merge_parts.py")
SHARD = "3000"  # tokens: several shards, so shard boundaries fall inside files and across parts


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Held-out-style SlimPajama (zst and plain, uneven sizes) and Starcoder (parquet) trees."""
    root = tmp_path_factory.mktemp("raw")
    for i in range(7):
        compress = i % 3 != 0
        write_jsonl(str(root / "slim" / f"chunk{i % 2}" / f"example_train_{i}.jsonl{'.zst' if compress else ''}"),
                    slimpajama_records(40 + 25 * i, seed=10 + i), compress=compress)
    rng = random.Random(5)
    for lang in ("python", "rust"):
        for i in range(2):
            code = [f"def f{j}():\n    return {rng.randint(0, 99)} + alpha * beta\n" * rng.randint(1, 6)
                    for j in range(30 + 20 * i)]
            os.makedirs(root / "star" / lang, exist_ok=True)
            pq.write_table(pa.table({"content": code}), str(root / "star" / lang / f"train-{i}.parquet"))
    return root


def run(tok, inputs, prefix, fmt, *extra):
    argv = ["--tokenizer-model", tok, "--output-prefix", str(prefix), "--format", fmt, "--shard-size", SHARD,
            "--no-progress", *extra]
    for i in inputs:
        argv += ["--input", str(i)]
    return tool.main(argv)


def documents(prefix):
    c = Corpus(str(prefix))
    return [np.array(c.tokens(d)) for d in range(len(c))]


def shard_bytes(prefix, manifest):
    folder = os.path.dirname(str(prefix))
    out = []
    for shard in manifest["shards"]:
        for ext in (".bin", ".idx"):
            with open(os.path.join(folder, shard["prefix"] + ext), "rb") as f:
                out.append(f.read())
    return out


def test_share_is_contiguous_byte_balanced_and_never_empty():
    sizes = [100, 1, 1, 50, 50, 1, 97]
    for n in range(1, len(sizes) + 1):
        cuts = [parts.share(sizes, n, k) for k in range(n)]
        assert cuts[0][0] == 0 and cuts[-1][1] == len(sizes)
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(cuts, cuts[1:] + [(len(sizes), len(sizes) + 1)]))
    assert [parts.share(sizes, 3, k) for k in range(3)] == [(0, 1), (1, 5), (5, 7)]
    with pytest.raises(ValueError, match="more than the 7 input files"):
        parts.share(sizes, 8, 0)


@pytest.mark.parametrize("fmt,folder", [("slimpajama", "slim"), ("starcoder", "star")])
def test_parts_merged_equal_one_machine(tokenizer_model, corpus, tmp_path, fmt, folder):  # noqa: F811
    whole = run(tokenizer_model, [corpus / folder], tmp_path / "one" / "c", fmt)
    expected = documents(tmp_path / "one" / "c")
    assert len(whole["shards"]) > 2
    for n in (2, 3):
        prefix = tmp_path / f"n{n}" / "c"
        for k in reversed(range(n)):  # the order the parts finish in does not matter
            part = run(tokenizer_model, [corpus / folder], prefix, fmt, "--num-parts", str(n), "--part", str(k))
            assert part["settings"]["part"] == [k, n]
        with pytest.raises(ValueError, match="names no data"):  # the parts are one data path once merged
            Corpus(str(prefix))
        merged = merge_tool.main(["--output-prefix", str(prefix)])
        assert (merged["documents"], merged["tokens"]) == (whole["documents"], whole["tokens"])
        assert merged["skipped"] == whole["skipped"] and merged["max_token_id"] == whole["max_token_id"]
        assert [s["path"] for s in merged["sources"]] == [s["path"] for s in whole["sources"]]
        got = documents(prefix)
        assert len(got) == len(expected) and all(np.array_equal(a, b) for a, b in zip(got, expected))
    assert megatron_documents(prefix, merged) == [a.tolist() for a in expected]


def megatron_documents(prefix, manifest):
    """The merged corpus read shard by shard with megatron-core's reader (when installed), in manifest order."""
    indexed = pytest.importorskip("megatron.core.datasets.indexed_dataset")
    docs = []
    for shard in manifest["shards"]:
        ds = indexed.IndexedDataset(os.path.join(os.path.dirname(str(prefix)), shard["prefix"]), mmap=True)
        docs += [ds[i].tolist() for i in range(len(ds))]
    return docs


def test_merge_refuses_missing_or_mismatched_parts(tokenizer_model, corpus, tmp_path, capsys):  # noqa: F811
    prefix = tmp_path / "c"
    run(tokenizer_model, [corpus / "slim"], prefix, "slimpajama", "--num-parts", "3", "--part", "0")
    run(tokenizer_model, [corpus / "slim"], prefix, "slimpajama", "--num-parts", "3", "--part", "2",
        "--exclude-sets")
    with pytest.raises(SystemExit) as info:
        merge_tool.main(["--output-prefix", str(prefix)])
    assert info.value.code == 2 and "part(s) 1 of 3 have no manifest" in capsys.readouterr().err
    run(tokenizer_model, [corpus / "slim"], prefix, "slimpajama", "--num-parts", "3", "--part", "1")
    with pytest.raises(SystemExit):
        merge_tool.main(["--output-prefix", str(prefix)])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "part 2" in err and "input format or filters" in err


def test_a_killed_run_resumes_to_identical_output(tokenizer_model, corpus, tmp_path):  # noqa: F811
    """kill -9 and SIGTERM at random points, each followed by the same command: the output of one clean run."""
    clean = run(tokenizer_model, [corpus / "slim"], tmp_path / "clean" / "c", "slimpajama", "--workers", "2")
    prefix = tmp_path / "killed" / "c"
    cmd = [sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), "--tokenizer-model", tokenizer_model,
           "--output-prefix", str(prefix), "--format", "slimpajama", "--shard-size", SHARD, "--input",
           str(corpus / "slim"), "--no-progress", "--workers", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", EST_MEGATRON_TEST_PREPROCESS_DELAY="0.1")
    rng = random.Random(0)
    for attempt, sig in enumerate((signal.SIGKILL, signal.SIGTERM), 1):
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while attempts_recorded(prefix) < attempt and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(sig)
        err = proc.communicate(timeout=60)[1]
        assert proc.returncode == (-9 if sig == signal.SIGKILL else 130), err
        if sig == signal.SIGTERM:
            assert err.strip().splitlines()[-1] == "stopped; run the same command again to resume"
        with open(record_path(str(prefix))) as f:
            assert json.load(f)["next_file"] >= 1
        assert not os.path.exists(f"{prefix}.manifest.json")
    changed = subprocess.run(cmd + ["--exclude-sets"], env=env, capture_output=True, text=True, timeout=60)
    assert changed.returncode == 2 and changed.stderr.count("\n") == 1
    assert "another input format or filters" in changed.stderr and "--restart" in changed.stderr
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "over 3 runs (resumed)" in done.stdout
    with open(f"{prefix}.manifest.json") as f:
        resumed = json.load(f)
    assert shard_bytes(prefix, resumed) == shard_bytes(tmp_path / "clean" / "c", clean)
    assert resumed["sources"] == clean["sources"] and resumed["skipped"] == clean["skipped"]
    assert not [n for n in os.listdir(prefix.parent) if "progress" in n or n.endswith(".partial")]
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "already complete" in again.stderr
    redone = subprocess.run(cmd + ["--restart"], env=env, capture_output=True, text=True, timeout=60)
    assert redone.returncode == 0 and "already complete" not in redone.stderr and "resumed" not in redone.stdout
    assert shard_bytes(prefix, resumed) == shard_bytes(tmp_path / "clean" / "c", clean)


def attempts_recorded(prefix):
    try:
        with open(record_path(str(prefix))) as f:
            return json.load(f)["attempts"]
    except (OSError, ValueError):
        return 0


def test_resume_inside_a_file_and_after_bad_records(tokenizer_model, corpus, tmp_path, monkeypatch):  # noqa: F811
    """A record written after every chunk (small chunks): an interruption anywhere resumes mid-file, counts intact."""
    monkeypatch.setattr(preprocess_module, "RECORD_SECONDS", -1.0)
    monkeypatch.setattr(sources, "CHUNK_RECORDS", 16)
    bad = tmp_path / "raw" / "z_bad.jsonl"
    write_jsonl(str(bad), slimpajama_records(40, seed=99))
    with open(bad, "a") as f:
        f.write('{"text": oops}\n' + json.dumps({"text": "after the bad line", "meta": {}}) + "\n")
    inputs = [str(corpus / "slim" / "chunk0"), str(bad)]
    options = sources.SourceOptions("slimpajama", skip_bad_records=True)
    clean = preprocess(inputs, options, tokenizer_model, str(tmp_path / "clean" / "c"), shard_size=int(SHARD),
                       progress=False)
    real_add = preprocess_module.ShardedWriter.add
    for stop_after in (3, 11, 19, 10_000):
        calls = {"n": 0}

        def add(self, lengths, tokens):
            calls["n"] += 1
            if calls["n"] == stop_after:
                raise KeyboardInterrupt
            real_add(self, lengths, tokens)

        monkeypatch.setattr(preprocess_module.ShardedWriter, "add", add)
        try:
            resumed = preprocess(inputs, options, tokenizer_model, str(tmp_path / "r" / "c"), shard_size=int(SHARD),
                                 progress=False)
        except KeyboardInterrupt:
            continue
    assert shard_bytes(tmp_path / "r" / "c", resumed) == shard_bytes(tmp_path / "clean" / "c", clean)
    for key in ("sources", "skipped", "bad_record_examples", "documents", "tokens"):
        assert resumed[key] == clean[key], key
    assert resumed["skipped"]["invalid_json"] == 1 and resumed["run"]["attempts"] == 4


def test_progress_bar_counts_input_bytes_with_rate_and_eta(tokenizer_model, corpus, tmp_path, capsys):  # noqa: F811
    tool.main(["--tokenizer-model", tokenizer_model, "--output-prefix", str(tmp_path / "c"), "--format",
               "slimpajama", "--input", str(corpus / "slim")])
    captured = capsys.readouterr()
    total = sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(corpus / "slim") for n in ns)
    bar = captured.err.replace("\r", "\n").strip().splitlines()[-1]
    assert f"/{tqdm.format_sizeof(total)} [" in bar and "B/s" in bar and "tok/s" in bar, bar  # total, rate
    assert "<" in bar, bar  # the ETA
    summary = captured.out.strip().splitlines()[-1]
    assert "documents" in summary and "tok/s" in summary and "set:RedPajamaGithub" in summary


def test_hf_streaming_equals_loading_and_jsonl(tokenizer_model, tmp_path):  # noqa: F811
    records = [{"text": r["text"]} for r in slimpajama_records(120, seed=4)]
    write_jsonl(str(tmp_path / "ds" / "part-0.jsonl"), records[:70])
    write_jsonl(str(tmp_path / "ds" / "part-1.jsonl"), records[70:])
    plain = run(tokenizer_model, [tmp_path / "ds"], tmp_path / "j" / "c", "jsonl")
    loaded = run(tokenizer_model, [tmp_path / "ds"], tmp_path / "h" / "c", "hf")
    streamed = run(tokenizer_model, [tmp_path / "ds"], tmp_path / "s" / "c", "hf", "--hf-streaming")
    expected = shard_bytes(tmp_path / "j" / "c", plain)
    assert shard_bytes(tmp_path / "h" / "c", loaded) == expected
    assert shard_bytes(tmp_path / "s" / "c", streamed) == expected
