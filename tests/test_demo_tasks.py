"""The downstream tasks for `--demo` models (est_megatron.evaluation.demo_tasks): the same files for the same seed,
answers spread evenly over the 4 slots, distinct choices, every item from a source the demo corpus leaves out and
with an answer the corpus does not contain, one clear line when the installation has too little held-out text, and
tools/evaluate.py running a task from another directory."""
import functools
import json
import os

import pytest
import torch

from dist_utils import tiny_shards  # noqa: F401
from est_megatron.demo import SKIP_DIRS, stdlib_files
from est_megatron.evaluation import demo_tasks
from est_megatron.evaluation.demo_tasks import CODE_TASK, DOC_TASK, training_text, write_demo_tasks

ITEMS = 40


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return write_demo_tasks(str(tmp_path_factory.mktemp("demo_tasks")), items=ITEMS, seed=0)


def read(report, name):
    with open(report["tasks"][name]["data"], encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def source_file(doc):
    return doc["source"].rsplit(":", 1)[0] if doc["source"].endswith(tuple("0123456789")) else doc["source"]


def test_same_installation_and_seed_give_the_same_tasks(tasks, tmp_path):
    again = write_demo_tasks(str(tmp_path / "again"), items=ITEMS, seed=0)
    other = write_demo_tasks(str(tmp_path / "other"), items=ITEMS, seed=1)
    for name in (CODE_TASK, DOC_TASK):
        assert read(again, name) == read(tasks, name)
        assert read(other, name) != read(tasks, name)


def test_answers_are_balanced_and_choices_distinct(tasks):
    for name in (CODE_TASK, DOC_TASK):
        docs = read(tasks, name)
        assert len(docs) == ITEMS == tasks["tasks"][name]["items"]
        assert [sum(d["label"] == k for d in docs) for k in range(4)] == [ITEMS // 4] * 4
        for d in docs:
            assert len(d["choices"]) == 4 and len({c.strip() for c in d["choices"]}) == 4
            assert d["context"].strip()
    for d in read(tasks, CODE_TASK):
        truth = d["choices"][d["label"]]
        assert len(truth.replace(" ", "").strip()) >= demo_tasks.MIN_LINE_CHARS and not truth.strip().startswith("#")
        assert {c[:len(c) - len(c.lstrip())] for c in d["choices"]} == {truth[:len(truth) - len(truth.lstrip())]}
        assert len(d["context"].split("\n")) <= demo_tasks.CONTEXT_LINES
    for d in read(tasks, DOC_TASK):
        assert len(d["context"]) + 1 + len(d["choices"][d["label"]]) >= demo_tasks.DOC_CHARS[0]


def test_items_come_from_held_out_sources_and_answers_are_not_in_the_corpus(tasks):
    root, training = stdlib_files()
    training = set(training)
    seen = training_text()
    docstrings = functools.lru_cache(maxsize=None)(demo_tasks.file_docstrings)  # several items per file
    for name in (CODE_TASK, DOC_TASK):
        for d in read(tasks, name):
            path = source_file(d)
            parts = os.path.relpath(path, root).split(os.sep)
            assert path not in training and SKIP_DIRS & set(parts[:-1]) and parts[0] != "site-packages", path
            truth = d["choices"][d["label"]]
            assert truth not in seen
            with open(path, encoding="utf-8") as f:
                text = f.read()
            if name == CODE_TASK:  # the answer is that line of that file, the context the lines before it
                number = int(d["source"].rsplit(":", 1)[1])
                lines = [line.rstrip() for line in text.split("\n")]
                assert lines[number - 1] == truth and "\n".join(lines[:number - 1]).endswith(d["context"])
            else:
                assert f"{d['context']} {truth}" in docstrings(text)
    # the guard itself: text of the demo's sources is seen, text of held-out files mostly not
    with open(sorted(training)[0], encoding="utf-8") as f:
        lines = [line for line in f.read().splitlines() if len(line.split()) >= 6]
    assert lines and all(line in seen and " ".join(line.split()[1:]) in seen for line in lines[:20])
    assert "a sentence no standard-library source has ever contained, surely" not in seen


def test_too_little_held_out_text_is_one_line(monkeypatch, tmp_path, capsys):
    from est_megatron.cli.make_demo_tasks import main
    root, files = demo_tasks.heldout_files()
    monkeypatch.setattr(demo_tasks, "heldout_files", lambda: (root, files[:6]))
    with pytest.raises(SystemExit) as exit_info:
        main(["--output-dir", str(tmp_path / "tasks"), "--items", "400"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("error: ") and "\n" not in err and "--items" in err
    assert not (tmp_path / "tasks").exists()


def test_tool_prints_the_evaluate_command(tmp_path, capsys):
    from est_megatron.cli.make_demo_tasks import main
    report = main(["--output-dir", str(tmp_path / "tasks"), "--items", "8", "--seed", "2"])
    out = capsys.readouterr().out
    assert f"--include-path {tmp_path / 'tasks'} --tasks {CODE_TASK},{DOC_TASK}" in out
    for task in report["tasks"].values():
        with open(task["yaml"]) as f:
            assert f"test: {json.dumps(task['data'])}" in f.read() and os.path.isabs(task["data"])


def test_evaluate_runs_a_demo_task_from_another_directory(tasks, tiny_shards, tmp_path, monkeypatch):  # noqa: F811
    pytest.importorskip("lm_eval")
    from est_megatron.checkpoint.standalone import save_est_checkpoint
    from est_megatron.cli.evaluate import main
    from est_megatron.config import model_preset
    from est_megatron.model.transformer import Transformer
    torch.manual_seed(0)
    cfg = model_preset("tiny")
    os.makedirs(tmp_path / "ckpt")
    save_est_checkpoint(str(tmp_path / "ckpt"), cfg, Transformer(cfg).state_dict(),
                        tokenizer={"tokenizer.model": tiny_shards["tokenizer"]})
    for variable in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):  # restored afterwards; evaluate sets them
        monkeypatch.setenv(variable, "1")
    monkeypatch.chdir(tmp_path)  # data_files are absolute: no need to run from the tasks' folder
    folder = os.path.dirname(tasks["tasks"][CODE_TASK]["yaml"])
    assert main(["--load", "ckpt", "--include-path", folder, "--tasks", CODE_TASK, "--limit", "8", "--device", "cpu",
                 "--batch-size", "4", "--output", "out.json", "--no-progress"]) == 0
    with open(tmp_path / "out.json") as f:
        table = {(r["task"], r["metric"]): r for r in json.load(f)["lm_eval"]["table"]}
    assert set(table) == {(CODE_TASK, "acc"), (CODE_TASK, "acc_norm")}
    assert all(r["documents"] == 8 and 0 <= r["value"] <= 1 for r in table.values())
