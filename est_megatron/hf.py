"""Hugging Face <-> est_megatron checkpoints: Llama-family (LlamaForCausalLM) and GPT-2 (GPT2LMHeadModel).

Weight layouts. Ours fuses Q/K/V group-major (per key/value group: its query heads, its key head, its value head,
`head_dim` rows each) and Llama's gate/up as [gate; up]; Hugging Face keeps q/k/v_proj and gate/up_proj
separate, and GPT-2's Conv1D stores weights transposed (in x out) with c_attn = [q; k; v]. RoPE is rotate-half
in both, so q/k rows need no permutation. Conversion is a pure re-layout: ours -> HF -> ours is bit-exact.

Our standalone checkpoint (what `tools/convert_hf_to_est.py` writes and `--init-from` reads) is a directory with
`model.safetensors` (our parameter names, `lm_head.weight` absent when embeddings are tied), `est_config.json`
(`{"model": ModelConfig fields, "source": ...}`) and the tokenizer files. `load_est_weights` also reads a
training checkpoint (DeepSpeed layout: `latest` -> step_N/ with `mp_rank_00_model_states.pt`, key "module", and
our `est_state.json` holding the model config; ZeRO-3 partitions are merged with DeepSpeed's zero_to_fp32). A
checkpoint of a tensor- or pipeline-parallel run is merged into the single-process (TP=1) weights: one
`mp_rank_XX_model_states.pt` per TP rank, or `layer_XX-model_YY-model_states.pt` per pipeline layer and TP rank.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import shutil
from typing import Dict, Optional, Tuple

import torch

from est_megatron.config import ModelConfig
from est_megatron.errors import UsageError

StateDict = Dict[str, torch.Tensor]
EST_CONFIG = "est_config.json"
EST_WEIGHTS = "model.safetensors"
# Tokenizer files carried between checkpoints as they are (the SentencePiece model first of all).
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json")


# ---- configs ----

def model_config_from_hf(hf: dict) -> ModelConfig:
    """Our ModelConfig from a Hugging Face config.json dict (llama or gpt2), with one-line errors for the rest."""
    kind = hf.get("model_type")
    if kind == "gpt2":
        d = hf["n_embd"]
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise UsageError(f"GPT-2 activation {hf['activation_function']!r} is unsupported; ours is the tanh GELU")
        if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
            raise UsageError("GPT-2 checkpoints with scale_attn_by_inverse_layer_idx/reorder_and_upcast_attn are "
                             "unsupported")
        return ModelConfig(flavour="gpt2", num_layers=hf["n_layer"], hidden_size=d, num_attention_heads=hf["n_head"],
                           num_query_groups=hf["n_head"], ffn_hidden_size=hf.get("n_inner") or 4 * d,
                           vocab_size=hf["vocab_size"], max_position_embeddings=hf["n_positions"],
                           norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                           tie_embeddings=hf.get("tie_word_embeddings", True), bias=True,
                           init_std=hf.get("initializer_range", 0.02)).validate()
    if kind != "llama":
        raise UsageError(f"config.json has model_type {kind!r}; only Llama-family ('llama') and 'gpt2' "
                         "checkpoints can be converted")
    if hf.get("hidden_act", "silu") != "silu":
        raise UsageError(f"Llama hidden_act {hf['hidden_act']!r} is unsupported; ours is SwiGLU (silu)")
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise UsageError(f"RoPE type {rope_type!r} is unsupported; only plain RoPE (rope_type 'default') converts")
    if bool(hf.get("attention_bias", False)) != bool(hf.get("mlp_bias", False)):
        raise UsageError("checkpoints with attention_bias != mlp_bias are unsupported; our `bias` covers both")
    heads = hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, hf["hidden_size"] // heads):
        raise UsageError(f"head_dim {hf['head_dim']} differs from hidden_size / num_attention_heads; unsupported")
    return ModelConfig(flavour="llama", num_layers=hf["num_hidden_layers"], hidden_size=hf["hidden_size"],
                       num_attention_heads=heads, num_query_groups=hf.get("num_key_value_heads") or heads,
                       ffn_hidden_size=hf["intermediate_size"], vocab_size=hf["vocab_size"],
                       max_position_embeddings=hf["max_position_embeddings"], norm_eps=hf.get("rms_norm_eps", 1e-6),
                       rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
                       tie_embeddings=hf.get("tie_word_embeddings", False), bias=bool(hf.get("attention_bias")),
                       init_std=hf.get("initializer_range", 0.02)).validate()


def hf_config_from_model(m: ModelConfig, dtype: torch.dtype) -> dict:
    """config.json for LlamaForCausalLM or GPT2LMHeadModel."""
    dtype_name = str(dtype).replace("torch.", "")
    if m.is_llama:
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": m.vocab_size,
                "hidden_size": m.hidden_size, "intermediate_size": m.ffn_hidden_size,
                "num_hidden_layers": m.num_layers, "num_attention_heads": m.num_attention_heads,
                "num_key_value_heads": m.num_query_groups, "head_dim": m.head_dim, "hidden_act": "silu",
                "max_position_embeddings": m.max_position_embeddings, "rms_norm_eps": m.norm_eps,
                "rope_theta": m.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": m.rope_theta},
                "tie_word_embeddings": m.tie_embeddings, "attention_bias": m.bias, "mlp_bias": m.bias,
                "initializer_range": m.init_std, "bos_token_id": 1, "eos_token_id": 2, "dtype": dtype_name}
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": m.vocab_size,
            "n_embd": m.hidden_size, "n_layer": m.num_layers, "n_head": m.num_attention_heads,
            "n_inner": m.ffn_hidden_size, "n_positions": m.max_position_embeddings,
            "layer_norm_epsilon": m.norm_eps, "activation_function": "gelu_new",
            "tie_word_embeddings": m.tie_embeddings, "initializer_range": m.init_std, "dtype": dtype_name}


def _check_convertible(m: ModelConfig) -> None:
    if not m.is_llama:
        if not m.bias or m.num_query_groups != m.num_attention_heads or not m.tie_embeddings:
            raise UsageError("GPT2LMHeadModel needs bias=True, plain multi-head attention and tied embeddings; "
                             "this GPT-2-flavoured model differs, so it has no Hugging Face equivalent")


# ---- weights ----

def _fuse_qkv(m: ModelConfig, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[q; k; v] (rows head-major, or 1-D biases) -> our group-major fused rows."""
    G, g, hd = m.num_query_groups, m.heads_per_group, m.head_dim
    tail = q.shape[1:]
    return torch.cat([q.reshape(G, g, hd, *tail), k.reshape(G, 1, hd, *tail), v.reshape(G, 1, hd, *tail)],
                     dim=1).reshape(G * (g + 2) * hd, *tail)


