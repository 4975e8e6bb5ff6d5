"""tools/preprocess_data.py: formats, set filters, determinism across workers, bad inputs, atomic output."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_fixtures import REPO, load_tool, slimpajama_records, slimpajama_tree, tokenizer_model, write_jsonl  # noqa: F401
from est_megatron.data.indexed import IndexedDataset
from est_megatron.data.tokenizer import SentencePieceTokenizer

tool = load_tool("tools/preprocess_data.py")


def run(tok, inputs, prefix, *extra):
    argv = ["--tokenizer-model", tok, "--output-prefix", str(prefix), "--no-progress"]
    for i in inputs:
        argv += ["--input", str(i)]
    return tool.main(argv + list(extra))


def read_all(prefix, manifest):
    docs = []
    for shard in manifest["shards"]:
        ds = IndexedDataset(os.path.join(os.path.dirname(str(prefix)), shard["prefix"]))
        assert len(ds) == shard["documents"] and ds.num_tokens == shard["tokens"]
        docs += [np.array(ds[i]) for i in range(len(ds))]
    return docs


def expected_docs(tok, records, sets):
    return [tok.encode(r["text"]) + [tok.eos_id] for r in records
            if r["text"] and r["meta"]["redpajama_set_name"] in sets]


def test_slimpajama_drops_github_and_matches_direct_encoding(tokenizer_model, slimpajama_tree, tmp_path):  # noqa: F811
    manifest = run(tokenizer_model, [slimpajama_tree], tmp_path / "out" / "sp", "--format", "slimpajama",
                   "--shard-size", "3000")
    tok = SentencePieceTokenizer(tokenizer_model)
    records = slimpajama_records(300, seed=2) + slimpajama_records(200, seed=3)  # sorted: chunk1 then chunk2
    want = expected_docs(tok, records, {"RedPajamaC4", "RedPajamaWikipedia", "RedPajamaBook"})
    got = read_all(tmp_path / "out" / "sp", manifest)
    assert [list(d) for d in got] == want
    n_github = sum(r["meta"]["redpajama_set_name"] == "RedPajamaGithub" for r in records)
    n_empty = sum(not r["text"] and r["meta"]["redpajama_set_name"] != "RedPajamaGithub" for r in records)
    assert manifest["skipped"] == {"empty": n_empty, "set:RedPajamaGithub": n_github}
    assert manifest["documents"] == len(want) and manifest["tokens"] == sum(map(len, want))
    assert len(manifest["shards"]) > 2 and all(s["tokens"] >= 3000 for s in manifest["shards"][:-1])
    assert manifest["dtype"] == "uint16" and manifest["tokenizer"]["sha256"] == tok.sha256
    assert [s["path"].split(os.sep)[-2] for s in manifest["sources"]] == ["chunk1", "chunk2"]
    on_disk = json.load(open(str(tmp_path / "out" / "sp") + ".manifest.json"))
    assert on_disk == manifest


def test_keep_sets(tokenizer_model, slimpajama_tree, tmp_path):  # noqa: F811
    manifest = run(tokenizer_model, [slimpajama_tree], tmp_path / "k", "--format", "slimpajama",
                   "--keep-sets", "RedPajamaGithub")
    tok = SentencePieceTokenizer(tokenizer_model)
    records = slimpajama_records(300, seed=2) + slimpajama_records(200, seed=3)
    assert [list(d) for d in read_all(tmp_path / "k", manifest)] == expected_docs(tok, records, {"RedPajamaGithub"})
    assert "set:RedPajamaGithub" not in manifest["skipped"] and manifest["skipped"]["set:RedPajamaC4"] > 0


def test_one_and_two_workers_are_byte_identical(tokenizer_model, slimpajama_tree, tmp_path):  # noqa: F811
    m1 = run(tokenizer_model, [slimpajama_tree], tmp_path / "w1" / "sp", "--format", "slimpajama",
             "--shard-size", "4000", "--workers", "1")
    m2 = run(tokenizer_model, [slimpajama_tree], tmp_path / "w2" / "sp", "--format", "slimpajama",
             "--shard-size", "4000", "--workers", "2")
    assert m1["run"]["workers"] == 1 and m2["run"]["workers"] == 2
    names = sorted(os.listdir(tmp_path / "w1"))
    assert names == sorted(os.listdir(tmp_path / "w2")) and len(names) > 4
    for name in names:
        a, b = (tmp_path / "w1" / name).read_bytes(), (tmp_path / "w2" / name).read_bytes()
        if name.endswith(".json"):
            a, b = ({k: v for k, v in json.loads(x).items() if k != "run"} for x in (a, b))
        assert a == b, name


def test_jsonl_key_bos_and_no_eod(tokenizer_model, tmp_path):  # noqa: F811
    write_jsonl(str(tmp_path / "d.jsonl"), [{"body": "alpha beta"}, {"body": "gamma"}])
    manifest = run(tokenizer_model, [tmp_path / "d.jsonl"], tmp_path / "o", "--json-key", "body",
                   "--no-append-eod", "--add-bos")
    tok = SentencePieceTokenizer(tokenizer_model)
    assert [list(d) for d in read_all(tmp_path / "o", manifest)] == [[1] + tok.encode("alpha beta"),
                                                                    [1] + tok.encode("gamma")]
    assert manifest["skipped"] == {} and manifest["sources"][0]["records"] == 2


def test_starcoder_parquet_and_hf_saved_dataset(tokenizer_model, tmp_path):  # noqa: F811
    texts = {"python": ["def f():\n    return 1\n", "print('x')\n"], "rust": ["fn main() {}\n"]}
    for lang, contents in texts.items():
        os.makedirs(tmp_path / "sc" / lang)
        pq.write_table(pa.table({"content": contents, "id": list(range(len(contents)))}),
                       str(tmp_path / "sc" / lang / "train-0.parquet"))
    tok = SentencePieceTokenizer(tokenizer_model)
    want = [tok.encode(t) + [2] for lang in sorted(texts) for t in texts[lang]]
    manifest = run(tokenizer_model, [tmp_path / "sc"], tmp_path / "sc_out", "--format", "starcoder")
    assert [list(d) for d in read_all(tmp_path / "sc_out", manifest)] == want
    # the README's form: a glob of language folders, each searched like a folder named directly
    manifest = run(tokenizer_model, [f"{tmp_path / 'sc'}/*/"], tmp_path / "glob_out", "--format", "starcoder")
    assert [list(d) for d in read_all(tmp_path / "glob_out", manifest)] == want
    import datasets
    datasets.Dataset.from_dict({"body": ["one two", "", "three"]}).save_to_disk(str(tmp_path / "hf"))
    manifest = run(tokenizer_model, [tmp_path / "hf"], tmp_path / "hf_out", "--format", "hf", "--hf-column", "body")
    assert [list(d) for d in read_all(tmp_path / "hf_out", manifest)] == [tok.encode("one two") + [2],
                                                                         tok.encode("three") + [2]]
    assert manifest["skipped"] == {"empty": 1}


def bad_inputs(tmp_path):
    """The four kinds of bad input, each beside a good file; returns (case -> (path, error regex, reason))."""
    good = write_jsonl(str(tmp_path / "good.jsonl"), [{"text": "alpha beta"}])
    data = b"".join(json.dumps({"text": f"alpha {i * 7919 % 100003} beta {i}"}).encode() + b"\n" for i in range(20000))
    import zstandard
    blob = zstandard.ZstdCompressor().compress(data)
    (tmp_path / "cut.jsonl.zst").write_bytes(blob[:len(blob) // 2])
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n{"text": "fine"}\n')
    pq.write_table(pa.table({"body": ["x"]}), str(tmp_path / "nocol.parquet"))
    return good, {
        "zst": ("jsonl", tmp_path / "cut.jsonl.zst", r"cut\.jsonl\.zst, after line \d+: zstd stream ends mid-frame",
                "truncated_zstd"),
        "json": ("jsonl", tmp_path / "broken.jsonl", r"broken\.jsonl, line 2: invalid JSON", "invalid_json"),
        "parquet": ("parquet", tmp_path / "nocol.parquet", r"nocol\.parquet: has no column 'text' \(columns: body\)",
                    "missing_column"),
        "missing": ("jsonl", tmp_path / "nope.jsonl", r"nope\.jsonl: file does not exist", "unreadable_file"),
    }


@pytest.mark.parametrize("case", ["zst", "json", "parquet", "missing"])
def test_bad_input_errors_or_is_skipped(tokenizer_model, tmp_path, case, capsys):  # noqa: F811
    good, cases = bad_inputs(tmp_path)
    fmt, path, pattern, reason = cases[case]
    inputs = [path] if fmt == "parquet" else [good, path]
    with pytest.raises(SystemExit) as exit_info:
        run(tokenizer_model, inputs, tmp_path / "out" / "x", "--format", fmt)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "--skip-bad-records" in err
    assert re.search(pattern, err), err
    assert not any(n.endswith((".idx", ".manifest.json")) for n in os.listdir(tmp_path / "out"))  # nothing complete
    if fmt == "parquet":
        pq.write_table(pa.table({"text": ["alpha"]}), str(tmp_path / "ok.parquet"))
        inputs = [tmp_path / "ok.parquet", path]
    manifest = run(tokenizer_model, inputs, tmp_path / "out" / "x", "--format", fmt, "--skip-bad-records")
    assert manifest["skipped"][reason] == 1
    assert re.search(pattern, manifest["bad_record_examples"][0])
    assert f"{reason} 1" in capsys.readouterr().out
    if case == "zst":  # records before the cut are kept
        assert 1000 < manifest["sources"][0]["documents"] < 20000
    if case == "json":
        assert manifest["documents"] == 3


def test_cli_subprocess_prints_one_error_line(tokenizer_model, tmp_path):  # noqa: F811
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), "--input",
                           str(tmp_path / "absent.jsonl"), "--tokenizer-model", tokenizer_model,
                           "--output-prefix", str(tmp_path / "o")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: {tmp_path / 'absent.jsonl'}: file does not exist or cannot be read; "
                                        f"fix or remove it, or pass --skip-bad-records to skip and count it"]
