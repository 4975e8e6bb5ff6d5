"""Packed documents kept apart (--reset-position-ids, --reset-attention-mask, --eod-mask-loss): the positions and
masks built from a packed row, and a packed forward equal to running each document alone (dense and EST)."""
from types import SimpleNamespace

import pytest
import torch

from est_megatron.config import SubnetConfig, model_preset
from est_megatron.errors import UsageError
from est_megatron.model import attention
from est_megatron.model.documents import DocumentResets, document_ids
from est_megatron.model.recompute import Recompute
from est_megatron.model.transformer import Transformer
from est_megatron.parallel.pipeline import (EmbeddingPipe, FinalNormPipe, PositionEmbeddingPipe, StageDocuments,
                                            TransformerLayerPipe, output_loss, tied_head_forward)
from est_megatron.subnet.plan import PlanSampler
from est_megatron.subnet.schedule import parse_schedule
from est_megatron.tensor_parallel.plan_localization import PlanHolder
from est_megatron.training.arguments import build_parser
from est_megatron.training.packed_documents import PackedDocuments

EOD = 2
BOTH = DocumentResets(position_ids=True, attention_mask=True)


def test_positions_masks_and_lengths_of_a_packed_row():
    row = torch.tensor([[5, 6, EOD, 7, EOD, 8, 9], [EOD, 3, 4, 5, 6, 7, 8]])
    ids = document_ids(row, EOD)
    assert ids.tolist() == [[0, 0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 1, 1, 1]]
    documents = BOTH.documents(ids)
    assert documents.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 1], [0, 0, 1, 2, 3, 4, 5]]
    mask = documents.attention_mask
    assert mask.shape == (2, 1, 7, 7)
    assert mask[0, 0, 3].tolist() == [False, False, False, True, False, False, False]  # first token of document 1
    assert mask[0, 0, 6].tolist() == [False] * 5 + [True, True]
    assert torch.equal(mask[1, 0, 1:, 1:], torch.ones(6, 6, dtype=torch.bool).tril())
    lengths, longest = documents.cumulative_lengths
    assert lengths.tolist() == [0, 3, 5, 7, 8, 14] and longest == 6
    assert DocumentResets(attention_mask=True).documents(ids).position_ids is None


def test_eod_mask_loss_ignores_the_predictions_made_at_an_eod():
    """Megatron's loss_mask[tokens == eod] = 0: the target after an EOD (the next document's first token)."""
    tokens = torch.tensor([[5, 6, EOD, 7, 8, EOD, 9]])
    packing = PackedDocuments(EOD, DocumentResets(), eod_mask_loss=True)
    inputs, labels, documents = packing.split(tokens[:, :-1], tokens[:, 1:])
    assert labels.tolist() == [[6, EOD, -100, 8, EOD, -100]] and documents is None
    assert tokens[0, 3] == 7  # the batch itself is untouched


def packed_and_alone(preset, plan_rates=None, recompute=None):
    cfg = model_preset(preset)
    torch.manual_seed(0)
    model = Transformer(cfg).double().eval()
    if recompute:
        Recompute(recompute).apply(model)
    plan = None
    if plan_rates:
        schedule = parse_schedule("10:{},{},{}".format(*plan_rates)).resolve(10)
        plan = PlanSampler(cfg, SubnetConfig(), schedule, seed=3).plan(1)
        assert plan.layers[0].query_heads is not None  # sampled heads: the gathered path
    gen = torch.Generator().manual_seed(1)
    first = torch.cat([torch.randint(3, cfg.vocab_size, (6,), generator=gen), torch.tensor([EOD])])
    second = torch.randint(3, cfg.vocab_size, (9,), generator=gen)
    packed = torch.cat([first, second])[None]
    documents = BOTH.documents(document_ids(packed, EOD))
    with torch.no_grad():
        together = model(packed, plan, documents=documents)
        alone = torch.cat([model(first[None], plan), model(second[None], plan)], dim=1)
    return together, alone, model(packed, plan)


@pytest.mark.parametrize("preset, rates, recompute", [
    ("tiny", None, None), ("tiny", (0.5, 0.5, 1.0), None), ("tiny", (0.5, 1.0, 1.0), "selective"),
    ("tiny-gpt2", (0.5, 0.5, 1.0), None)], ids=["dense", "est-heads", "est-selective-recompute", "gpt2-est"])
