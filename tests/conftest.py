"""The order of the test files for a parallel run (`-n 2`, whole files per worker): the files that launch many
training processes go first, so that the two workers do not end on one long file each."""
LONG_FILES_FIRST = (
    "test_launch_lifecycle.py", "test_training_zero.py", "test_fault_injection.py", "test_loop_reference.py",
    "test_compare_runs.py", "test_evaluate.py", "test_sparse_optimizer.py", "test_parallel_checkpoints.py",
    "test_parallel_layouts.py", "test_parallel_training.py", "test_compile.py", "test_methods_zero.py",
    "test_memory_bench.py", "test_zero3_init.py", "test_training_errors.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONG_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES_FIRST)))  # stable: files keep their order
