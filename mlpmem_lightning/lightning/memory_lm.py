"""`MemoryLM`: train an MLP Memory to imitate the kNN distribution, then mix it with the decoder.

Training (decoder frozen): the memory reads the key of every position — recomputed by the
decoder under ``no_grad`` (``online``, the default) or read from the datastore (``offline``:
no decoder forward at all) — and minimises α·KL(p_kNN ‖ p_mem) + (1−α)·CE on the sparse
targets served by ``LMDataModule(targets=...)``.

Evaluation: one decoder pass gives log p_LM(label) and the key; the memory gives
log p_mem(label); the interpolated NLL is accumulated for every λ of the grid in one pass,
exactly as the kNN-LM does with p_kNN (λ=0: the decoder alone; λ=1: the memory alone).
The frozen decoder is kept out of the checkpoint: it is reloaded from ``decoder``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch

from mlpmem_lightning import __version__
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.knn.distributions import interpolate
from mlpmem_lightning.lightning.evaluation import LambdaGridEvaluation, TokenNLL, token_nll
from mlpmem_lightning.lightning.losses import fused_memory_loss, memory_loss
from mlpmem_lightning.lightning.optim import (
    OPTIM,
    ClipGradients,
    FiniteLossGuard,
    OptimSettings,
    adamw_warmup_cosine,
    is_logging_step,
    tokens_per_step,
)
from mlpmem_lightning.models.decoder import ffn_inputs, logits_and_ffn_inputs
from mlpmem_lightning.models.families import family_of
from mlpmem_lightning.models.flops import forward_flops_of
from mlpmem_lightning.models.ladder import get_memory_size, get_size, matched_memory
from mlpmem_lightning.models.loading import load_decoder
from mlpmem_lightning.models.memory import build_memory, memory_flops_per_token, save_memory

# fingerprints a MemoryLM checkpoint records besides its decoder's: (what, the flag a later run checks them against)
RECORDED = {"token_store_fingerprint": ("token store", "--data.token_store"),
            "targets_fingerprint": ("targets", "--data.targets"),
            "datastore_fingerprint": ("datastore", None)}  # follows from the targets: recorded, not checked twice


class MemoryLM(ClipGradients, FiniteLossGuard, LambdaGridEvaluation, L.LightningModule):
    """MLP Memory on top of a frozen decoder.

    Args:
        decoder: the frozen decoder (``.ckpt``, run directory, or transformers directory).
        size: memory ladder rung (``mlpmem sizes``); default: the one matched to the decoder's rung.
        block: ``swiglu`` (RMSNorm) or ``gelu`` (LayerNorm) residual blocks; default: the one matched to the
            decoder's family (swiglu for Llama, gelu for GPT-2).
        alpha: weight of KL(p_kNN ‖ p_mem) against the next-token cross-entropy (paper: 0.5). At 0 the loss is
            the cross-entropy alone and no targets are needed (the CE-only control).
        mode: ``online`` (keys recomputed by the decoder) or ``offline`` (keys read from the datastore).
        init_head_from_decoder: start the memory's vocabulary head from the decoder's (default: at random, as
            the paper's code does; a copied head starts the memory in the decoder's output space, which makes it
            continued training of the decoder's head rather than a memory of its own).
        dropout: dropout on each block's FFN output, train mode only (default 0.1, the paper's code: the memory
            makes several passes over the datastore's rows, and dropout is what keeps it from memorising them
            verbatim; 0 turns it off).
        key_layer: the decoder layer whose FFN input the memory reads when no targets are given (the
            cross-entropy-only control, ``alpha`` 0); with targets it is always their datastore's layer.
        lr: peak learning rate (default: the matched decoder rung's: the memory rung is built to the matched
            decoder's width and sees the same batches; the paper's 5e-4 was tuned for GPT-2-large widths).
        weight_decay: AdamW decay on matrices.
        betas: AdamW betas.
        warmup_fraction: share of steps spent warming up.
        min_lr_ratio: final LR as a fraction of the peak.
        max_tokens: training token budget (sets ``trainer.max_steps``).
        lambdas: λ grid evaluated in one pass (default 0, 0.05, ..., 1).
        lambda_: λ of the headline ``loss``/``ppl`` (e.g. chosen on valid); best of the grid if unset.
        compile: ``torch.compile`` the memory (GPU).
        loss: ``sparse`` (log_softmax of the logits, then the K target ids) or ``fused`` (head, log_softmax
            and loss chunk by chunk with the gradient computed in forward: same values, no [tokens, vocab]
            tensor kept for backward; for long batches and large vocabularies).
    """

    def __init__(self, decoder: str, size: str | None = None, block: Literal["swiglu", "gelu"] | None = None,
                 alpha: float = 0.5, mode: Literal["online", "offline"] = "online",
                 init_head_from_decoder: bool = False, dropout: float = 0.1, key_layer: int = -1,
                 lr: float | None = OPTIM.lr,
                 weight_decay: float = OPTIM.weight_decay, betas: tuple[float, float] = OPTIM.betas,
                 warmup_fraction: float = OPTIM.warmup_fraction, min_lr_ratio: float = OPTIM.min_lr_ratio,
                 max_tokens: int | None = 2_000_000, lambdas: list[float] | None = None,
                 lambda_: float | None = None, compile: bool = False, loss: Literal["sparse", "fused"] = "sparse"):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise UserError(f"alpha {alpha} must lie in [0, 1]: fix --model.alpha")
        self.save_hyperparameters(ignore=self.EVAL_ONLY)
        self.init_lambda_grid(lambdas, lambda_)
        self.optim = OptimSettings(lr, weight_decay, tuple(betas), warmup_fraction, min_lr_ratio)
        dec = load_decoder(decoder)
        object.__setattr__(self, "decoder", dec.net)  # frozen and reloaded: not a submodule, not checkpointed
        self.decoder_fingerprint, self.decoder_data = dec.fingerprint, dec.data_fingerprint
        # what the memory is trained on, set by setup and recorded in (and checked against) the checkpoint
        self.token_store_fingerprint = self.targets_fingerprint = self.datastore_fingerprint = None
        size = size or matched_memory(dec.size_name if dec.size_name else _need_size(decoder)).name
        block = block or family_of(dec.net).memory_block
        self.memory = build_memory(size, dec.net.config.hidden_size, dec.net.config.vocab_size, block,
                                   dropout=dropout)
        self.lr = lr if lr is not None else get_size(get_memory_size(size).decoder).lr
        if init_head_from_decoder:
            self.memory.init_head_from(dec.net.get_output_embeddings().weight.detach())
        self.layer = key_layer

    # -- set-up: bind to the data, its targets and the budget ------------------------------------
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        if self.decoder_data is not None and self.decoder_data != dm.fingerprint:
            raise UserError(f"the decoder was trained on token store {self.decoder_data} but --data.token_store has "
                            f"{dm.fingerprint}: pass the decoder's --data.token_store")
        self.decoder.to(self.trainer.strategy.root_device)
        self.token_store_fingerprint = dm.fingerprint
        if dm.targets is not None:
            targets, datastore = dm.targets_info()
            self.targets_fingerprint, self.datastore_fingerprint = targets["fingerprint"], datastore["fingerprint"]
        if stage == "fit":
            if dm.targets is None:
                self._setup_without_targets()
            elif datastore.get("decoder_fingerprint") != self.decoder_fingerprint:
                raise UserError(f"the targets come from decoder {datastore.get('decoder_fingerprint')} but "
                                f"--model.decoder {self.hparams.decoder} has {self.decoder_fingerprint}: use that "
                                "decoder's targets")
            else:
                self.layer = datastore["layer"]
            dm.serve_keys = self.hparams.mode == "offline"
            self.tokens_per_step = tokens_per_step(self)
            decoder = forward_flops_of(self.decoder, dm.seq_len) if self.hparams.mode == "online" else 0
            per_token = memory_flops_per_token(self.memory.cfg) + decoder
            self.flops_per_token = per_token  # read by IntervalThroughput
            if self.hparams.compile:
                self.memory.compile()

    def _setup_without_targets(self) -> None:
        """Only the cross-entropy-only control (α = 0) trains without targets; it reads keys online."""
        if self.hparams.alpha > 0:
            raise UserError("MemoryLM needs kNN targets: pass --data.targets DIR (built by `mlpmem targets`), "
                            "or --model.alpha 0 for the cross-entropy-only control")
        if self.hparams.mode == "offline":
            raise UserError("--model.mode offline reads the keys stored with the targets' datastore: pass "
                            "--data.targets DIR or use --model.mode online")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # FiniteLossGuard: never a checkpoint of non-finite weights
        checkpoint["decoder_fingerprint"] = self.decoder_fingerprint
        checkpoint["memory_layer"] = self.layer
        checkpoint["mlpmem_version"] = __version__
        for key in RECORDED:
            checkpoint[key] = getattr(self, key)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another decoder, token store or targets than this run's (named both ways)."""
        if checkpoint.get("decoder_fingerprint") not in (None, self.decoder_fingerprint):
            raise UserError(f"this memory was trained on decoder {checkpoint['decoder_fingerprint']} but "
                            f"--model.decoder has {self.decoder_fingerprint}: pass --model.decoder of the run")
        for key, (what, flag) in RECORDED.items():
            have, now = checkpoint.get(key), getattr(self, key)
            if flag and None not in (have, now) and have != now:
                raise UserError(f"this memory was trained on {what} {have} but {flag} has {now}: "
                                f"pass {flag} of the run")
            setattr(self, key, have if now is None else now)
        self.layer = checkpoint.get("memory_layer", -1)

    # -- training --------------------------------------------------------------------------------
    def keys(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.hparams.mode == "offline":
            return batch["keys"]
        with torch.no_grad():
            return ffn_inputs(self.decoder, batch["input_ids"], self.layer)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.losses(batch)
        self.guard_loss(out["loss"])
        self.log_dict({"train/loss": out["loss"], "train/kl": out["kl"], "train/ce": out["ce"]}, prog_bar=True,
                      sync_dist=True)  # the global batch's losses under DDP
        if is_logging_step(self):
            self.log("train/tokens", float((self.global_step + 1) * self.tokens_per_step))
        return out["loss"]

    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{loss, kl, ce} of a training batch (batches without ``knn_ids``: the CE-only control, α = 0)."""
        keys, labels, alpha = self.keys(batch).float(), batch["labels"].flatten(), self.hparams.alpha
        if "knn_ids" in batch:
            ids, probs = batch["knn_ids"].flatten(0, 1), batch["knn_probs"].flatten(0, 1)
        else:  # the CE-only control (α = 0): one pad per row, which adds nothing to the (zero-weighted) KL
            ids = torch.full((labels.numel(), 1), -1, dtype=torch.int64, device=labels.device)
            probs = torch.zeros(ids.shape, dtype=torch.float32, device=labels.device)
        if self.hparams.loss == "fused":
            out = fused_memory_loss(self.memory.features(keys), self.memory.head_w, ids, probs, labels, alpha)
        else:
            out = memory_loss(self.memory(keys).flatten(0, 1), ids, probs, labels, alpha)
        return out

    def configure_optimizers(self) -> dict[str, Any]:
        return adamw_warmup_cosine(self, list(self.memory.parameters()), self.lr, self.optim)

    # -- evaluation --------------------------------------------------------------------------------
    @torch.no_grad()
    def _eval_step(self, batch: dict[str, torch.Tensor], metric: TokenNLL) -> None:
        logits, keys = logits_and_ffn_inputs(self.decoder, batch["input_ids"], self.layer)
        lp_lm = -token_nll(logits, batch["labels"]).double().flatten()
        lp_mem = -token_nll(self.memory(keys.float()), batch["labels"]).double().flatten()
        metric.update(-interpolate(lp_lm, lp_mem, self.lambdas))

    def forward(self, keys: torch.Tensor) -> torch.Tensor:
        return self.memory(keys)

    def export(self, out: str | Path) -> Path:
        """The memory alone (config.json + model.safetensors), reloadable with ``memory.load_memory``."""
        extra = {"decoder": self.hparams.decoder, "decoder_fingerprint": self.decoder_fingerprint,
                 "layer": self.layer, "alpha": self.hparams.alpha, "size": self.hparams.size,
                 **{key: getattr(self, key) for key in RECORDED}}
        return save_memory(self.memory, self.memory.cfg, out, extra)


def _need_size(decoder: str) -> str:
    raise UserError(f"{decoder} is not a ladder decoder: pass --model.size (see `mlpmem sizes`)")