def test_a_packed_forward_equals_each_document_alone(preset, rates, recompute):
    together, alone, unseparated = packed_and_alone(preset, rates, recompute)
    torch.testing.assert_close(together, alone, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(unseparated[:, 7:], alone[:, 7:])  # without the flags, the second document differs


def test_flags_off_build_nothing_and_a_tokenizer_without_eos_is_refused():
    args = build_parser().parse_args(["--data-path", "x", "--reset-attention-mask"])
    assert PackedDocuments.from_args(build_parser().parse_args(["--data-path", "x"]), SimpleNamespace(eos_id=2)) \
        is None
    assert PackedDocuments.from_args(args, SimpleNamespace(eos_id=2)).resets == DocumentResets(attention_mask=True)
    with pytest.raises(UsageError, match="^--reset-attention-mask needs the tokenizer's end-of-document"):
        PackedDocuments.from_args(args, SimpleNamespace(eos_id=-1))


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal):
    """flash_attn_varlen_func's contract, written plainly: causal attention inside each [cu[i], cu[i+1]) span."""
    assert causal and torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32 and max_q == max_k
    out, group = torch.empty_like(q), q.shape[1] // k.shape[1]
    for start, end in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        assert end - start <= max_q
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))
        ks, vs = ks.repeat_interleave(group, 0), vs.repeat_interleave(group, 0)
        out[start:end] = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True).transpose(0, 1)
    return out


def test_the_flash_attn_varlen_call_equals_the_masked_attention(monkeypatch):
    """The flash-attn branch's layout and cumulative lengths (the kernel itself needs CUDA and flash-attn)."""
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, heads, 7, 8, generator=gen) for heads in (4, 2, 2))
    documents = BOTH.documents(document_ids(torch.tensor([[5, 6, EOD, 7, EOD, 8, 9], [EOD, 3, 4, 5, 6, 7, 8]]), EOD))
    masked = attention.causal_attention(q, k, v, documents)
    monkeypatch.setattr(attention, "uses_flash_attn", lambda _: True)
    monkeypatch.setattr(attention, "flash_attn_varlen_func", reference_varlen)
    torch.testing.assert_close(attention.causal_attention(q, k, v, documents), masked)


def test_pipeline_stages_pass_the_document_ids_along():
    """The pipe layers run in a row on one process (GPT-2: learned positions, tied head), then the engine's loss
    function (the tied weight's projection, chunked), equal the model's loss."""
    cfg = model_preset("tiny-gpt2")
    torch.manual_seed(0)
    model = Transformer(cfg).double().eval()
    holder = PlanHolder(cfg)
    holder.set(PlanSampler(cfg, SubnetConfig(), parse_schedule("10:0.5,0.5,1").resolve(10), seed=3).plan(1))
    builds = []

    class CountedResets(DocumentResets):
        def documents(self, ids):
            builds.append(ids)
            return super().documents(ids)

    documents = StageDocuments(CountedResets(position_ids=True, attention_mask=True))
    stages = [EmbeddingPipe(cfg), PositionEmbeddingPipe(cfg, documents)]
    stages += [TransformerLayerPipe(cfg, i, holder, None, documents) for i in range(cfg.num_layers)]
    stages.append(FinalNormPipe(cfg))
    weights = model.state_dict()
    for stage in stages:
        stage.double().load_state_dict({n: weights[stage.weight_prefix + n] for n, _ in stage.named_parameters()})
    packed = torch.tensor([[5, 6, EOD, 7, 8, 9, EOD, 10, 11]])
    ids, labels = document_ids(packed, EOD), torch.roll(packed, -1, dims=1)
    activations = (packed, ids)
    with torch.no_grad():
        for stage in stages:
            activations = stage(activations)
        loss = output_loss(stages[0], None, cfg.vocab_size, tied_head_forward(stages[0], activations), labels)
        expected = model(packed, holder.plan, labels, documents=BOTH.documents(ids))
    torch.testing.assert_close(loss, expected)
    assert len(builds) == 1  # one Documents for all the stage's layers
