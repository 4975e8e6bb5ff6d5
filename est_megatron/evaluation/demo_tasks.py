"""Two multiple-choice lm-eval tasks for `--demo` models, on text the demo corpus never contains.

Models of 1.5M-12M parameters trained on the demo corpus score at chance on the GPT4All suite, which asks for
knowledge they cannot have. These tasks stay in the demo's domain, Python code and its documentation, but read only
the standard-library sources the demo skips (`SKIP_DIRS` at any depth: test/, idlelib/, tkinter/, lib2to3/,
turtledemo/, ctypes/test/, ...; never third-party packages), so a score above chance is generalisation, not recall:

- demo_code_next_line: up to 8 lines of code; the true next line against 3 lines of the same file, away from the
  context and nearest it in length, each indented like the true line, so that neither the file's style, length nor
  indentation gives the answer away;
- demo_docstring_continuation: the first half of a docstring (whitespace collapsed, cut at a word near the middle);
  its second half against the second halves of 3 docstrings of other files of about the same length.

Held-out is checked, not only assumed from the directories: an item whose answer occurs in the demo's sources (every
file `stdlib_files()` returns, and the pydoc topics; whitespace collapsed on both sides) is skipped. The true
answer sits in each of the 4 slots equally often, so always picking one slot scores 25%.
"""
from __future__ import annotations

import functools
import json
import os
import random
import time

from est_megatron.data.stdlib_text import definition_docstrings, prose, read_source, stdlib_files
from est_megatron.errors import UsageError

CODE_TASK = "demo_code_next_line"
DOC_TASK = "demo_docstring_continuation"
NOT_STDLIB = ("site-packages", "dist-packages", "__pycache__")  # pruned with config-*: not the held-out sources
CONTEXT_LINES = 8
MIN_LINE_CHARS = 12  # non-space characters of a target line
MAX_LINE_CHARS = 120
DOC_CHARS = (80, 400)  # docstring lengths kept: long enough to cut in two, short enough for a 128-token model
CHOICES = 4
MAX_CODE_FILE_CHARS = 200_000  # the demo's code corpus leaves larger files out too
SIMILAR = 12  # distractors come from this many candidates (a docstring's: the nearest in length)

DESCRIPTIONS = {
    CODE_TASK: "the next line of held-out standard-library code (4 choices)",
    DOC_TASK: "the second half of a held-out standard-library docstring (4 choices)",
}