def _split_qkv(m: ModelConfig, fused: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    G, g, hd = m.num_query_groups, m.heads_per_group, m.head_dim
    tail = fused.shape[1:]
    blocks = fused.reshape(G, g + 2, hd, *tail)
    return (blocks[:, :g].reshape(G * g * hd, *tail), blocks[:, g].reshape(G * hd, *tail),
            blocks[:, g + 1].reshape(G * hd, *tail))


def hf_to_est_state(m: ModelConfig, hf: StateDict) -> StateDict:
    """Our state dict from a Hugging Face one (prefix `model.`/`transformer.` optional); every tensor must be used."""
    hf = dict(hf)
    prefix = "model." if m.is_llama else "transformer."
    hf = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in hf.items()}
    out: StateDict = {}

    def take(name):
        if name not in hf:
            raise UsageError(f"the Hugging Face checkpoint has no tensor {name!r}; is it a complete "
                             f"{'Llama' if m.is_llama else 'GPT-2'} checkpoint of this config?")
        return hf.pop(name)

    if m.is_llama:
        out["embed.weight"] = take("embed_tokens.weight")
        for i in range(m.num_layers):
            a, o = f"layers.{i}.", f"layers.{i}."
            out[o + "attn_norm.weight"] = take(a + "input_layernorm.weight")
            out[o + "mlp_norm.weight"] = take(a + "post_attention_layernorm.weight")
            kinds = ("weight", "bias") if m.bias else ("weight",)
            for kind in kinds:
                out[o + f"attn.qkv.{kind}"] = _fuse_qkv(m, *(take(a + f"self_attn.{p}_proj.{kind}") for p in "qkv"))
                out[o + f"attn.out.{kind}"] = take(a + f"self_attn.o_proj.{kind}")
                out[o + f"mlp.up.{kind}"] = torch.cat([take(a + f"mlp.gate_proj.{kind}"),
                                                       take(a + f"mlp.up_proj.{kind}")])
                out[o + f"mlp.down.{kind}"] = take(a + f"mlp.down_proj.{kind}")
        out["final_norm.weight"] = take("norm.weight")
        if m.tie_embeddings:
            hf.pop("lm_head.weight", None)
        else:
            out["lm_head.weight"] = take("lm_head.weight")
        ignorable = ("rotary_emb.inv_freq",)
    else:
        out["embed.weight"] = take("wte.weight")
        out["pos_embed.weight"] = take("wpe.weight")
        d = m.hidden_size
        for i in range(m.num_layers):
            a, o = f"h.{i}.", f"layers.{i}."
            for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
                out[o + f"{ours}.weight"] = take(a + f"{theirs}.weight")
                out[o + f"{ours}.bias"] = take(a + f"{theirs}.bias")
            w = take(a + "attn.c_attn.weight").t()  # Conv1D: (in, out) -> (out, in)
            out[o + "attn.qkv.weight"] = _fuse_qkv(m, w[:d], w[d:2 * d], w[2 * d:])
            b = take(a + "attn.c_attn.bias")
            out[o + "attn.qkv.bias"] = _fuse_qkv(m, b[:d], b[d:2 * d], b[2 * d:])
            for ours, theirs in (("attn.out", "attn.c_proj"), ("mlp.up", "mlp.c_fc"), ("mlp.down", "mlp.c_proj")):
                out[o + f"{ours}.weight"] = take(a + f"{theirs}.weight").t()
                out[o + f"{ours}.bias"] = take(a + f"{theirs}.bias")
        out["final_norm.weight"] = take("ln_f.weight")
        out["final_norm.bias"] = take("ln_f.bias")
        hf.pop("lm_head.weight", None)  # tied to wte
        ignorable = (".attn.bias", ".attn.masked_bias")
    left = [k for k in hf if not k.endswith(ignorable)]
    if left:
        raise UsageError(f"the Hugging Face checkpoint has {len(left)} tensors this config does not use (first: "
                         f"{left[0]!r}); check that config.json matches the weights")
    return {k: v.contiguous() for k, v in out.items()}


