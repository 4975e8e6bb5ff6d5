"""The downstream tasks for `--demo` models (est_megatron.evaluation.demo_tasks): the same files for the same seed,
answers spread evenly over the 4 slots, distinct choices, every item from a source the demo corpus leaves out and
with an answer the corpus does not contain, one clear line when the installation has too little held-out text.
tools/evaluate.py runs one from another directory in tests/test_compare_runs.py (compare_runs --eval-tasks)."""
import json
import os

import pytest

from est_megatron.data.stdlib_text import SKIP_DIRS, stdlib_files
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
    file_docs = demo_tasks.heldout_sources()[2]
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
                assert f"{d['context']} {truth}" in demo_tasks.doc_texts(file_docs[path])
    # the guard itself: text of the demo's sources is seen, text of held-out files mostly not
    with open(sorted(training)[0], encoding="utf-8") as f:
        lines = [line for line in f.read().splitlines() if len(line.split()) >= 6]
    assert lines and all(line in seen and " ".join(line.split()[1:]) in seen for line in lines[:20])
    assert "a sentence no standard-library source has ever contained, surely" not in seen


def test_too_little_held_out_text_is_one_line(monkeypatch, tmp_path, capsys):
    from est_megatron.cli.make_demo_tasks import main
    root, sources, file_docs = demo_tasks.heldout_sources()
    few = dict(list(sources.items())[:6])
    monkeypatch.setattr(demo_tasks, "heldout_sources", lambda: (root, few, file_docs))
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


def test_docstrings_in_ast_walk_order_wherever_definitions_nest():
    """definition_docstrings walks statements only; it finds what ast.walk finds, in its order: definitions inside
    if/else, try/except/finally, with, loops, match cases, classes and functions."""
    import ast
    import textwrap
    from est_megatron.data.stdlib_text import definition_docstrings
    source = textwrap.dedent('''
        """module"""
        if X:
            def a():
                """a"""
                def inner():
                    """inner"""
        else:
            class B:
                """B"""
                async def m(self):
                    """m"""
        try:
            def c():
                """c"""
        except ValueError:
            def d():
                """d"""
        finally:
            def e():
                """e"""
        with ctx:
            for i in x:
                def f():
                    """f"""
        match v:
            case 1:
                def g():
                    """g"""
        f = lambda: None
        ''')
    expected = [ast.get_docstring(n) for n in ast.walk(ast.parse(source))
                if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    assert definition_docstrings(source) == expected == ["module", "a", "B", "c", "e", "inner", "m", "d", "f", "g"]
    assert definition_docstrings("def broken(:") == []
