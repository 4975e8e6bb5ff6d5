"""Hugging Face <-> est_megatron checkpoints: Llama-family (LlamaForCausalLM) and GPT-2 (GPT2LMHeadModel).

Weight layouts. Ours fuses Q/K/V group-major (per key/value group: its query heads, its key head, its value head,
`head_dim` rows each) and Llama's gate/up as [gate; up]; Hugging Face keeps q/k/v_proj and gate/up_proj
separate, and GPT-2's Conv1D stores weights transposed (in x out) with c_attn = [q; k; v]. RoPE is rotate-half
in both, so q/k rows need no permutation. Conversion is a pure re-layout: ours -> HF -> ours is bit-exact.

This module is the Hugging Face side only: config mapping, weight re-layout and reading/writing Hugging Face
folders. Our own formats on disk (training checkpoints, the standalone checkpoint `--init-from` reads, the
safetensors files both use) belong to est_megatron.checkpoint.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
from typing import Dict, List, Optional, Tuple

import torch

from est_megatron.checkpoint.merge import safe_load
from est_megatron.checkpoint.safetensors_files import DEFAULT_MAX_SHARD_SIZE, read_safetensors, save_safetensors
from est_megatron.config import ModelConfig
from est_megatron.data.tokenizer import TokenizerSpec
from est_megatron.errors import UsageError

StateDict = Dict[str, torch.Tensor]


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


def _input_major(t: torch.Tensor) -> torch.Tensor:
    """A Llama o_proj/down_proj weight (out, in) <-> our input-major (in, out) one; biases stay as they are."""
    return t.t() if t.dim() == 2 else t


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
                out[o + f"attn.out.{kind}"] = _input_major(take(a + f"self_attn.o_proj.{kind}"))
                out[o + f"mlp.up.{kind}"] = torch.cat([take(a + f"mlp.gate_proj.{kind}"),
                                                       take(a + f"mlp.up_proj.{kind}")])
                out[o + f"mlp.down.{kind}"] = _input_major(take(a + f"mlp.down_proj.{kind}"))
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
                weight = take(a + f"{theirs}.weight")  # Conv1D: (in, out), as our output and down projections
                out[o + f"{ours}.weight"] = weight.t() if ours == "mlp.up" else weight
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
                hf[a + f"self_attn.o_proj.{kind}"] = _input_major(ours[o + f"attn.out.{kind}"])
                gate, up = ours[o + f"mlp.up.{kind}"].chunk(2)
                hf[a + f"mlp.gate_proj.{kind}"], hf[a + f"mlp.up_proj.{kind}"] = gate, up
                hf[a + f"mlp.down_proj.{kind}"] = _input_major(ours[o + f"mlp.down.{kind}"])
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
                weight = ours[o + f"{ours_name}.weight"]
                hf[a + f"{theirs}.weight"] = weight.t() if ours_name == "mlp.up" else weight
                hf[a + f"{theirs}.bias"] = ours[o + f"{ours_name}.bias"]
        hf["transformer.ln_f.weight"] = ours["final_norm.weight"]
        hf["transformer.ln_f.bias"] = ours["final_norm.bias"]
    return {k: v.contiguous() for k, v in hf.items()}


# ---- files ----

def _read_weights(directory: str) -> StateDict:
    """All tensors of a HF directory: model.safetensors, sharded safetensors, or pytorch_model*.bin."""
    from safetensors.torch import load_file
    indexed = read_safetensors(directory)
    if indexed is not None:
        return indexed
    files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    loader = load_file
    if not files:
        files = sorted(glob.glob(os.path.join(directory, "pytorch_model*.bin")))
        loader = safe_load
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


def _source_tokenizer_config(tokenizer) -> dict:
    """The tokenizer_config.json beside the tokenizer's files (an imported Hugging Face folder's own: special
    tokens, add_bos_token, chat template), if any."""
    spec = tokenizer.spec
    first = spec.model or spec.vocab_file
    folder = first if os.path.isdir(first) else os.path.dirname(os.path.abspath(first))
    path = os.path.join(folder, "tokenizer_config.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return {}


def _adds_bos(tokenizer) -> bool:
    """Whether the tokenizer itself prepends BOS: its config's add_bos_token, else what its tokenizer.json does."""
    config = _source_tokenizer_config(tokenizer)
    if "add_bos_token" in config:
        return bool(config["add_bos_token"])
    if tokenizer.spec.type != "HuggingFaceTokenizer" or tokenizer.bos_id < 0:
        return False
    return tokenizer.backend.encode("a", add_special_tokens=True).ids[:1] == [tokenizer.bos_id]


def write_hf_checkpoint(directory: str, model: ModelConfig, state: StateDict, dtype: torch.dtype = torch.float32,
                        tokenizer: Optional[TokenizerSpec] = None, add_bos: Optional[bool] = None,
                        max_shard_size: str = DEFAULT_MAX_SHARD_SIZE) -> List[str]:
    """A directory `transformers.AutoModelForCausalLM.from_pretrained` loads and, given the tokenizer,
    `AutoTokenizer.from_pretrained` too: a fast tokenizer.json (est_megatron.hf_tokenizer) that prepends BOS when
    `add_bos` (None: as the tokenizer's own files say), config.json with its bos/eos/pad ids, and the source
    files (tokenizer.model, vocab.json + merges.txt) for slow tokenizers. The weights are model.safetensors, or
    past `max_shard_size` numbered shards with model.safetensors.index.json; returns the weight files."""
    hf = est_to_hf_state(model, state)
    written = save_safetensors(directory, {k: v.detach().to("cpu", dtype).contiguous() for k, v in hf.items()},
                               max_shard_size, metadata={"format": "pt"})
    config = hf_config_from_model(model, dtype)
    if tokenizer is not None:
        from est_megatron.hf_tokenizer import special_ids, write_tokenizer_files
        tok = tokenizer.load()
        if tok.vocab_size > model.vocab_size:
            raise UsageError(f"the tokenizer has {tok.vocab_size} tokens but the model's vocabulary is "
                             f"{model.vocab_size}; pass the tokenizer the model was trained with")
        config.update(special_ids(tok))
        copies = ({"tokenizer.model": tokenizer.model} if tokenizer.type == "SentencePieceTokenizer" else
                  {"vocab.json": tokenizer.vocab_file, "merges.txt": tokenizer.merge_file}
                  if tokenizer.type == "GPT2BPETokenizer" else {})
        for name, path in copies.items():
            if os.path.abspath(path) != os.path.abspath(os.path.join(directory, name)):
                shutil.copyfile(path, os.path.join(directory, name))
        write_tokenizer_files(directory, tok, _adds_bos(tok) if add_bos is None else add_bos,
                              model.max_position_embeddings, _source_tokenizer_config(tok))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return written