def est_to_hf_state(m: ModelConfig, ours: StateDict) -> StateDict:
    """A Hugging Face LlamaForCausalLM / GPT2LMHeadModel state dict from ours (tied lm_head left out)."""
    _check_convertible(m)
    ours = {k: v for k, v in ours.items()}
    hf: StateDict = {}
    if m.is_llama:
        hf["model.embed_tokens.weight"] = ours["embed.weight"]
        for i in range(m.num_layers):
            a, o = f"model.layers.{i}.", f"layers.{i}."
            hf[a + "input_layernorm.weight"] = ours[o + "attn_norm.weight"]
            hf[a + "post_attention_layernorm.weight"] = ours[o + "mlp_norm.weight"]
            for kind in (("weight", "bias") if m.bias else ("weight",)):
                q, k, v = _split_qkv(m, ours[o + f"attn.qkv.{kind}"])
                hf[a + f"self_attn.q_proj.{kind}"], hf[a + f"self_attn.k_proj.{kind}"] = q, k
                hf[a + f"self_attn.v_proj.{kind}"] = v
                hf[a + f"self_attn.o_proj.{kind}"] = ours[o + f"attn.out.{kind}"]
                gate, up = ours[o + f"mlp.up.{kind}"].chunk(2)
                hf[a + f"mlp.gate_proj.{kind}"], hf[a + f"mlp.up_proj.{kind}"] = gate, up
                hf[a + f"mlp.down_proj.{kind}"] = ours[o + f"mlp.down.{kind}"]
        hf["model.norm.weight"] = ours["final_norm.weight"]
        if not m.tie_embeddings:
            hf["lm_head.weight"] = ours["lm_head.weight"]
    else:
        hf["transformer.wte.weight"] = ours["embed.weight"]
        hf["transformer.wpe.weight"] = ours["pos_embed.weight"]
        for i in range(m.num_layers):
            a, o = f"transformer.h.{i}.", f"layers.{i}."
            for ours_name, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
                hf[a + f"{theirs}.weight"] = ours[o + f"{ours_name}.weight"]
                hf[a + f"{theirs}.bias"] = ours[o + f"{ours_name}.bias"]
            hf[a + "attn.c_attn.weight"] = torch.cat(_split_qkv(m, ours[o + "attn.qkv.weight"])).t()
            hf[a + "attn.c_attn.bias"] = torch.cat(_split_qkv(m, ours[o + "attn.qkv.bias"]))
            for ours_name, theirs in (("attn.out", "attn.c_proj"), ("mlp.up", "mlp.c_fc"),
                                      ("mlp.down", "mlp.c_proj")):
                hf[a + f"{theirs}.weight"] = ours[o + f"{ours_name}.weight"].t()
                hf[a + f"{theirs}.bias"] = ours[o + f"{ours_name}.bias"]
        hf["transformer.ln_f.weight"] = ours["final_norm.weight"]
        hf["transformer.ln_f.bias"] = ours["final_norm.bias"]
    return {k: v.contiguous() for k, v in hf.items()}


# ---- files ----

