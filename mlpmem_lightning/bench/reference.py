"""A plain-PyTorch Llama-style decoder of the ladder's shapes: the in-run reference for training speed.

Absolute tokens/s move between machines, drivers and library versions; the ratio of the project's training
path (a transformers model inside a Lightning ``Trainer``) to this reference, measured in the same process, is
the figure that counts. The reference is what a careful researcher would write by hand (nanoGPT's style):
RMSNorm, SwiGLU, rotary positions, SDPA, no biases, bf16 autocast, fused AdamW, ``torch.compile``, and
optionally the whole step (forward, backward, optimizer) captured as one CUDA graph. Same depth, width,
heads, SwiGLU width and vocabulary as the ladder's Llama rung, so the FLOP formula is the same.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn


class _Block(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.RMSNorm(d, eps=1e-5), nn.RMSNorm(d, eps=1e-5)
        self.qkv, self.out = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.gate_up, self.down = nn.Linear(d, 2 * ffn, bias=False), nn.Linear(ffn, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).transpose(1, 3).unbind(2)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.out(a)
        gate, up = self.gate_up(self.norm2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


class ReferenceDecoder(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int, ffn: int, context: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(_Block(d, heads, ffn) for _ in range(layers))
        self.norm, self.head = nn.RMSNorm(d, eps=1e-5), nn.Linear(d, vocab, bias=False)
        half = d // heads // 2
        freq = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float32) / half)
        angles = torch.outer(torch.arange(context, dtype=torch.float32), freq)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x, self.cos[:t], self.sin[:t])
        return self.head(self.norm(x))


def reference_for(size: str, vocab: int, context: int) -> ReferenceDecoder:
    from mlpmem_lightning.models.families import get_family
    from mlpmem_lightning.models.ladder import get_size

    s = get_size(size)
    return ReferenceDecoder(vocab, s.d_model, s.n_layer, s.n_head, get_family("llama").ffn_hidden(s.d_model), context)


def reference_tokens_per_s(size: str, vocab: int, batch: int, seq_len: int, steps: int = 30, warmup: int = 10,
                           compile: bool = True, cuda_graph: bool = False) -> float:
    """Training tokens/s of the reference on random tokens (speed is data-blind), timed after ``warmup`` steps."""
    dev = torch.device("cuda")
    torch.manual_seed(0)
    net = reference_for(size, vocab, seq_len).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=torch.tensor(1e-4, device=dev) if cuda_graph else 1e-4,
                            fused=True, capturable=cuda_graph)
    x = torch.randint(0, vocab, (batch, seq_len), device=dev)
    y = torch.randint(0, vocab, (batch, seq_len), device=dev)

    def loss_of(ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(net(ids).float().flatten(0, 1), labels.flatten())

    loss_fn = torch.compile(loss_of) if compile else loss_of  # the loss compiled with the network, as the project

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=not cuda_graph):
            loss = loss_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=not cuda_graph)

    run = step
    if cuda_graph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        run = graph.replay
    for _ in range(warmup):
        run()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        run()
    torch.cuda.synchronize()
    return batch * seq_len * steps / (time.perf_counter() - start)
