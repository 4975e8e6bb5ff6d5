"""tools/memory_plan.py's accounting: parameters and model states in closed form, and activations against the
tensors autograd really saves (counted with saved-tensor hooks) for dense and EST plans, with and without
recompute."""
import json
import math
import os

import pytest
import torch

from data_fixtures import REPO, load_tool
from est_megatron.config import SubnetConfig, model_preset
from est_megatron.errors import UsageError
from est_megatron.model.recompute import Recompute
from est_megatron.model.transformer import Transformer
from est_megatron.subnet.flops import SubnetCounts
from est_megatron.subnet.plan import PlanSampler
from est_megatron.subnet.schedule import parse_schedule
from est_megatron.planning.launch_command import split_launch_command
from est_megatron.planning.memory import (FP32, GIB, PlannedRun, activation_plan, plan_memory, stage_counts,
                                          stage_parameters, zero3_retained)
from est_megatron.training.ds_config import resolve_zero3_auto

tool = load_tool("tools/memory_plan.py")


def small(flavour):
    if flavour == "llama":
        return model_preset("tiny", num_layers=4, hidden_size=128, num_attention_heads=8, num_query_groups=2,
                            ffn_hidden_size=352, vocab_size=1000, max_position_embeddings=256)
    return model_preset("tiny-gpt2", num_layers=4, hidden_size=128, num_attention_heads=8, num_query_groups=8,
                        ffn_hidden_size=352, vocab_size=1000, max_position_embeddings=256)


@pytest.mark.parametrize("flavour", ["llama", "gpt2"])
def test_parameters_per_rank(flavour):
    cfg = small(flavour)
    assert stage_parameters(cfg) == [cfg.num_parameters()] == [sum(p.numel() for p in Transformer(cfg).parameters())]
    d, f, hd = cfg.hidden_size, cfg.ffn_hidden_size, cfg.head_dim
    qkv = (cfg.num_attention_heads + 2 * cfg.num_query_groups) * hd * d
    norms = 2 * d if flavour == "llama" else 4 * d
    split = qkv + d * d + (3 if flavour == "llama" else 2) * d * f
    if flavour == "gpt2":  # biases: QKV and up split, output and down whole
        split += (cfg.num_attention_heads + 2 * cfg.num_query_groups) * hd + f
        norms += 2 * d
    assert cfg.layer_parameters(tp=2) == split // 2 + norms
    stages = stage_parameters(cfg, tp=2, pp=2)
    vocab = math.ceil(cfg.vocab_size / 2) * d
    assert stages[0] == 2 * cfg.layer_parameters(2) + vocab + (0 if flavour == "llama" else 256 * d)
    assert stages[1] == 2 * cfg.layer_parameters(2) + (d if flavour == "llama" else 2 * d) + vocab  # head / tied


def test_model_states_in_closed_form():
    cfg = small("llama")
    p = cfg.num_parameters()
    for zero, bf16, dp in ((1, True, 4), (2, True, 4), (3, True, 4), (1, False, 1), (3, False, 2)):
        w = 2 if bf16 else 4
        plan = plan_memory(cfg, PlannedRun(dp=dp, zero=zero, bf16=bf16, micro_batch_size=2, seq_length=64),
                           overhead_bytes=0, device="cpu")
        part = math.ceil(p / dp)
        assert plan.master == 4 * part and plan.moments == 8 * part
        assert plan.fp32_partitions == 4 * part
        assert plan.weights == (part * w if zero == 3 else p * w)
        assert plan.gradients == part * w  # ZeRO-1 reduces bucket by bucket into the partition, as ZeRO-2
        bucket = min(50_000_000, p) * w  # on the CPU a bucket is resident where gradients are written
        assert plan.reduce_buffer == (3 if zero == 3 else 1) * bucket
        # ZeRO-3 on several ranks: the running weight (the largest, the output projection) and two layers' worth
        # prefetched (ds_configs/zero3.json's "auto" budget); on one rank the running layers.
        two_layers = 2 * cfg.layer_parameters()
        held = cfg.vocab_size * cfg.hidden_size + two_layers if dp > 1 else two_layers
        assert plan.gathered == (0 if zero < 3 else min(p, held) * w)
    offload = plan_memory(cfg, PlannedRun(dp=4, zero=3, offload_optimizer=True, offload_params=True, seq_length=64),
                          overhead_bytes=0)
    assert offload.weights == 0 and offload.host == (4 + 8 + 4) * math.ceil(p / 4) + 2 * math.ceil(p / 4)
    phases = offload.phases("dense")
    # The optimizer lives on the host; ZeRO-3 keeps its gradient partition and its reduce bucket.
    assert phases["step"] == offload.gradients + offload.reduce_buffer // 3


