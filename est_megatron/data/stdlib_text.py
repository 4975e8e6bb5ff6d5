"""The Python installation's own text, the demo corpus's source (est_megatron.demo) and its held-out remainder
(est_megatron.evaluation.demo_tasks): standard-library files outside SKIP_DIRS, and their docstrings. Here, below
both, so that evaluation need not import the demo pipeline."""
import ast
import collections
import os
import sysconfig
import warnings

SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "turtledemo", "ensurepip",
             "__pycache__", "tkinter", "config-3.11-x86_64-linux-gnu"}


def stdlib_files():
    """Sorted standard-library sources (no tests, no third-party packages)."""
    root = sysconfig.get_paths()["stdlib"]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py"))
    return root, out


def read_source(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def docstrings(source):
    """Module, class and function docstrings of one source file, in order, as one text (the demo's prose)."""
    return prose(definition_docstrings(source))


def prose(docs):
    """A file's docstrings as one text: those over 40 characters, stripped, a blank line apart."""
    return "\n\n".join(doc.strip() for doc in docs if len(doc) > 40)


def definition_docstrings(source):
    """The docstrings of a source file's module, classes and functions, in ast.walk's order; [] if it does not
    parse."""
    try:
        with warnings.catch_warnings():  # invalid escapes in a source are its business, not the corpus's
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    docs = (ast.get_docstring(node) for node in _statements(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)))
    return [doc for doc in docs if doc]


def _statements(tree):
    """ast.walk's breadth-first order restricted to statements and the nodes that hold them (except and case
    clauses): a docstring can only open a module, class or function, and expressions, most of a tree, hold none."""
    queue = collections.deque([tree])
    while queue:
        node = queue.popleft()
        queue.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, _HOLDS_STATEMENTS))
        yield node


_HOLDS_STATEMENTS = (ast.stmt, ast.excepthandler, ast.match_case)
