"""Compute accounting per pipeline stage, so that ``flops_train_total`` is honest per architecture.

- decoder training: tokens x (6 N_matmul + 12 n_layer d_model L)            (the family's ``flops_per_token``)
- datastore pass:   rows x one forward (a third of the above)               (keys only; an upper bound,
                    since the pass stops at the last FFN's input)
- search (targets): exact 2 d N_q N_k (distances as a matmul); IVF 2 d N_q (nlist + nprobe N_k / nlist)
- memory training:  tokens x 6 N_memory, plus a decoder forward per token when keys are recomputed online
kNN-LM = decoder + datastore; decoder + memory = decoder + datastore + search + memory training.

The decoder's family is a required argument: N_matmul differs between families (GPT-2's biases and
4d FFN against Llama's SwiGLU), so a count that defaulted to one family would be silently wrong for the other.
"""

from __future__ import annotations

from mlpmem_lightning.models.families import DecoderFamily, DecoderSize, get_family


def decoder_train_flops(size: DecoderSize, vocab: int, seq_len: int, tokens: int, *,
                        family: str | DecoderFamily) -> int:
    return tokens * get_family(family).flops_per_token(size, vocab, seq_len)


def datastore_flops(size: DecoderSize, vocab: int, seq_len: int, rows: int, *, family: str | DecoderFamily) -> int:
    return rows * get_family(family).forward_flops_per_token(size, vocab, seq_len)


def search_flops(n_queries: int, n_keys: int, d: int, index: str = "flat", nlist: int = 1, nprobe: int = 1) -> int:
    if index == "flat":
        return 2 * d * n_queries * n_keys
    return int(2 * d * n_queries * (nlist + min(nprobe, nlist) * n_keys / nlist))


def memory_train_flops(memory_flops_per_token: int, tokens: int, decoder_forward_per_token: int = 0) -> int:
    """``memory_flops_per_token`` is the memory's 6N; add the frozen decoder's forward in online mode."""
    return tokens * (memory_flops_per_token + decoder_forward_per_token)


def forward_flops_of(net, seq_len: int) -> int:
    """Forward FLOPs per token of any loaded causal LM, from its weights: 2 per matmul weight (every matrix but
    the input embedding, a lookup) plus the attention scores and weighted values (4·n_layer·d·seq_len).

    For decoders that are not ladder rungs (a transformers directory), where the closed form has no rung to read.
    """
    embedding = net.get_input_embeddings().weight
    matmul = sum(p.numel() for p in net.parameters() if p.ndim == 2 and p is not embedding)
    if net.get_output_embeddings() is not None and net.get_output_embeddings().weight is embedding:  # tied head
        matmul += embedding.numel()
    cfg = net.config
    n_layer = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    return 2 * matmul + 4 * n_layer * cfg.hidden_size * seq_len
