"""Sliding-window evaluation (issue #16 item 4): every label scored exactly once, with the context the protocol
promises, and the decoder's loss equal to a brute-force token-by-token reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.data.sliding import SlidingWindows, check_sliding, sliding_windows
from mlpmem_lightning.lightning.decoder_lm import DecoderLM
from mlpmem_lightning.lightning.evaluation import TokenNLL


def reference_start(p: int, n_inputs: int, context: int, stride: int) -> int:
    """Where the window scoring input p begins, in closed form: the first window scores inputs below ``context``;
    later windows end at context + k * stride (the last at the split's end) and score the stride before that."""
    if p < context:
        return 0
    end = min(context + math.ceil((p + 1 - context) / stride) * stride, n_inputs)
    return end - context


@pytest.mark.parametrize("n, context, stride", [(10, 4, 2), (11, 4, 2), (4, 4, 1), (100, 10, 3), (9, 4, 4),
                                                (57, 16, 5), (2560 * 3 + 7, 2560, 512)])
def test_each_label_is_scored_once_with_its_promised_context(n, context, stride):
    starts, first = sliding_windows(n, context, stride)
    scored = np.zeros(n, dtype=int)
    for s, f in zip(starts, first):
        assert 0 <= s and s + context <= n
        scored[s + f : s + context] += 1
        for p in range(s + f, s + context):
            assert s == reference_start(p, n, context, stride)
            assert p - s <= context - 1 and (s == 0 or p - s >= context - stride)
    assert (scored == 1).all()


@pytest.mark.parametrize("context, stride, message", [(None, 4, "needs --data.eval_context"),
                                                      (8, 9, "1 <= stride <= context"), (0, None, "context >= 1")])
def test_bad_sliding_settings(context, stride, message):
    with pytest.raises(UserError, match=message):
        check_sliding(context, stride)


def test_decoder_loss_equals_a_token_by_token_reference(tmp_path):
    torch.manual_seed(0)
    tokens = np.random.default_rng(0).integers(0, 50, size=90).astype(np.uint16)
    np.save(tmp_path / "valid.npy", tokens)
    model = DecoderLM(size="200k", vocab_size=50, context=64).eval()
    context, stride = 16, 5
    ds = SlidingWindows(tmp_path / "valid.npy", len(tokens), context, stride)
    metric = TokenNLL()
    with torch.no_grad():
        for lo in range(0, len(ds), 3):  # batches of 3 windows
            model._eval_step(ds.__getitems__(list(range(lo, min(lo + 3, len(ds))))), metric)
    ids = torch.from_numpy(tokens.astype(np.int64))
    nll = []
    with torch.no_grad():
        for p in range(len(tokens) - 1):  # every label once, with exactly the context the protocol gives it
            s = reference_start(p, len(tokens) - 1, context, stride)
            logits = model(ids[None, s : p + 1])[0, -1].double()
            nll.append(-torch.log_softmax(logits, -1)[ids[p + 1]].item())
    assert int(metric.count) == len(tokens) - 1
    assert float(metric.compute()) == pytest.approx(np.mean(nll), rel=1e-5)
