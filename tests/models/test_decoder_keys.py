"""The kNN keys (the FFN block's input) of each registered family against the output of the family's pre-FFN norm,
read off the model by name."""

from __future__ import annotations

import pytest
import torch

from mlpmem_lightning.models.decoder import build_decoder, ffn_inputs
from mlpmem_lightning.models.ladder import get_size

PRE_FFN_NORM = {"llama": "post_attention_layernorm", "gpt2": "ln_2"}  # named here, not found through the family
V = 97


def _norm_outputs(model: torch.nn.Module, family: str, ids: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's pre-FFN norm output, from one full forward with hooks on the norms themselves."""
    outs: list[torch.Tensor] = []
    norms = [m for name, m in model.named_modules() if name.endswith("." + PRE_FFN_NORM[family])]
    handles = [n.register_forward_hook(lambda m, args, out: outs.append(out)) for n in norms]
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    assert len(outs) == get_size("n0.2m").n_layer
    return outs


@pytest.mark.parametrize("family", sorted(PRE_FFN_NORM))
@pytest.mark.parametrize("layer", [-1, 0, 2])
def test_the_keys_are_the_pre_ffn_norm_output(family, layer):
    torch.manual_seed(0)
    model = build_decoder(get_size("n0.2m"), V, family=family).double().eval()
    ids = torch.randint(0, V, (3, 17))
    want = _norm_outputs(model, family, ids)[layer]
    torch.testing.assert_close(ffn_inputs(model, ids, layer), want, rtol=0, atol=0)