def test_zero3_retention_follows_the_deepspeed_config():
    """What ZeRO-3 may keep gathered: DeepSpeed's defaults keep the whole model below 1e9 parameters, the shipped
    "auto" two layers, and without prefetching only what the reuse distance keeps."""
    cfg = small("llama")
    config = {"zero_optimization": {"stage": 3, "stage3_max_live_parameters": "auto",
                                    "stage3_max_reuse_distance": "auto"}}
    resolved = resolve_zero3_auto(config, cfg)["zero_optimization"]
    assert resolved["stage3_max_live_parameters"] == resolved["stage3_max_reuse_distance"] == \
        2 * cfg.layer_parameters() == zero3_retained(resolved)
    assert config["zero_optimization"]["stage3_max_live_parameters"] == "auto"  # the loaded config is not changed
    assert zero3_retained({}) == 10 ** 9
    with pytest.raises(UsageError, match="zero_optimization.reduce_bucket_size"):
        resolve_zero3_auto({"zero_optimization": {"reduce_bucket_size": "auto"}}, cfg)
    assert zero3_retained({"stage3_prefetch_bucket_size": 0, "stage3_max_reuse_distance": 5}) == 5
    with open(os.path.join(REPO, "ds_configs", "zero3.json")) as f:
        assert zero3_retained(resolve_zero3_auto(json.load(f), cfg, tp=2)["zero_optimization"]) == \
            2 * cfg.layer_parameters(2)
    p = cfg.num_parameters()
    everything = plan_memory(cfg, PlannedRun(dp=2, zero=3, zero3_retained=10 ** 9, seq_length=64))
    assert everything.gathered == p * 2


