"""The custom gather autograd function (est_megatron.model.gather) against plain autograd."""
import pytest
import torch

from est_megatron.model.gather import gather


def sorted_index(n, keep, seed):
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:keep].sort().values


@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_gradcheck(dim, scale):
    weight = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    index = sorted_index(weight.shape[dim], 3, seed=dim)
    assert torch.autograd.gradcheck(lambda w: gather(w, dim, index, scale), (weight,))
    assert torch.autograd.gradgradcheck(lambda w: gather(w, dim, index, scale), (weight,))


@pytest.mark.parametrize("dim", [0, 1])
def test_matches_index_select_autograd(dim):
    torch.manual_seed(0)
    weight = torch.randn(12, 10, dtype=torch.float64, requires_grad=True)
    index = sorted_index(weight.shape[dim], 5, seed=1)
    x = torch.randn(4, 10 if dim == 0 else 5, dtype=torch.float64)
    scale = 12 / 5
    out = x @ gather(weight, dim, index, scale).T
    ref = x @ (weight.index_select(dim, index) * scale).T
    assert torch.equal(out, ref)
    grad_out = torch.randn_like(out)
    (mine,) = torch.autograd.grad(out, weight, grad_out)
    (theirs,) = torch.autograd.grad(ref, weight, grad_out)
    torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-14)
    unsampled = torch.ones(weight.shape[dim], dtype=torch.bool)
    unsampled[index] = False
    assert mine.index_select(dim, unsampled.nonzero().flatten()).count_nonzero() == 0  # exactly zero


def test_output_contiguous_and_accumulates_through_autograd():
    """Gradients arrive through the parameter's AccumulateGrad node, so post-accumulate hooks (ZeRO) fire."""
    weight = torch.nn.Parameter(torch.randn(8, 3))
    fired = []
    weight.register_post_accumulate_grad_hook(lambda p: fired.append(p.grad.clone()))
    out = gather(weight, 1, torch.tensor([0, 2]), 1.5)
    assert out.is_contiguous()
    out.sum().backward()
    out = gather(weight, 0, torch.tensor([1, 5]))
    out.sum().backward()
    assert len(fired) == 2
    expected = torch.zeros(8, 3)
    expected[:, [0, 2]] = 1.5
    expected[[1, 5]] += 1.0
    torch.testing.assert_close(weight.grad, expected)


def test_no_grad_path_is_plain_gather():
    weight = torch.randn(5, 4, requires_grad=True)
    with torch.no_grad():
        out = gather(weight, 0, torch.tensor([1, 3]), 2.0)
    assert out.grad_fn is None
    torch.testing.assert_close(out, weight.detach()[[1, 3]] * 2.0)
