"""The order of the test files for a parallel run (`-n 2`, whole files per worker; pytest.ini keeps xdist from
reordering them): the longest files first, in the order of their time on one worker (`pytest -n 1 --durations`),
so that the workers end on short files together instead of one worker finishing a long file alone. And one
DeepSpeed CPU communication op build per virtualenv."""
import hashlib
import os
import sys
import tempfile

LONG_FILES_FIRST = (
    "test_launch_lifecycle.py", "test_fault_injection.py", "test_compare_runs.py", "test_training_zero.py",
    "test_sparse_optimizer.py", "test_methods_zero.py", "test_parallel_layouts.py", "test_loop_reference.py",
    "test_parallel_checkpoints.py", "test_compile.py", "test_parallel_training.py", "test_training_errors.py",
    "test_memory_bench.py", "test_entry_points.py", "test_offload.py", "test_evaluate.py", "test_zero3_init.py",
    "test_recompute_pipeline.py", "test_training_signals.py", "test_demo_tasks.py", "test_recompute.py",
    "test_raptr_transition.py", "test_training_metrics.py", "test_training_broadcast.py", "test_bench_smoke.py",
    "test_data_parts_resume.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONG_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES_FIRST)))  # stable: files keep their order


def pytest_configure(config):
    """Every run the tests launch compiles DeepSpeed's CPU communication op on first use (~45 s) into
    TORCH_EXTENSIONS_DIR. Torch's shared default directory is rebuilt whenever another virtualenv used it last (a
    clean clone's CI always), and tests/test_launch_lifecycle.py builds in this per-virtualenv directory anyway:
    the whole suite uses it, so a fresh virtualenv builds the op once, not twice. A directory set by the user
    wins."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", virtualenv_extensions_dir())


def virtualenv_extensions_dir() -> str:
    """This interpreter's own torch extensions directory: no other virtualenv rebuilds its ops."""
    prefix = hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), f"est_megatron_torch_extensions_{prefix}")