def autograd_saved_bytes(model, ids, labels, plan):
    """Bytes of the distinct storages autograd saves for the backward pass (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids, plan=plan, labels=labels)
    return sum(storages.values())


@pytest.mark.parametrize("flavour", ["llama", "gpt2"])
@pytest.mark.parametrize("recompute", [None, "selective", "full"])
@pytest.mark.parametrize("rates", [(1.0, 1.0, 1.0), (0.5, 0.5, 1.0), (0.5, 0.5, 0.5)],
                         ids=["dense", "half-width", "half-all"])
def test_activations_equal_what_autograd_saves(flavour, recompute, rates):
    cfg = small(flavour)
    batch, seq = 2, 64
    torch.manual_seed(0)
    model = Transformer(cfg)
    Recompute(recompute).apply(model)
    sampler = PlanSampler(cfg, SubnetConfig(), parse_schedule("1:{},{},{}".format(*rates)).resolve(1), 0)
    dense = rates == (1.0, 1.0, 1.0)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq))
    measured = autograd_saved_bytes(model, ids, torch.randint(0, cfg.vocab_size, (batch, seq)),
                                    None if dense else sampler.plan(0))
    counts = SubnetCounts.dense(cfg) if dense else SubnetCounts.from_sampler(sampler, rates)
    planned = activation_plan(cfg, PlannedRun(bf16=False, micro_batch_size=batch, seq_length=seq, recompute=recompute),
                              counts).saved
    # Left out of the plan: the loss scalar and the plan's per-layer flags (a few bytes).
    assert abs(planned - measured) <= 0.002 * measured, (planned, measured)


def test_est_stages_and_recompute_order_the_activations():
    cfg = model_preset("tinyllama-1.1b")
    stages = dict(stage_counts(cfg, "tinyllama"))
    assert list(stages) == ["est stage 1", "est stage 2", "dense"]
    lay = dict(dp=8, zero=2, micro_batch_size=8, seq_length=2048)
    acts = {name: plan_memory(cfg, PlannedRun(**lay), list(stages.items())).activations[name].saved for name in stages}
    assert acts["est stage 1"] < acts["est stage 2"] < acts["dense"]
    none, selective, full = (plan_memory(cfg, PlannedRun(recompute=r, **lay)).activations["dense"].saved
                             for r in (None, "selective", "full"))
    assert full < 0.25 * none and selective < none  # full recompute keeps one hidden state per layer
    # The chunked loss keeps the output weight's fp32 gradient, never the fp32 logits of the micro-batch.
    head = plan_memory(cfg, PlannedRun(**lay)).activations["dense"].head
    assert FP32 * cfg.vocab_size * cfg.hidden_size < head < FP32 * cfg.vocab_size * 8 * 2048


def test_tool_prints_the_plan_and_refuses_bad_layouts(capsys):
    assert tool.main(["--model", "tinyllama-1.1b", "--dp", "8", "--zero", "2", "--micro-batch-size", "8",
                      "--seq-length", "2048", "--gpu-memory-gb", "80"]) == 0
    out = capsys.readouterr().out
    assert "est stage 1" in out and "dense" in out and "fits a 80 GB GPU" in out
    assert tool.main(["--model", "llama2-7b", "--seq-length", "4096", "--micro-batch-size", "4",
                      "--gpu-memory-gb", "24"]) == 0
    assert "does not fit a 24 GB GPU" in capsys.readouterr().out
    for bad, message in ((["--tp", "3"], "--tensor-model-parallel-size 3 does not divide"),
                         (["--pp", "2", "--zero", "2"], "ZeRO stage 2 cannot run with pipeline parallelism"),
                         (["--offload-params"], "--offload-params needs --zero 3")):
        with pytest.raises(SystemExit):
            tool.main(bad)
        assert message in capsys.readouterr().err
    with pytest.raises(UsageError, match="--recompute-num-layers needs --recompute full"):
        PlannedRun(recompute_num_layers=2).check(small("llama"))
    assert GIB == 2 ** 30


def test_chunked_loss_keeps_gradients_not_logits():
    """More tokens than the hidden size: the loss saves the hidden states' and output weight's gradients (what
    autograd holds), not the logits; a pipeline's last stage (the same loss) too."""
    cfg = small("llama")
    batch, seq = 2, 200
    torch.manual_seed(0)
    model = Transformer(cfg)
    ids, labels = (torch.randint(0, cfg.vocab_size, (batch, seq)) for _ in range(2))
    measured = autograd_saved_bytes(model, ids, labels, None)
    planned = activation_plan(cfg, PlannedRun(bf16=False, micro_batch_size=batch, seq_length=seq),
                              SubnetCounts.dense(cfg))
    assert abs(planned.saved - measured) <= 0.002 * measured, (planned.saved, measured)
    logits = batch * seq * cfg.vocab_size * FP32
    assert planned.head < logits
    pipelined = activation_plan(cfg, PlannedRun(pp=2, micro_batches=4, micro_batch_size=batch, seq_length=seq),
                                SubnetCounts.dense(cfg))
    assert pipelined.head == planned.head and pipelined.in_flight == 2
    assert pipelined.peak == max(2 * pipelined.layers + pipelined.layer_transient,
                                 pipelined.saved + pipelined.transient)


