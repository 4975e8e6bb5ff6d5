"""The import layering of docs/architecture.md holds: every package of est_megatron imports only the packages on
the lines below its own, and no modules import each other in a circle (imports inside functions count too)."""
import ast
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "est_megatron")


def documented_layers():
    """{unit: level} from the drawing under "## Packages and layering", lowest line = level 0. A unit is a
    subpackage (`model`) or a top-level module (`hf`); names on one line share a level."""
    with open(os.path.join(REPO, "docs", "architecture.md")) as f:
        text = f.read()
    section = text.split("## Packages and layering", 1)[1]
    drawing = section.split("```", 2)[1]
    lines = [line.strip() for line in drawing.splitlines()]
    named = [re.split(r"\s{2,}", line)[0] for line in lines if line.startswith("est_megatron.")]
    levels = {}
    for level, names in enumerate(reversed(named)):
        for name in names.split(","):
            levels[name.strip()[len("est_megatron."):]] = level
    return levels


def module_files():
    """{dotted module name: path} of every module under est_megatron/."""
    out = {}
    for dirpath, _, filenames in os.walk(PACKAGE):
        for filename in filenames:
            if filename.endswith(".py"):
                path = os.path.join(dirpath, filename)
                parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
                out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(path, modules):
    """The est_megatron modules a file imports, anywhere in it (`from package import module` names the module)."""
    with open(path) as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("est_megatron"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("est_megatron"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
    return found


def unit_of(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def import_graph():
    modules = module_files()
    return {module: imports_of(path, modules) - {module} for module, path in modules.items()}


def test_every_package_is_placed_in_the_drawing():
    levels = documented_layers()
    units = {unit_of(module) for module in module_files()} - {None}
    assert units == set(levels), f"missing from the drawing: {units - set(levels)}; drawn but absent: " \
                                 f"{set(levels) - units}"


def test_packages_import_only_those_below_them():
    levels = documented_layers()
    upward = []
    for module, imported in import_graph().items():
        for target in imported:
            source_unit, target_unit = unit_of(module), unit_of(target)
            if None in (source_unit, target_unit) or source_unit == target_unit:
                continue
            if levels[target_unit] >= levels[source_unit]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports of a package on the same line or above: " + ", ".join(sorted(upward))


def test_no_import_cycles_between_modules():
    graph = import_graph()
    state, path, cycles = {}, [], []

    def visit(module):
        state[module] = "open"
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles: " + "; ".join(cycles)
