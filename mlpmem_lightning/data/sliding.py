"""Sliding-window evaluation (Khandelwal et al.: context 2560, stride 512), the papers' protocol.

The training cut (:mod:`.windows`) scores the first token of each window with no context at all, which makes
perplexity depend on ``seq_len``. Here an evaluation window holds ``context`` inputs and scores only the
inputs not scored by an earlier window: all of the first window, then ``stride`` new ones per window (the last
window ends at the end of the split, scoring what is left). Every label is scored exactly once, and each sees
at least ``context - stride`` earlier tokens (its whole prefix in the first window), at most ``context - 1``.
Batches carry ``score_mask`` [B, context]; the modules score ``labels[score_mask]`` only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mlpmem_lightning.core.errors import UserError


def check_sliding(context: int | None, stride: int | None) -> None:
    """A stride needs a context; both positive; a stride longer than the context would skip labels."""
    if context is None:
        if stride is not None:
            raise UserError("--data.eval_stride needs --data.eval_context (the window the stride slides)")
        return
    if context < 1 or (stride is not None and not 1 <= stride <= context):
        raise UserError(f"--data.eval_context {context} / --data.eval_stride {stride}: need context >= 1 and "
                        "1 <= stride <= context (e.g. 2560 and 512)")


def sliding_windows(n_inputs: int, context: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, first scored offset) per window over inputs ``0 .. n_inputs - 1`` (input p has label p + 1).

    Window w covers inputs ``[starts[w], starts[w] + context)`` and scores offsets ``>= first[w]`` of it."""
    if n_inputs < context:
        raise UserError(f"the split has {n_inputs + 1} tokens, fewer than one evaluation window of "
                        f"--data.eval_context {context} + 1: lower --data.eval_context")
    ends = np.arange(context, n_inputs + stride, stride, dtype=np.int64)  # one past each window's last input
    ends = np.minimum(ends, n_inputs)
    ends = ends[np.concatenate([[True], ends[1:] > ends[:-1]])]
    scored_from = np.concatenate([[0], ends[:-1]])  # each window scores from where the previous one stopped
    starts = ends - context
    return starts, scored_from - starts


class SlidingWindows(Dataset):
    """Evaluation windows of one split (see the module docstring); a whole batch per fetch, like TokenWindows."""

    def __init__(self, path: Path, n_tokens: int, context: int, stride: int):
        self.path, self.seq_len = path, context
        self.starts, self.first = sliding_windows(n_tokens - 1, context, stride)
        self._tokens: np.ndarray | None = None  # opened lazily: memmaps must not be pickled to workers

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, j: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([j])

    def __getitems__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        if self._tokens is None:
            self._tokens = np.load(self.path, mmap_mode="r")
        starts, first = self.starts[idx], self.first[idx]
        rows = torch.from_numpy(self._tokens[starts[:, None] + np.arange(self.seq_len + 1)].astype(np.int64))
        mask = torch.from_numpy(np.arange(self.seq_len)[None, :] >= first[:, None])
        return {"input_ids": rows[:, :-1], "labels": rows[:, 1:], "positions": torch.from_numpy(starts),
                "score_mask": mask}