def _read_weights(directory: str) -> StateDict:
    """All tensors of a HF directory: model.safetensors, sharded safetensors, or pytorch_model*.bin."""
    from safetensors.torch import load_file
    files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    loader = load_file
    if not files:
        files = sorted(glob.glob(os.path.join(directory, "pytorch_model*.bin")))
        loader = lambda path: torch.load(path, map_location="cpu", weights_only=True)  # noqa: E731
    if not files:
        raise UsageError(f"{directory} has no *.safetensors or pytorch_model*.bin weights")
    state: StateDict = {}
    for path in files:
        state.update(loader(path))
    return state


def read_hf_checkpoint(directory: str) -> Tuple[ModelConfig, StateDict]:
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise UsageError(f"{directory} has no config.json; point --hf-dir at a Hugging Face model directory")
    with open(path) as f:
        model = model_config_from_hf(json.load(f))
    return model, hf_to_est_state(model, _read_weights(directory))


def save_est_checkpoint(directory: str, model: ModelConfig, state: StateDict, source: str = "",
                        tokenizer: Optional[Dict[str, str]] = None) -> None:
    """Our standalone checkpoint: model.safetensors + est_config.json (+ tokenizer files)."""
    from safetensors.torch import save_file
    os.makedirs(directory, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, os.path.join(directory, EST_WEIGHTS),
              metadata={"format": "est_megatron"})
    with open(os.path.join(directory, EST_CONFIG), "w") as f:
        json.dump({"model": dataclasses.asdict(model), "source": source}, f, indent=2)
    for name, path in (tokenizer or {}).items():
        shutil.copyfile(path, os.path.join(directory, name))


def _training_tag_dir(directory: str) -> Optional[str]:
    """The tag directory of a training checkpoint (`latest` -> step_N, or a step_N directory itself)."""
    latest = os.path.join(directory, "latest")
    if os.path.isfile(latest):
        with open(latest) as f:
            return os.path.join(directory, f.read().strip())
    if os.path.isfile(os.path.join(directory, "mp_rank_00_model_states.pt")):
        return directory
    return None


