"""The order of the test files for a parallel run (`-n 2`, whole files per worker; pytest.ini keeps xdist from
reordering them): the longest files first, in the order of their time on one worker (`pytest -n 1 --durations`),
so that the workers end on short files together instead of one worker finishing a long file alone."""
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
