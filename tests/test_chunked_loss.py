"""The chunked output projection + cross-entropy equals the plain path (the whole logits, then cross-entropy):
loss and the gradients of the hidden states and the output weight, over several chunks, with ignored labels,
under no_grad, and through the model (tied and untied embeddings)."""
import pytest
import torch
import torch.nn.functional as F

from est_megatron.config import model_preset
from est_megatron.model.transformer import Transformer
from est_megatron.tensor_parallel.output_layer import chunked_linear_cross_entropy


def plain_loss(x, weight, labels):
    logits = F.linear(x, weight).float()
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


@pytest.mark.parametrize("chunk_tokens", [1, 5, 64])
def test_chunks_equal_the_whole_logits(chunk_tokens):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 16, generator=gen, requires_grad=True)
    weight = torch.randn(50, 16, generator=gen, requires_grad=True)
    labels = torch.randint(0, 50, (3, 7), generator=gen)
    labels[0, :3] = -100
    ref = plain_loss(x, weight, labels)
    ref_grads = torch.autograd.grad(ref, (x, weight))
    loss = chunked_linear_cross_entropy(x, weight, labels, None, 50, chunk_logits=chunk_tokens * 50)
    grads = torch.autograd.grad(loss * 3.0, (x, weight))  # a scaled loss scales both gradients
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, 3.0 * want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(chunked_linear_cross_entropy(x, weight, labels, None, 50, 50), ref)


@pytest.mark.parametrize("tied", [False, True])
def test_model_loss_and_gradients_equal_the_logits_path(tied):
    cfg = model_preset("tiny", tie_embeddings=tied)
    model = Transformer(cfg, seed=0)
    ids = torch.randint(0, cfg.vocab_size, (2, 16))
    labels = torch.roll(ids, -1, dims=1)
    loss = model(ids, labels=labels)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    logits = model(ids)
    ref = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.reshape(-1))
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Liger-Kernel's loss runs on CUDA")
def test_liger_loss_on_cuda_equals_the_whole_logits():
    pytest.importorskip("liger_kernel", reason="the gpu extra (Liger-Kernel) is not installed")
    from est_megatron.tensor_parallel.output_layer import loss_kernel
    assert loss_kernel(torch.device("cuda"), 1) == "liger" and loss_kernel(torch.device("cuda"), 2) == "chunked"
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(4, 33, 64, generator=gen, device="cuda", requires_grad=True)
    weight = torch.randn(500, 64, generator=gen, device="cuda", requires_grad=True)
    labels = torch.randint(0, 500, (4, 33), generator=gen, device="cuda")
    labels[1, :5] = -100
    ref = plain_loss(x, weight, labels)
    ref_grads = torch.autograd.grad(ref, (x, weight))
    loss = chunked_linear_cross_entropy(x, weight, labels, None, 500)
    grads = torch.autograd.grad(loss * 2.0, (x, weight))
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-4)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, 2.0 * want, rtol=1e-3, atol=1e-4)
