"""`mlpmem generate`: text from a decoder alone, decoder + MLP Memory, or the kNN-LM.

One loop for all three: the decoder runs with its KV cache (the prompt once, then one
token per step); a forward pre-hook captures the key at the memory's hook point; the
mixture log((1-λ) p_LM + λ p_other) is formed from the last position, where p_other is
the memory's softmax (one MLP forward per token) or the kNN distribution (one search per
token). Temperature and top-p are applied to the mixture, then greedy or sampling.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mlpmem_lightning.core import artifacts
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.knn.distributions import dense_distribution, mix
from mlpmem_lightning.knn.settings import KNN
from mlpmem_lightning.models.decoder import ffn_block
from mlpmem_lightning.models.loading import LoadedDecoder, load_decoder

LogProbFn = Callable[[torch.Tensor], torch.Tensor]  # keys [B, d] -> log-probs [B, V]


def memory_logprobs(memory: torch.nn.Module) -> LogProbFn:
    return lambda keys: torch.log_softmax(memory(keys.float()).double(), dim=-1)


def knn_logprobs(searcher, values: torch.Tensor, vocab: int, k: int, temperature: float) -> LogProbFn:
    """log p_kNN over the vocabulary for a handful of queries (the float64 weighting of evaluation and targets)."""
    def fn(keys: torch.Tensor) -> torch.Tensor:
        dist, ids = searcher.search(keys.float(), k)
        return torch.log(dense_distribution(dist, ids, values[ids.clamp_min(0)], vocab, temperature))
    return fn


def top_p_filter(logp: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches ``top_p`` (nucleus sampling)."""
    if top_p >= 1.0:
        return logp
    sorted_lp, order = torch.sort(logp, descending=True, dim=-1)
    cum = torch.cumsum(sorted_lp.exp(), dim=-1)
    drop = cum - sorted_lp.exp() >= top_p  # tokens entirely beyond the nucleus
    return logp.scatter(-1, order, sorted_lp.masked_fill(drop, float("-inf")))