def test_launch_command_prefix():
    command = split_launch_command(["deepspeed", "--num_gpus=8", "--num_nodes", "2", "--master_port", "29501",
                                    "launch/pretrain_gpt2.py", "--lr", "1e-4"])
    assert (command.training_flags, command.family, command.processes) == (["--lr", "1e-4"], "gpt2", 16)
    command = split_launch_command(["torchrun", "--standalone", "--nproc_per_node", "4", "-m",
                                    "est_megatron.cli.pretrain_tinyllama", "--tp", "2"])
    assert (command.training_flags, command.family, command.processes) == (["--tp", "2"], "tinyllama", 4)
    command = split_launch_command(["python", "-m", "est_megatron.cli.pretrain_gpt2", "--seq-length", "512"])
    assert (command.training_flags, command.family, command.processes) == (["--seq-length", "512"], "gpt2", None)
    assert split_launch_command(["--tp", "2"]).training_flags == ["--tp", "2"]


def plan_output(capsys, argv):
    assert tool.main(argv) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("pasted, explicit", [
    (["deepspeed", "--num_gpus", "8", "--num_nodes", "2", "launch/pretrain_tinyllama.py",
      "--ds_config", os.path.join(REPO, "ds_configs", "zero3_offload.json"), "--tensor-model-parallel-size", "2",
      "--pipeline-model-parallel-size", "1", "--recompute-granularity", "full", "--recompute-num-layers", "4",
      "--micro-batch-size", "4", "--global-batch-size", "256", "--seq-length", "1024", "--bf16",
      "--data-path", "0.7", "shards/a", "0.3", "shards/b", "--tokenizer-model", "tok.model", "--lr", "3e-4",
      "--save", "ckpt", "--log-dir", "logs", "--train-steps", "10", "--deepspeed"],
     ["--tp", "2", "--dp", "8", "--zero", "3", "--offload-optimizer", "--offload-params", "--recompute", "full",
      "--recompute-num-layers", "4", "--micro-batch-size", "4", "--micro-batches", "8", "--seq-length", "1024"]),
    (["torchrun", "--nproc_per_node", "4", "launch/pretrain_gpt2.py", "--pipeline-model-parallel-size", "2",
      "--ds_config", os.path.join(REPO, "ds_configs", "zero1_pipeline.json"), "--recompute-activations",
      "--method", "dense", "--data-path", "shards/owt", "--save", "ckpt"],
     ["--model", "gpt2-124m", "--pp", "2", "--dp", "2", "--recompute", "selective", "--seq-length", "1024",
      "--micro-batch-size", "16", "--micro-batches", "16", "--est-schedule", "dense", "--dense-optimizer"]),
], ids=["zero3-offload-tp-recompute", "gpt2-pipeline"])
def test_pasted_training_command_plans_as_the_explicit_options(capsys, pasted, explicit):
    out = plan_output(capsys, pasted)
    assert out == plan_output(capsys, explicit)
    assert "this rank holds" in out and "dense" in out


@pytest.mark.parametrize("argv, message", [
    (["--ds_config", "no/such.json"], "DeepSpeed config no/such.json does not exist"),
    (["--ds_config", os.path.join(REPO, "ds_configs", "zero2.json"), "--zero", "3"], "--zero 3 disagrees with"),
    (["--ds_config", os.path.join(REPO, "ds_configs", "zero2.json"), "--offload-params"],
     "--offload-params disagrees with"),
    (["--tensor-model-parallel-size", "3"], "--tensor-model-parallel-size 3 does not divide the 32 attention heads"),
    (["deepspeed", "--num_gpus", "6", "launch/pretrain_tinyllama.py", "--tp", "4"], "6 processes are not divisible"),
    (["deepspeed", "--num_gpus", "8", "launch/pretrain_tinyllama.py", "--dp", "2"], "--dp 2 disagrees"),
    (["--dp", "3"], "--global-batch-size 1024 is not divisible by micro-batch 8 x data-parallel size 3"),
    (["--recompute-activations", "--recompute-granularity", "full"], "conflicts with --recompute-granularity"),
    (["--micro-batches", "2", "--global-batch-size", "8"], "--micro-batches 2 gives a global batch of 16"),
    (["--lr", "3e-4", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_bad_input_is_one_error_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        tool.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err
