"""Plain-PyTorch references for the optimizer and training-loop tests: written for clarity, not speed, and sharing
no code with est_megatron.training beyond the model, the plans, the data and the LR multiplier.

- `trained_masks`: full-shape boolean masks of what a plan trains, from the model's own `trained_slices`.
- `MaskedAdamW`: AdamW with full-size per-element step counts; an element outside the mask keeps its value and
  moments and is not counted. Per-unit counts in SparseAdamW must give the same numbers.
- `reference_losses`: the training loop without DeepSpeed: same data order, plans, LR schedule and clipping.
"""
import math

import torch

from est_megatron.model.transformer import Transformer


def trained_masks(model, plan):
    """{name: bool mask of parameter shape}: True where `plan` (global, single-process model) trains."""
    masks = {name: torch.ones(p.shape, dtype=torch.bool) for name, p in model.named_parameters()}
    if plan is None or plan.is_dense:
        return masks
    names = {id(p): name for name, p in model.named_parameters()}
    for layer in model.layers:
        layer_plan = plan.layers[layer.index]
        for param, axis, index in layer.trained_slices(layer_plan if layer_plan.active else None):
            mask = masks[names[id(param)]]
            if not layer_plan.active:
                mask.zero_()
            elif index is not None:
                mask.zero_()
                mask.index_fill_(axis, index, True)
    return masks


def decay_groups(model, weight_decay):
    return [{"params": [p for p in model.parameters() if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in model.parameters() if p.ndim < 2], "weight_decay": 0.0}]


def lr_factors(model, plan, power):
    """{name: learning-rate multiplier} of the sparse step's `power`: (fraction of the parameter's rows the plan
    trains) x (fraction of layers it runs), to the power, for the layer parameters a sampled plan trains."""
    if plan is None or plan.is_dense or not power:
        return {}
    masks = trained_masks(model, plan)
    layers_run = sum(layer.active for layer in plan.layers) / len(plan.layers)
    factors = {}
    for name, mask in masks.items():
        if name.startswith("layers.") and mask.any():
            rows = mask.reshape(mask.shape[0], -1).any(1) if mask.ndim > 1 else mask
            rate = rows.double().mean().item() * layers_run
            if rate < 1:
                factors[name] = rate ** power
    return factors


class MaskedAdamW:
    """AdamW where only masked elements step; each element's bias correction uses its own step count."""

    def __init__(self, model, lr, betas, eps, weight_decay):
        self.model, self.lr, self.betas, self.eps, self.wd = model, lr, betas, eps, weight_decay
        self.state = {name: (torch.zeros_like(p), torch.zeros_like(p), torch.zeros_like(p))
                      for name, p in model.named_parameters()}

    @torch.no_grad()
    def step(self, masks, lr=None, factors=None):
        """`factors`: {name: multiplier of the step size's learning rate} (lr_factors); weight decay is lr * wd."""
        beta1, beta2 = self.betas
        base_lr = self.lr if lr is None else lr
        for name, p in self.model.named_parameters():
            unit_lr = base_lr * (factors or {}).get(name, 1.0)
            grad = torch.zeros_like(p) if p.grad is None else p.grad
            m, v, count = self.state[name]
            mask = masks[name]
            wd = self.wd if p.ndim >= 2 else 0.0
            count += mask.to(count.dtype)
            new_m = beta1 * m + (1 - beta1) * grad
            new_v = beta2 * v + (1 - beta2) * grad * grad
            safe = count.clamp(min=1)
            m_hat = new_m / (1 - beta1 ** safe)
            v_hat = new_v / (1 - beta2 ** safe)
            new_p = p * (1 - base_lr * wd) - unit_lr * m_hat / (v_hat.sqrt() + self.eps)
            m.copy_(torch.where(mask, new_m, m))
            v.copy_(torch.where(mask, new_v, v))
            p.copy_(torch.where(mask, new_p, p))

    def zero_grad(self):
        for p in self.model.parameters():
            p.grad = None


def reference_losses(cfg, seed, dataset, plan_of, steps, global_batch, micro_batch, lr_of, clip, optimizer,
                     lr_power=0.0):
    """Per-step mean training loss of the plain loop. `plan_of(step)` -> StepPlan or None; `lr_of(step)` -> lr;
    `optimizer`: "adamw" (torch, zero-filled gradients outside the plan) or "masked" (MaskedAdamW, with the
    sparse step's learning-rate power `lr_power`)."""
    model = Transformer(cfg, None, seed)
    hyper = dict(lr=1.0, betas=(0.9, 0.95), eps=1e-8)
    if optimizer == "adamw":
        opt = torch.optim.AdamW(decay_groups(model, 0.1), fused=True, **hyper)  # the training loop's kernel
    else:
        opt = MaskedAdamW(model, weight_decay=0.1, **hyper)
    losses = []
    for step in range(steps):
        plan = plan_of(step)
        for p in model.parameters():  # a skipped layer's gradient is zero, as DeepSpeed's flat buffers hold it
            p.grad = torch.zeros_like(p)
        total = 0.0
        for start in range(step * global_batch, (step + 1) * global_batch, micro_batch):
            batch = torch.stack([torch.as_tensor(dataset[i], dtype=torch.int64)
                                 for i in range(start, start + micro_batch)])
            loss = model(batch[:, :-1], plan=plan, labels=batch[:, 1:])
            (loss / (global_batch // micro_batch)).backward()
            total += loss.item()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        lr = lr_of(step)
        if optimizer == "adamw":
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step()
        else:
            opt.step(trained_masks(model, plan), lr, lr_factors(model, plan, lr_power))
        losses.append(total / (global_batch // micro_batch))
        assert math.isfinite(losses[-1])
    return losses