def _training_state(tag_dir: str) -> dict:
    path = os.path.join(tag_dir, "est_state.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


_PIPE_FILE = re.compile(r"^layer_(\d+)-model_(\d+)-model_states\.pt$")
_TP_FILE = re.compile(r"^mp_rank_(\d+)_model_states\.pt$")


def _load_module_state(path: str) -> StateDict:
    blob = torch.load(path, map_location="cpu", weights_only=False)
    state = blob.get("module", blob)
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _ranks_complete(ranks, what: str, tag_dir: str) -> int:
    """The TP size from the ranks found; a gap means a missing file."""
    size = max(ranks) + 1
    if sorted(set(ranks)) != list(range(size)):
        raise UsageError(f"{tag_dir} lacks the {what} files of some tensor-parallel ranks (found ranks "
                         f"{sorted(set(ranks))}); copy the whole checkpoint directory")
    return size


def _pipeline_shards(tag_dir: str, m: ModelConfig, files: dict) -> list:
    """Per TP rank, the state dict of a pipeline run: `layer_XX-model_YY-model_states.pt`, XX the PipelineModule
    layer, YY the TP rank; keys are the layer's own names, placed under the layer's global prefix."""
    from est_megatron.parallel.pipeline import pipeline_layer_prefixes
    prefixes = pipeline_layer_prefixes(m)
    tp = _ranks_complete([rank for _, rank in files], "layer_*", tag_dir)
    layers = sorted({layer for layer, _ in files})
    if layers[-1] >= len(prefixes) or any((layer, rank) not in files for layer in layers for rank in range(tp)):
        raise UsageError(f"{tag_dir} has pipeline layer files that do not fit this model ({len(prefixes)} pipeline "
                         "layers); is est_state.json from the same run?")
    states = [{} for _ in range(tp)]
    for (layer, rank), path in sorted(files.items()):
        for key, value in _load_module_state(path).items():
            states[rank].setdefault(prefixes[layer] + key, value)  # a tied embedding counts once
    return states


def _training_weights(tag_dir: str, m: ModelConfig) -> StateDict:
    """The single-process weights of a training checkpoint of any layout: DeepSpeed's per-rank files are merged
    with the sharding rules of est_megatron.parallel.layers (TP) and the layer order of the pipeline (PP)."""
    from est_megatron.parallel.layers import merge_tensor_parallel
    names = os.listdir(tag_dir)
    pipe = {(int(g.group(1)), int(g.group(2))): os.path.join(tag_dir, n) for n in names if (g := _PIPE_FILE.match(n))}
    if pipe:
        states = _pipeline_shards(tag_dir, m, pipe)
    else:
        tp_files = {int(g.group(1)): os.path.join(tag_dir, n) for n in names if (g := _TP_FILE.match(n))}
        if not tp_files:
            raise UsageError(f"{tag_dir} has no mp_rank_00_model_states.pt; is it a DeepSpeed checkpoint tag?")
        tp = _ranks_complete(list(tp_files), "mp_rank_*_model_states.pt", tag_dir)
        states = [_load_module_state(tp_files[rank]) for rank in range(tp)]
        if any(v.numel() == 0 for v in states[0].values()):  # ZeRO-3 keeps placeholders here: merge the partitions
            if tp > 1:
                raise UsageError(f"{tag_dir} is a ZeRO-3 checkpoint of a tensor-parallel run, which cannot be merged; "
                                 "train with ZeRO-1/2 under tensor parallelism, or with TP=1 under ZeRO-3")
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
            parent, tag = os.path.split(os.path.abspath(tag_dir))
            states = [{k[len("module."):] if k.startswith("module.") else k: v for k, v in
                       get_fp32_state_dict_from_zero_checkpoint(parent, tag=tag).items()}]
    state = merge_tensor_parallel(states, m)
    _check_shapes(state, m, tag_dir)
    return state


def _check_shapes(state: StateDict, m: ModelConfig, where: str) -> None:
    from est_megatron.model.transformer import Transformer
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Transformer(m).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        name = next(k for k in sorted(set(got) | set(expected)) if got.get(k) != expected.get(k))
        raise UsageError(f"{where} does not hold this model's weights: {name} is {got.get(name)} but the model needs "
                         f"{expected.get(name)}; is est_state.json from the same run?")


def load_est_weights(directory: str) -> Tuple[ModelConfig, StateDict]:
    """(ModelConfig, our state dict) from our converted checkpoint or a training checkpoint directory."""
    if os.path.isfile(os.path.join(directory, EST_WEIGHTS)):
        from safetensors.torch import load_file
        config_path = os.path.join(directory, EST_CONFIG)
        if not os.path.isfile(config_path):
            raise UsageError(f"{directory} has {EST_WEIGHTS} but no {EST_CONFIG}; convert it again")
        with open(config_path) as f:
            model = ModelConfig(**json.load(f)["model"]).validate()
        return model, load_file(os.path.join(directory, EST_WEIGHTS))
    tag_dir = _training_tag_dir(directory)
    if tag_dir is None:
        raise UsageError(f"{directory} holds neither {EST_WEIGHTS} (tools/convert_hf_to_est.py) nor a training "
                         "checkpoint (latest -> step_N/); give one of those")
    saved = _training_state(tag_dir).get("model")
    if saved is None:
        raise UsageError(f"{tag_dir} has no est_state.json with the model config; is it an est_megatron checkpoint?")
    model = ModelConfig(**saved).validate()
    return model, _training_weights(tag_dir, model)


def tokenizer_files(directory: str) -> Dict[str, str]:
    """Tokenizer files that belong to a checkpoint: those beside it, else the run's recorded --tokenizer-model."""
    found = {name: os.path.join(directory, name) for name in TOKENIZER_FILES
             if os.path.isfile(os.path.join(directory, name))}
    if "tokenizer.model" not in found:
        tag_dir = _training_tag_dir(directory)
        recorded = (_training_state(tag_dir).get("args") or {}).get("tokenizer_model") if tag_dir else None
        if recorded and os.path.isfile(recorded):
            found["tokenizer.model"] = recorded
    return found


def write_hf_checkpoint(directory: str, model: ModelConfig, state: StateDict, dtype: torch.dtype = torch.float32,
                        tokenizer: Optional[Dict[str, str]] = None) -> None:
    """A directory `transformers.AutoModelForCausalLM.from_pretrained` loads, with the tokenizer files."""
    from safetensors.torch import save_file
    os.makedirs(directory, exist_ok=True)
    hf = est_to_hf_state(model, state)
    save_file({k: v.detach().to("cpu", dtype).contiguous() for k, v in hf.items()},
              os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config_from_model(model, dtype), f, indent=2)
    copied = []
    for name, path in (tokenizer or {}).items():
        if os.path.abspath(path) != os.path.abspath(os.path.join(directory, name)):
            shutil.copyfile(path, os.path.join(directory, name))
        copied.append(name)
    if model.is_llama and "tokenizer.model" in copied and "tokenizer_config.json" not in copied:
        with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                       "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False, "legacy": False,
                       "model_max_length": model.max_position_embeddings}, f, indent=2)