@torch.no_grad()
def generate(net, input_ids: torch.Tensor, max_new_tokens: int, other: LogProbFn | None = None, lam: float = 0.0,
             layer: int = -1, temperature: float = 0.0, top_p: float = 1.0, eos_id: int | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Continue ``input_ids`` [B, T]; ``temperature`` 0 means greedy. Returns [B, T + new]."""
    if not 0.0 <= lam <= 1.0:
        raise UserError(f"λ {lam} must lie in [0, 1]")
    captured: list[torch.Tensor] = []
    handle = ffn_block(net, layer).register_forward_pre_hook(lambda m, args: captured.append(args[0][:, -1]))
    try:
        out, past, step_ids = input_ids, None, input_ids
        for _ in range(max_new_tokens):
            res = net(input_ids=step_ids, past_key_values=past, use_cache=True)
            past, logp = res.past_key_values, torch.log_softmax(res.logits[:, -1].double(), dim=-1)
            if other is not None and lam > 0:
                logp = mix(logp, other(captured[-1]), lam)
            captured.clear()
            if temperature > 0:
                logp = top_p_filter(torch.log_softmax(logp / temperature, dim=-1), top_p)
                nxt = torch.multinomial(logp.exp(), 1, generator=generator)
            else:
                nxt = logp.argmax(-1, keepdim=True)
            out, step_ids = torch.cat([out, nxt], dim=1), nxt
            if eos_id is not None and bool((nxt == eos_id).all()):
                break
        return out
    finally:
        handle.remove()


def run_generate(decoder: str, prompt: str, max_new_tokens: int = 50, memory: str | None = None,
                 datastore: str | None = None, lam: float = 0.25, temperature: float = 0.0, top_p: float = 1.0,
                 k: int = KNN.k, knn_temperature: float = KNN.temperature, index: str = KNN.index,
                 tokenizer: str | None = None,
                 device: str = "auto", seed: int = 0) -> str:
    """The `mlpmem generate` command: load everything, encode the prompt, decode the continuation."""
    from mlpmem_lightning.core.distributed import pick_device
    from mlpmem_lightning.data.tokenizer import read_tokenizer, separator_id
    from mlpmem_lightning.knn.datastore import Datastore

    if memory and datastore:
        raise UserError("pass --memory or --datastore, not both")
    dev = pick_device(device)
    dec = load_decoder(decoder)
    net = dec.net.to(dev)
    tok = read_tokenizer(_tokenizer_file(dec, tokenizer))
    other, layer = None, -1
    if memory:
        mem, layer = _load_memory(memory, dec.fingerprint)
        if mem.cfg.input_dim != net.config.hidden_size:
            raise UserError(f"memory {memory} reads {mem.cfg.input_dim}-wide keys but the decoder's hidden size is "
                            f"{net.config.hidden_size}: pass the memory trained on this decoder")
        other = memory_logprobs(mem.to(dev).eval())
    elif datastore:
        from mlpmem_lightning.knn.search import make_searcher

        ds = Datastore(datastore)
        if ds.manifest.get("decoder_fingerprint") != dec.fingerprint:
            raise UserError(f"datastore {datastore} was built from decoder {ds.manifest.get('decoder_fingerprint')} "
                            f"but --decoder {decoder} has {dec.fingerprint}: pass that decoder's datastore or build "
                            "one with `mlpmem datastore`")
        values = torch.from_numpy(np.asarray(ds.values, dtype=np.int64)).to(dev)
        other = knn_logprobs(make_searcher(ds.path, index=index, device=str(dev)), values,
                             net.config.vocab_size, k, knn_temperature)
        layer = ds.manifest["layer"]
    ids = torch.tensor([tok.encode(prompt).ids], device=dev)
    if ids.shape[1] == 0:
        raise UserError("the prompt is empty: pass --prompt TEXT")
    gen = torch.Generator(device=dev).manual_seed(seed)
    out = generate(net, ids, max_new_tokens, other, lam if other else 0.0, layer, temperature, top_p,
                   separator_id(tok), gen)
    return tok.decode(out[0, ids.shape[1]:].tolist())


def _tokenizer_file(dec: LoadedDecoder, tokenizer: str | None) -> Path:
    """The tokenizer of the token store the decoder was trained on, unless one is given; either way it must be
    the tokenizer the decoder's checkpoint records (when it records one)."""
    if tokenizer:
        path = Path(tokenizer)
        path = path / "tokenizer.json" if path.is_dir() else path
    elif dec.token_store and (Path(dec.token_store) / "tokenizer.json").is_file():
        path = Path(dec.token_store) / "tokenizer.json"
    elif (Path(dec.source) / "tokenizer.json").is_file():  # a transformers/imported decoder directory
        path = Path(dec.source) / "tokenizer.json"
    else:
        raise UserError("cannot find the decoder's tokenizer: pass --tokenizer TOKEN_STORE_DIR")
    if not path.is_file():
        raise UserError(f"tokenizer {path} does not exist: pass --tokenizer TOKEN_STORE_DIR or its tokenizer.json")
    have = artifacts.hash_file(path) if dec.tokenizer_sha256 is not None else None
    if have != dec.tokenizer_sha256:
        raise UserError(f"tokenizer {path} has sha256 {have} but the decoder was trained with tokenizer "
                        f"{dec.tokenizer_sha256}: pass --tokenizer with the decoder's token store")
    if dec.tokenizer_fingerprint is not None:
        _check_fingerprint(path, dec)
    return path


def _check_fingerprint(path: Path, dec: LoadedDecoder) -> None:
    """The tokenizer must map text to the decoder's ids (compared by vocabulary and merges, not file bytes)."""
    from mlpmem_lightning.data.tokenizer import read_tokenizer, tokenizer_fingerprint

    have = tokenizer_fingerprint(read_tokenizer(path))
    if have != dec.tokenizer_fingerprint:
        raise UserError(f"tokenizer {path} (fingerprint {have}) is not the decoder {dec.source}'s "
                        f"({dec.tokenizer_fingerprint}): pass --tokenizer with the decoder's own tokenizer")


def load_memory_checkpoint(path: str | Path, flag: str = "--checkpoint"):
    """The ``MemoryLM`` of a checkpoint; a missing file, a truncated one or another module's (a decoder's) is a
    one-line error naming ``flag``."""
    from mlpmem_lightning.lightning.memory_lm import MemoryLM

    if not Path(path).is_file():
        raise UserError(f"{flag} {path} does not exist or is not a file: pass a MemoryLM checkpoint, e.g. "
                        "RUN/checkpoints/last.ckpt of `mlpmem fit --model MemoryLM`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated or foreign files fail in many ways (zip, pickle, EOF)
        raise UserError(f"cannot read checkpoint {path} ({type(err).__name__}): it is truncated or not a "
                        "checkpoint; pass another one") from None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not any(k.startswith("memory.") for k in state):
        what = "a DecoderLM checkpoint" if isinstance(state, dict) and any(k.startswith("net.") for k in state) \
            else "not a Lightning checkpoint of a MemoryLM"
        raise UserError(f"{flag} {path} is {what}, not a MemoryLM's: pass the checkpoint of "
                        "`mlpmem fit --model MemoryLM` (RUN/checkpoints/last.ckpt)")
    return MemoryLM.load_from_checkpoint(path, map_location="cpu")


def _load_memory(path: str, decoder_fingerprint: str):
    """A memory export directory, or a MemoryLM checkpoint; refuses one trained on another decoder."""
    from mlpmem_lightning.models.memory import load_memory

    if Path(path).is_dir():
        mem, extra = load_memory(path)
        fp, layer = extra.get("decoder_fingerprint"), extra.get("layer", -1)
    else:
        module = load_memory_checkpoint(path, "--memory")
        mem, fp, layer = module.memory, module.decoder_fingerprint, module.layer
    if fp not in (None, decoder_fingerprint):
        raise UserError(f"memory {path} was trained on decoder {fp} but --decoder has {decoder_fingerprint}: "
                        "pass its decoder")
    return mem, layer
