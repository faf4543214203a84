"""A pretrained base: import-decoder, export-decoder (from_pretrained round trip), tokenizer fingerprints, the
tokenizer check, base-relative memory rungs. References: the original transformers model's logits, hand counts,
the tokenizers' own vocabularies."""

from __future__ import annotations

import json

import pytest
import torch

from mlpmem_lightning.cli import main
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.data.tokenizer import read_tokenizer, tokenizer_fingerprint
from mlpmem_lightning.models.base_memory import base_non_embedding_params, relative_memory_config
from mlpmem_lightning.models.importing import export_decoder, import_decoder
from mlpmem_lightning.models.loading import load_decoder
from mlpmem_lightning.models.memory import MLPMemory, memory_non_embedding_params
from tests.pretrained_helpers import save_hf_dir, tiny_model, tiny_tokenizer


def _logits(net, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(input_ids=ids).logits.double()


def test_fingerprint_follows_ids_not_file_bytes(tmp_path):
    """The same tokenizer saved by tokenizers and by transformers agrees; another vocabulary does not."""
    from transformers import PreTrainedTokenizerFast

    tok = tiny_tokenizer()
    tok.save(str(tmp_path / "a.json"))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(tmp_path / "hf")
    b = read_tokenizer(tmp_path / "hf" / "tokenizer.json")
    assert (tmp_path / "a.json").read_bytes() != (tmp_path / "hf" / "tokenizer.json").read_bytes()
    assert b.get_vocab() == tok.get_vocab()  # the reference: the same ids
    assert tokenizer_fingerprint(read_tokenizer(tmp_path / "a.json")) == tokenizer_fingerprint(b)
    other = tiny_tokenizer(seed=1)
    assert other.get_vocab() != tok.get_vocab()
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tok)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_import_directory_keeps_logits_and_tokenizer(tmp_path, family):
    tok = tiny_tokenizer()
    src = save_hf_dir(tmp_path / "src", family, tok)
    manifest = import_decoder(src, tmp_path / "dec")
    dec = load_decoder(tmp_path / "dec")
    ids = torch.randint(tok.get_vocab_size(), (2, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_logits(dec.net, ids), _logits(tiny_model(family, tok.get_vocab_size()), ids))
    assert manifest["fingerprint"] == dec.fingerprint and manifest["family"] == family
    assert dec.tokenizer_fingerprint == tokenizer_fingerprint(tok) == manifest["tokenizer"]["fingerprint"]
    assert import_decoder(src, tmp_path / "dec") == manifest  # the same source again: reused
    with pytest.raises(UserError, match="imported from another source or dtype"):
        import_decoder(src, tmp_path / "dec", dtype="bfloat16")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_exported_decoder_lm_loads_with_from_pretrained(tmp_path, family):
    """Any DecoderLM checkpoint -> a transformers directory whose logits equal the DecoderLM's own."""
    from transformers import AutoModelForCausalLM

    from mlpmem_lightning.lightning.decoder_lm import DecoderLM

    tok = tiny_tokenizer()
    tok.save(str(tmp_path / "tokenizer.json"))
    model = DecoderLM(size="200k", family=family, vocab_size=tok.get_vocab_size(), context=128).eval()
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}, tmp_path / "m.ckpt")
    main(["export-decoder", "--checkpoint", str(tmp_path / "m.ckpt"), "--out", str(tmp_path / "hf"),
          "--tokenizer", str(tmp_path / "tokenizer.json")])
    assert export_decoder(tmp_path / "m.ckpt", tmp_path / "hf", tmp_path / "tokenizer.json")["fingerprint"]  # reused
    net = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(tok.get_vocab_size(), (2, 16), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(_logits(net, ids), _logits(model.net, ids))
    manifest = json.loads((tmp_path / "hf" / "manifest.json").read_text())
    assert manifest["tokenizer"]["fingerprint"] == tokenizer_fingerprint(tok)


def test_base_non_embedding_params_by_hand():
    """Llama: 2 layers of attention (q, o: d*d; k, v: d*d/2 with 2 of 4 heads) + SwiGLU (3*d*f) + 2 norms, + the
    final norm; GPT-2: the same blocks with biases and LayerNorms, without wte/wpe."""
    d, f, v = 32, 64, 300
    llama = 2 * (2 * d * d + 2 * d * d // 2 + 3 * d * f + 2 * d) + d
    assert base_non_embedding_params(tiny_model("llama", v)) == llama
    gpt2 = 2 * (2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)) + 2 * d
    assert base_non_embedding_params(tiny_model("gpt2", v)) == gpt2


@pytest.mark.parametrize("ratio", ["x0.25", "x0.5", "x1", "x2"])
def test_relative_memory_matches_its_target(ratio):
    """The built memory's own parameter count (sum of numel, head excluded) is within one FFN step of ratio x the
    base's non-embedding parameters, at the base's width (so the decoder head can be copied)."""
    net = tiny_model("llama", 300)
    cfg = relative_memory_config(ratio, net)
    memory = MLPMemory(cfg)
    counted = sum(p.numel() for p in memory.parameters()) - memory.head.weight.numel()
    assert counted == memory_non_embedding_params(cfg)
    target = float(ratio[1:]) * base_non_embedding_params(net)
    step = cfg.n_layer * 3 * cfg.d_model * 32  # one multiple of 32 in the FFN width
    assert abs(counted - target) <= step / 2 + cfg.n_layer * cfg.d_model + cfg.d_model
    assert cfg.d_model == net.config.hidden_size and cfg.input_dim == net.config.hidden_size
    memory.init_head_from(net.get_output_embeddings().weight)  # widths agree: the copy works
    torch.testing.assert_close(memory.head.weight, net.get_output_embeddings().weight)


def test_relative_memory_rejects_a_bad_ratio():
    with pytest.raises(UserError, match="not a positive ratio"):
        relative_memory_config("x0", tiny_model("llama", 300))
