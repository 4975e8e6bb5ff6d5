"""Packaging: the console scripts setup.py declares resolve to callables, launch/ and tools/ only run the package's
command lines, the DeepSpeed configs are package data, and there is one version string."""
import ast
import glob
import importlib
import json
import os
import subprocess
import sys

import pytest

import est_megatron
from est_megatron.training.arguments import DS_CONFIG_DIR, build_parser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Written by hand elsewhere right now; they still put the repository on sys.path.
def setup_source():
    with open(os.path.join(REPO, "setup.py")) as f:
        return f.read()


def setup_assignment(name):
    """A literal assigned at the top of setup.py."""
    for node in ast.parse(setup_source()).body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == [name]:
            return ast.literal_eval(node.value)
    raise AssertionError(f"setup.py assigns no {name}")


def test_console_scripts_resolve_to_callables():
    from est_megatron.cli import console

    scripts = setup_assignment("CONSOLE_SCRIPTS")
    assert "est-pretrain" in scripts and "est-preprocess" in scripts and "est-convert-to-hf" in scripts
    for name, module in scripts.items():
        assert callable(getattr(console, module)), name
        assert callable(importlib.import_module(f"est_megatron.cli.{module}").main), name


def test_console_script_exits_zero_when_main_returns_a_value(monkeypatch, capsys):
    """est_plan.main returns nothing and preprocess_data.main a manifest; a console script exits 0 after either."""
    from est_megatron.cli import console

    monkeypatch.setattr(sys, "argv", ["est-plan", "--model", "tiny", "--schedule", "tinyllama", "--train-steps", "100"])
    assert console.est_plan() == 0
    assert "saving" in capsys.readouterr().out.lower()


def test_launch_and_tools_scripts_are_thin_wrappers():
    scripts = glob.glob(os.path.join(REPO, "launch", "*.py")) + glob.glob(os.path.join(REPO, "tools", "**", "*.py"),
                                                                           recursive=True)
    for path in scripts:
        rel = os.path.relpath(path, REPO)
        with open(path) as f:
            text = f.read()
        assert "sys.path" not in text, f"{rel} edits sys.path"
        if os.path.dirname(rel) in ("launch", "tools"):
            name = os.path.splitext(os.path.basename(rel))[0]
            assert f"from est_megatron.cli.{name} import main" in text, f"{rel} does not run est_megatron.cli.{name}"


def test_ds_configs_are_package_data():
    """The default --ds_config and every config lie inside the package, matched by setup.py's package_data, and a
    checkout's top-level ds_configs/ (the documented `--ds_config ds_configs/zero2.json`) is the same folder."""
    assert os.path.dirname(DS_CONFIG_DIR) == os.path.dirname(os.path.abspath(est_megatron.__file__))
    configs = sorted(os.path.basename(p) for p in glob.glob(os.path.join(DS_CONFIG_DIR, "*.json")))
    assert {"zero1.json", "zero2.json", "zero3.json", "zero1_pipeline.json"} <= set(configs)
    for name in configs:
        with open(os.path.join(DS_CONFIG_DIR, name)) as f:
            json.load(f)
    assert 'package_data={"est_megatron": ["ds_configs/*.json"]}' in setup_source()
    assert os.path.isfile(build_parser().parse_args(["--data-path", "x"]).deepspeed_config)
    assert os.path.samefile(os.path.join(REPO, "ds_configs"), DS_CONFIG_DIR)


def test_one_version_string():
    done = subprocess.run([sys.executable, "setup.py", "--version"], cwd=REPO, capture_output=True, text=True)
    assert done.stdout.split()[-1] == est_megatron.__version__, done.stderr[-2000:]
    assert setup_source().count("version=") == 1


@pytest.mark.parametrize("module", ["pretrain_tinyllama", "preprocess_data", "convert_to_hf"])
def test_command_modules_answer_help(module, capsys):
    """`python -m est_megatron.cli.NAME --help` is what the demo and compare_runs launch; --help loads no DeepSpeed."""
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(f"est_megatron.cli.{module}").main(["--help"])
    assert exit_info.value.code == 0 and "usage" in capsys.readouterr().out