def heldout_files():
    """(stdlib root, sorted .py files under it that stdlib_files() leaves out, third-party code excluded)."""
    root, training = stdlib_files()
    training = set(training)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in NOT_STDLIB and not d.startswith((".", "config-")))
        out.extend(p for p in (os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py"))
                   if p not in training)
    return root, out


@functools.lru_cache(maxsize=1)
def heldout_sources():
    """(root, {path: source}, {path: its docstrings}) of the held-out files: each parsed once a process, as both
    tasks, the held-out prose and every later call (compare_runs, the tests) need them."""
    root, files = heldout_files()
    sources = {p: s for p, s in zip(files, map(read_source, files)) if s}
    return root, sources, {path: definition_docstrings(source) for path, source in sources.items()}


def _words(text):
    return " ".join(text.split())


class TrainingText:
    """The demo's sources as one whitespace-collapsed string, to ask whether a text occurs in them.

    A substring test on ~11M characters costs milliseconds, so two exact shortcuts come first: a code line equal to
    a line of the sources, and, for a text of 5+ words, its words 2-4 (whole words in any occurrence) never
    following each other in the sources."""

    def __init__(self, texts):
        self.lines = {line.strip() for text in texts for line in text.splitlines()}
        words = [w for text in texts for w in text.split()]
        self.text = " ".join(words)
        self.trigrams = {hash(t) for t in zip(words, words[1:], words[2:])}

    def __contains__(self, text):
        if text.strip() in self.lines:
            return True
        words = text.split()
        if len(words) >= 5 and hash(tuple(words[1:4])) not in self.trigrams:
            return False
        return " ".join(words) in self.text


@functools.lru_cache(maxsize=1)
def training_text() -> TrainingText:
    """What the demo trains on (a superset: every training source file whole, not cut at demo.CODE_CHARS)."""
    from pydoc_data.topics import topics
    _, files = stdlib_files()
    return TrainingText([topics[k] for k in sorted(topics)] + [s for s in map(read_source, files) if s])


def _is_code_target(line):
    text = line.strip()
    return (len(line) <= MAX_LINE_CHARS and not text.startswith("#") and line.replace("\t", " ").isprintable()
            and len(text.replace(" ", "")) >= MIN_LINE_CHARS)


def _indent(line):
    return line[:len(line) - len(line.lstrip())]


def _balanced_labels(n, rng):
    labels = [i % CHOICES for i in range(n)]
    rng.shuffle(labels)
    return labels


def _with_answer(truth, distractors, label):
    choices = list(distractors)
    choices.insert(label, truth)
    return choices


def code_items(sources, items, rng, seen):
    """Items of demo_code_next_line from {path: source}; files are visited in a shuffled round so that items spread
    over them. Returns (items, answers skipped as seen in training)."""
    files = []
    for path, source in sources.items():
        lines = [line.rstrip() for line in source.split("\n")]  # editors' line numbers
        targets = [i for i in range(1, len(lines)) if _is_code_target(lines[i])]
        if len(targets) >= CHOICES:
            files.append((path, lines, targets))
    if not files:
        raise UsageError(f"no held-out source file has {CHOICES} code lines; {CODE_TASK} needs one")
    rng.shuffle(files)
    found, skipped, remaining = [], 0, [list(t) for _, _, t in files]
    while len(found) < items and any(remaining):
        for k, (path, lines, targets) in enumerate(files):
            if not remaining[k] or len(found) == items:
                continue
            i = remaining[k].pop(rng.randrange(len(remaining[k])))
            context = "\n".join(lines[max(0, i - CONTEXT_LINES):i]).lstrip("\n")  # a blank line before i stays
            if not context.strip():
                continue
            if lines[i] in seen:
                skipped += 1
                continue
            # Distractors: lines of the same file, away from the context, nearest the truth in length, so that a
            # model wins neither by the file's style (which it copies from the context) nor by length (lm-eval's
            # `acc` sums log-likelihoods). Lines of other files put `acc` below chance for the demo's models.
            truth = lines[i].strip()
            pool = sorted({lines[j].strip() for j in targets if abs(j - i) > CONTEXT_LINES} - {truth})
            if len(pool) < CHOICES - 1:
                continue
            pool = rng.sample(pool, min(SIMILAR, len(pool)))
            nearest = sorted(pool, key=lambda line: (abs(len(line) - len(truth)), line))[:CHOICES - 1]
            found.append((path, i, context, lines[i], [_indent(lines[i]) + line for line in nearest]))
    labels = _balanced_labels(len(found), rng)
    return [{"context": context, "choices": _with_answer(truth, distractors, label), "label": label,
             "source": f"{path}:{i + 1}"} for (path, i, context, truth, distractors), label in zip(found, labels)], \
        skipped


def doc_texts(docs):
    """A file's docstrings (definition_docstrings) whitespace collapsed, those of DOC_CHARS length."""
    return [text for text in map(_words, docs) if DOC_CHARS[0] <= len(text) <= DOC_CHARS[1]]


def _cut(text):
    """(first part, second part) at the space nearest the middle."""
    middle = len(text) // 2
    left, right = text.rfind(" ", 0, middle + 1), text.find(" ", middle)
    cut = left if right < 0 or (left >= 0 and middle - left <= right - middle) else right
    return text[:cut], text[cut + 1:]


def docstring_items(sources, file_docs, items, rng, seen):
    """Items of demo_docstring_continuation from {path: source} and {path: its docstrings}: files densest in triple
    quotes first, until twice `items` docstrings are in hand. Returns (items, answers skipped as seen)."""
    def density(path):
        source = sources[path]
        return -(source.count('"""') + source.count("'''")) / max(len(source), 1), path

    pool, texts = [], set()
    for path in sorted(sources, key=density):
        for text in doc_texts(file_docs[path]):
            if text not in texts:
                texts.add(text)
                pool.append((path,) + _cut(text))
        if len(pool) >= 2 * items + SIMILAR:
            break
    pool.sort(key=lambda p: (len(p[2]), p[2]))
    lengths = [len(p[2]) for p in pool]
    found, skipped = [], 0
    for k in rng.sample(range(len(pool)), len(pool)):
        if len(found) == items:
            break
        path, context, truth = pool[k]
        if truth in seen:
            skipped += 1
            continue
        # the SIMILAR docstrings of other files nearest in length, distinct second parts
        near = sorted(range(max(0, k - 4 * SIMILAR), min(len(pool), k + 4 * SIMILAR + 1)),
                      key=lambda j: (abs(lengths[j] - lengths[k]), j))
        candidates, picked = [], {truth}
        for j in near:
            if pool[j][0] != path and pool[j][2] not in picked:
                picked.add(pool[j][2])
                candidates.append(pool[j][2])
            if len(candidates) == SIMILAR:
                break
        if len(candidates) >= CHOICES - 1:
            found.append((path, context, truth, rng.sample(candidates, CHOICES - 1)))
    labels = _balanced_labels(len(found), rng)
    return [{"context": context, "choices": _with_answer(truth, distractors, label), "label": label,
             "source": path} for (path, context, truth, distractors), label in zip(found, labels)], skipped


TASK_YAML = """\
# {description}, seed {seed}, from the sources under
# {root} that the demo corpus skips (est_megatron.evaluation.demo_tasks); data_files is absolute.
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: label
target_delimiter: {delimiter}
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def _write_task(out_dir, name, docs, delimiter, seed, root):
    data = os.path.join(out_dir, f"{name}.jsonl")
    with open(data, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    config = os.path.join(out_dir, f"{name}.yaml")
    with open(config, "w", encoding="utf-8") as f:
        f.write(TASK_YAML.format(description=DESCRIPTIONS[name], seed=seed, root=root, name=name,
                                 data=json.dumps(data), delimiter=json.dumps(delimiter)))
    return {"yaml": config, "data": data, "items": len(docs)}


def write_demo_tasks(out_dir, items=400, seed=0) -> dict:
    """Writes NAME.yaml and NAME.jsonl of both tasks into out_dir; returns {"tasks": {name: {yaml, data, items,
    skipped_seen}}, "heldout_files", "root", "seconds"}. The same installation and seed give the same files."""
    if items < 1:
        raise UsageError(f"--items must be positive, got {items}")
    start = time.time()
    root, sources, file_docs = heldout_sources()
    seen = training_text()
    made = {CODE_TASK: code_items(sources, items, random.Random(f"{CODE_TASK}:{seed}"), seen),
            DOC_TASK: docstring_items(sources, file_docs, items, random.Random(f"{DOC_TASK}:{seed}"), seen)}
    for name, (docs, _) in made.items():
        if len(docs) < items:
            raise UsageError(f"this Python installation's held-out sources ({len(sources)} files under {root} in the "
                             f"directories the demo skips) give only {len(docs)} items of {name}; ask for "
                             f"--items {len(docs)} or fewer")
    os.makedirs(out_dir, exist_ok=True)
    out_dir = os.path.abspath(out_dir)
    tasks = {}
    for name, (docs, skipped) in made.items():
        tasks[name] = _write_task(out_dir, name, docs, "\n" if name == CODE_TASK else " ", seed, root)
        tasks[name]["skipped_seen"] = skipped
    return {"tasks": tasks, "corpora": write_heldout_corpora(out_dir, sources, file_docs),
            "heldout_files": len(sources), "root": root, "seconds": time.time() - start}


def write_heldout_corpora(out_dir, sources, file_docs) -> dict:
    """heldout_prose.jsonl (each held-out file's docstrings, as the demo's prose takes them from the files it
    keeps) and heldout_code.jsonl (the files themselves, as its code): the demo's two corpora on text it never
    contains, for a loss per corpus (preprocess them with the demo's tokenizer, then tools/evaluate.py
    --data-path). Returns {corpus: {"path", "documents"}}."""
    texts = {"prose": [prose(file_docs[path]) for path in sources],
             "code": [source for source in sources.values() if len(source) < MAX_CODE_FILE_CHARS]}
    out = {}
    for corpus, documents in texts.items():
        path = os.path.join(out_dir, f"heldout_{corpus}.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": text}) + "\n" for text in documents if text)
        out[corpus] = {"path": path, "documents": sum(1 for text in documents if text)}
    return out
