"""kNN distributions from neighbour lists, vectorised and sparse.

Everything here works on a block of queries at once, on any device, and never builds a
[queries x vocab] tensor: a neighbour list of k entries has at most k distinct tokens, so
aggregation is a sort of the k values plus segment sums.

p_kNN(v) = sum over neighbours i with value v of softmax(-d_i / T), d = squared L2.
"""

from __future__ import annotations

import torch


def drop_self(dist: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From k+1 neighbours keep k: drop the query's own row by its id, not by its rank.

    With duplicate keys the query's own row need not come first (or may be missing from an
    approximate search); where it is absent the farthest neighbour is dropped instead.
    """
    q, k1 = ids.shape
    is_self = ids == rows[:, None]
    drop = torch.where(is_self.any(1), is_self.to(torch.int8).argmax(1), torch.full_like(rows, k1 - 1))
    keep = torch.arange(k1, device=ids.device)[None, :] != drop[:, None]
    return dist[keep].view(q, k1 - 1), ids[keep].view(q, k1 - 1)


def neighbour_weights(dist: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(-d/T) over the valid neighbours (ids >= 0), float64 so that tiny masses stay exact."""
    logits = torch.where(ids >= 0, -dist.double() / temperature, float("-inf"))
    return torch.softmax(logits, dim=1)


def aggregate_tokens(weights: torch.Tensor, tokens: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                                      torch.Tensor]:
    """Sum weights per distinct token, keep the ``keep`` most probable, renormalise.

    Returns (token ids int64 [Q, keep] with -1 pads, probabilities float64 [Q, keep] with 0 pads,
    mass kept before renormalisation [Q]). Ties in probability go to the smaller token id.
    """
    q, k = tokens.shape
    big = torch.iinfo(torch.int64).max
    tok, order = torch.sort(torch.where(weights > 0, tokens, big), dim=1, stable=True)
    w = weights.gather(1, order)
    last = torch.ones_like(tok, dtype=torch.bool)
    last[:, :-1] = tok[:, 1:] != tok[:, :-1]  # last entry of each run of equal tokens
    csum = torch.cumsum(w, dim=1)
    ends = torch.where(last, csum, torch.zeros_like(csum))
    before = torch.cummax(torch.cat([torch.zeros_like(csum[:, :1]), ends[:, :-1]], dim=1), dim=1).values
    mass = torch.where(last & (tok != big), csum - before, torch.zeros_like(csum))
    mass, pick = torch.sort(mass, dim=1, descending=True, stable=True)  # stable: smaller id first on ties
    mass, tok = mass[:, :keep], tok.gather(1, pick)[:, :keep]
    if mass.shape[1] < keep:  # fewer neighbours than kept tokens: pad
        pad = keep - mass.shape[1]
        mass = torch.cat([mass, mass.new_zeros(q, pad)], dim=1)
        tok = torch.cat([tok, tok.new_full((q, pad), big)], dim=1)
    kept = mass.sum(1)
    probs = mass / kept.clamp_min(torch.finfo(mass.dtype).tiny)[:, None]
    return torch.where(mass > 0, tok, -1), probs, kept


def label_log_prob(dist: torch.Tensor, ids: torch.Tensor, neighbour_tokens: torch.Tensor, labels: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    """log p_kNN(label) per query (-inf when no neighbour carries the label), float64."""
    w = neighbour_weights(dist, ids, temperature)
    p = (w * (neighbour_tokens == labels[:, None])).sum(1)
    return torch.log(p)


def label_log_probs(dist: torch.Tensor, ids: torch.Tensor, neighbour_tokens: torch.Tensor, labels: torch.Tensor,
                    temperatures: torch.Tensor | list[float]) -> torch.Tensor:
    """log p_kNN(label) at every temperature of a grid from the same neighbours: [T, Q], float64.

    The search is the expensive part and does not depend on T; each T costs one softmax over the [Q, k]
    distances (one T at a time, so memory stays that of a single T). Row t equals ``label_log_prob`` at T_t.
    """
    return torch.stack([label_log_prob(dist, ids, neighbour_tokens, labels, float(t)) for t in temperatures])


def mix(lp_lm: torch.Tensor, lp_other: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """log((1-λ) p_LM + λ p_other), elementwise (λ broadcasts). λ=0 returns log p_LM and λ=1 log p_other exactly."""
    lam = torch.as_tensor(lam, dtype=lp_lm.dtype, device=lp_lm.device)
    return torch.logaddexp(torch.log1p(-lam) + lp_lm, torch.log(lam) + lp_other)


def interpolate(lp_lm: torch.Tensor, lp_knn: torch.Tensor, lambdas: torch.Tensor) -> torch.Tensor:
    """log((1-λ) p_LM + λ p_kNN) for every λ of a grid: [Λ, Q]. λ=0 returns log p_LM exactly."""
    return mix(lp_lm[None, :], lp_knn[None, :], lambdas.to(lp_lm.dtype)[:, None])


def dense_distribution(dist: torch.Tensor, ids: torch.Tensor, neighbour_tokens: torch.Tensor, vocab: int,
                       temperature: float) -> torch.Tensor:
    """p_kNN over the whole vocabulary [Q, vocab], float64, for a handful of queries (sampling needs it dense;
    evaluation and targets never build it)."""
    w = neighbour_weights(dist, ids, temperature)
    tokens = torch.where(ids >= 0, neighbour_tokens, 0)
    return torch.zeros(len(w), vocab, dtype=w.dtype, device=w.device).scatter_add_(1, tokens, w)
