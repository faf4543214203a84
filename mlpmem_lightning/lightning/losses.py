"""The MLP Memory training loss, from sparse kNN targets, never densified.

loss = α·KL(p_kNN ‖ p_mem) + (1−α)·CE(next token)   (arXiv 2508.01832, α = 0.5)

Targets come as ``ids`` [T, K] (−1 pads) and ``probs`` [T, K] (0 pads), K ≪ V (targets.py).
Since KL(p ‖ q) = Σ_j p_j (log p_j − log q_{id_j}) only touches the K target ids, a dense [T, V]
target is never needed: the one unavoidable [T, V] tensor is log_softmax of the logits.

Two versions:

* :func:`memory_loss` takes logits. Simple and exact; with autograd it still keeps a few [T, V]
  float32 tensors alive (the logits, their log_softmax, and in backward the gradient of each).
* :func:`fused_memory_loss` takes the memory's final features and head matrix and processes the
  tokens in chunks, computing the gradient in the forward pass (as Liger's fused linear
  cross-entropy does), so only [chunk, V] tensors ever exist. Same values and gradients; use it
  when T·V is large (long batches, big vocabularies).

``MemoryLM(loss="sparse"|"fused")`` picks one; ``mlpmem_lightning.bench.memory_peak`` measures what a whole
training step costs with each (and with a dense target, for comparison).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mlpmem_lightning.core.errors import UserError


def check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"alpha={alpha} must be in [0, 1] (weight of the KL term; the paper uses 0.5)")


def sparse_targets(knn_ids: torch.Tensor, knn_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids as int64 with pads pointing at token 0, float32 probs renormalised per row with pads 0).

    Targets are stored in float16, whose rounding leaves rows summing to 1 ± 1e-3; renormalising in
    float32 makes the KL a true divergence (>= 0, and 0 when the memory matches). A row with no
    targets at all stays all-zero and contributes no KL.
    """
    valid = knn_ids >= 0
    p = torch.where(valid, knn_probs.float(), 0.0)
    p = p / p.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return knn_ids.long().clamp_min(0), p


def _kl_rows(p: torch.Tensor, logq_at_ids: torch.Tensor) -> torch.Tensor:
    """Σ_j p_j (log p_j − log q_j) per row, with 0·log 0 = 0 and pads (p = 0) contributing nothing."""
    return torch.where(p > 0, p * (torch.log(p) - logq_at_ids), 0.0).sum(-1)


def _mix(alpha: float, kl: torch.Tensor, ce: torch.Tensor) -> torch.Tensor:
    """α·KL + (1−α)·CE, with the end points exact (no 0·KL term that an infinite KL would turn into NaN)."""
    return ce if alpha == 0 else kl if alpha == 1 else alpha * kl + (1 - alpha) * ce


def memory_loss(logits: torch.Tensor, knn_ids: torch.Tensor, knn_probs: torch.Tensor, labels: torch.Tensor,
                alpha: float = 0.5) -> dict[str, torch.Tensor]:
    """{loss, kl, ce}, each a mean over the tokens.

    logits [T, V] (or [B, S, V]) in any float dtype, computed in float32; knn_ids / knn_probs [T, K]
    (or [B, S, K]) as stored by targets.py, ids duplicate-free within a row; labels [T] (or [B, S]).
    """
    check_alpha(alpha)
    logq = F.log_softmax(logits.reshape(-1, logits.shape[-1]).float(), dim=-1)
    ids, p = sparse_targets(knn_ids.reshape(len(logq), -1), knn_probs.reshape(len(logq), -1))
    kl = _kl_rows(p, logq.gather(1, ids)).mean()
    ce = F.nll_loss(logq, labels.reshape(-1).long())  # exactly what F.cross_entropy computes
    return {"loss": _mix(alpha, kl, ce), "kl": kl, "ce": ce}


class _FusedMemoryLoss(torch.autograd.Function):
    """head matmul + log_softmax + sparse KL + CE, chunk by chunk, gradient computed in forward.

    d loss / d logits = [α·(s·q − p_scatter) + (1−α)·(q − onehot)] / T, with q = softmax(logits) and
    s = Σ_j p_j (1, or 0 for a row without targets). From it the chunk's gradients w.r.t. the
    features (g @ W) and the head (gᵀ @ x) follow; the [chunk, V] tensors are then dropped.
    """

    @staticmethod
    def forward(ctx, x, weight, ids, p, labels, alpha: float, chunk: int):
        t = x.shape[0]
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        need_w = ctx.needs_input_grad[1]
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        kl_sum = x.new_zeros((), dtype=torch.float32)
        ce_sum = x.new_zeros((), dtype=torch.float32)
        for a in range(0, t, chunk):
            xc, idc, pc, lc = x[a:a + chunk], ids[a:a + chunk], p[a:a + chunk], labels[a:a + chunk]
            logq = F.log_softmax(F.linear(xc, weight).float(), dim=-1)
            kl_sum += _kl_rows(pc, logq.gather(1, idc)).sum()
            ce_sum -= logq.gather(1, lc[:, None]).sum()
            if grad_x is None and grad_w is None:
                continue
            g = logq.exp_().mul_((alpha * pc.sum(-1) + (1 - alpha))[:, None] / t)  # reuses logq's memory
            g.scatter_add_(1, idc, pc * (-alpha / t))
            g.scatter_add_(1, lc[:, None], g.new_full((len(lc), 1), -(1 - alpha) / t))
            g = g.to(weight.dtype)  # matmuls in the model's dtype (bf16 on GPU), accumulation in float32
            if grad_x is not None:
                grad_x[a:a + chunk] = g @ weight
            if grad_w is not None:
                grad_w += g.t() @ xc.to(weight.dtype)
        ctx.save_for_backward(grad_x, grad_w)
        ctx.weight_dtype = weight.dtype
        kl, ce = kl_sum / t, ce_sum / t
        ctx.mark_non_differentiable(kl, ce)
        return _mix(alpha, kl, ce).clone(), kl, ce  # a tensor of its own: kl and ce carry no gradient

    @staticmethod
    def backward(ctx, grad_loss, _grad_kl, _grad_ce):
        grad_x, grad_w = ctx.saved_tensors
        gx = grad_x * grad_loss.to(grad_x.dtype) if grad_x is not None else None
        gw = (grad_w * grad_loss).to(ctx.weight_dtype) if grad_w is not None else None
        return gx, gw, None, None, None, None, None


def fused_memory_loss(features: torch.Tensor, head_weight: torch.Tensor, knn_ids: torch.Tensor,
                      knn_probs: torch.Tensor, labels: torch.Tensor, alpha: float = 0.5,
                      chunk_size: int = 1024) -> dict[str, torch.Tensor]:
    """:func:`memory_loss` of ``features @ head_weight.T`` without a [T, V] tensor ever existing.

    features [T, d] or [B, S, d] (``MLPMemory.features``), head_weight [V, d] (``MLPMemory.head_w``;
    frozen or trained). Peak extra memory is a few [chunk_size, V] float32 tensors. kl and ce are
    returned for logging only (no gradient flows through them).
    """
    check_alpha(alpha)
    if chunk_size < 1:
        raise UserError(f"chunk_size={chunk_size} must be >= 1")
    x = features.reshape(-1, features.shape[-1])
    ids, p = sparse_targets(knn_ids.reshape(len(x), -1), knn_probs.reshape(len(x), -1))
    loss, kl, ce = _FusedMemoryLoss.apply(x, head_weight, ids, p, labels.reshape(-1).long(), float(alpha),
                                          int(chunk_size))
    return {"loss": loss, "kl": kl, "ce": ce}
