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
from mlpmem_lightning.lightning.evaluation import LambdaGridEvaluation, TokenNLL, scored, token_nll
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
from mlpmem_lightning.lightning.step_graph import StepGraphHooks
from mlpmem_lightning.models.base_memory import PAPER_MEMORY_LR, is_relative, relative_memory_config
from mlpmem_lightning.models.decoder import ffn_inputs, logits_and_ffn_inputs
from mlpmem_lightning.models.families import family_of
from mlpmem_lightning.models.flops import forward_flops_of
from mlpmem_lightning.models.ladder import get_memory_size, get_size, matched_memory
from mlpmem_lightning.models.loading import load_decoder
from mlpmem_lightning.models.memory import MLPMemory, build_memory, memory_flops_per_token, save_memory

# fingerprints a MemoryLM checkpoint records besides its decoder's: (what, the flag a later run checks them against)
RECORDED = {"token_store_fingerprint": ("token store", "--data.token_store"),
            "targets_fingerprint": ("targets", "--data.targets"),
            "datastore_fingerprint": ("datastore", None)}  # follows from the targets: recorded, not checked twice


class MemoryLM(StepGraphHooks, ClipGradients, FiniteLossGuard, LambdaGridEvaluation, L.LightningModule):
    """MLP Memory on top of a frozen decoder.

    Args:
        decoder: the frozen decoder (``.ckpt``, run directory, or transformers directory).
        size: memory ladder rung (``mlpmem sizes``), or ``x<ratio>`` (``x0.5``, ``x2``): a memory of the decoder's
            width with ratio × its non-embedding parameters (``models/base_memory.py``; any base, e.g. a
            pretrained one); default: the one matched to the decoder's rung.
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
        compile: ``torch.compile`` the memory together with its loss (GPU).
        cuda_graph: capture the whole training step (the frozen decoder's forward to the keys, the memory, its loss,
            backward, clipping and AdamW) as one CUDA graph and replay it (GPU; ``lightning/step_graph.py``).
        teacher: the targets may come from another decoder of the same token store (a teacher: the paper
            trained GPT2-large's memory on GPT2-xl's targets); its fingerprint is recorded in the checkpoint.
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
                 lambda_: float | None = None, compile: bool = False, loss: Literal["sparse", "fused"] = "sparse",
                 cuda_graph: bool = False, teacher: bool = False):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise UserError(f"alpha {alpha} must lie in [0, 1]: fix --model.alpha")
        self.save_hyperparameters(ignore=self.EVAL_ONLY)
        self.init_lambda_grid(lambdas, lambda_)
        self.optim = OptimSettings(lr, weight_decay, tuple(betas), warmup_fraction, min_lr_ratio)
        dec = load_decoder(decoder)
        object.__setattr__(self, "decoder", dec.net)  # frozen and reloaded: not a submodule, not checkpointed
        self.decoder_fingerprint, self.decoder_data = dec.fingerprint, dec.data_fingerprint
        self.decoder_tokenizer, self.teacher_fingerprint = dec.tokenizer_fingerprint, None
        # what the memory is trained on, set by setup and recorded in (and checked against) the checkpoint
        self.token_store_fingerprint = self.targets_fingerprint = self.datastore_fingerprint = None
        size = size or matched_memory(dec.size_name if dec.size_name else _need_size(decoder)).name
        block = block or family_of(dec.net).memory_block
        if is_relative(size):
            self.memory = MLPMemory(relative_memory_config(size, dec.net, block, dropout=dropout))
            self.lr = lr if lr is not None else PAPER_MEMORY_LR
        else:
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
        dm.store.check_tokenizer(self.decoder_tokenizer, self.hparams.decoder)
        self.decoder.to(self.trainer.strategy.root_device)
        self.token_store_fingerprint = dm.fingerprint
        # one window of keys: Lightning's model summary counts the memory's forward FLOPs on it
        self.example_input_array = torch.zeros(1, dm.seq_len, self.memory.cfg.input_dim)
        if dm.targets is not None:
            targets, datastore = dm.targets_info()
            self.targets_fingerprint, self.datastore_fingerprint = targets["fingerprint"], datastore["fingerprint"]
        if stage == "fit":
            if dm.targets is None:
                self._setup_without_targets()
            else:
                self._check_teacher(datastore)
                self.layer = datastore["layer"]
            dm.serve_keys = self.hparams.mode == "offline"
            self.tokens_per_step = tokens_per_step(self)
            decoder = forward_flops_of(self.decoder, dm.seq_len) if self.hparams.mode == "online" else 0
            per_token = memory_flops_per_token(self.memory.cfg) + decoder
            self.flops_per_token = per_token  # read by IntervalThroughput
            self.prepare_train_step(self.hparams.compile)
            if self.hparams.cuda_graph:
                self.start_step_graph(self.memory, self._step_losses)

    def prepare_train_step(self, compile: bool) -> None:
        """``train_losses``, compiled (memory and loss as one graph: the fp32 logits never written out) or not."""
        self.train_losses = torch.compile(self._memory_losses) if compile else self._memory_losses

    def _check_teacher(self, datastore: dict[str, Any]) -> None:
        """Targets of another decoder only when asked (``teacher``): the same token store and window cut are
        already checked (``targets_info``), so each row still predicts this decoder's next token; the teacher's
        keys are of another model, so the memory must read this decoder's own (online)."""
        source = datastore.get("decoder_fingerprint")
        if source == self.decoder_fingerprint:
            return
        if not self.hparams.teacher:
            raise UserError(f"the targets come from decoder {source} but --model.decoder {self.hparams.decoder} has "
                            f"{self.decoder_fingerprint}: use that decoder's targets, or --model.teacher true to "
                            "learn from another decoder's (same token store)")
        if self.hparams.mode == "offline":
            raise UserError("--model.mode offline reads the teacher's keys, not this decoder's: use --model.mode "
                            "online with --model.teacher true")
        self.teacher_fingerprint = source

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
        checkpoint["teacher_fingerprint"] = self.teacher_fingerprint
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
        self.teacher_fingerprint = checkpoint.get("teacher_fingerprint")

    # -- training --------------------------------------------------------------------------------
    def _keys_of(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.mode == "offline":
            return x
        with torch.no_grad():
            return ffn_inputs(self.decoder, x, self.layer)

    def _memory_losses(self, keys: torch.Tensor, knn_ids: torch.Tensor, knn_probs: torch.Tensor,
                       labels: torch.Tensor) -> torch.Tensor:
        """[loss, kl, ce] of the memory on these keys (a vector, so that one graph returns all three)."""
        ids, probs, labels, alpha = knn_ids.flatten(0, 1), knn_probs.flatten(0, 1), labels.flatten(), self.hparams.alpha
        if self.hparams.loss == "fused":
            out = fused_memory_loss(self.memory.features(keys), self.memory.head_w, ids, probs, labels, alpha)
        else:
            out = memory_loss(self.memory(keys).flatten(0, 1), ids, probs, labels, alpha)
        return torch.stack([out["loss"], out["kl"], out["ce"]])

    def _step_losses(self, x: torch.Tensor, labels: torch.Tensor, knn_ids: torch.Tensor,
                     knn_probs: torch.Tensor) -> torch.Tensor:
        """One training step's [loss, kl, ce] from the batch (``x``: token ids online, keys offline)."""
        return self.train_losses(self._keys_of(x).float(), knn_ids, knn_probs, labels)

    train_losses = _memory_losses  # replaced by ``prepare_train_step`` in ``setup``

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x = batch["keys"] if self.hparams.mode == "offline" else batch["input_ids"]
        xs = (x, batch["labels"], *self._targets_of(batch))
        # the step graph replays forward, backward, clipping and the update (Lightning's are skipped: StepGraphHooks)
        out = self.step_graph(*xs) if self.step_graph is not None else self._step_losses(*xs)
        loss, kl, ce = out.unbind()
        self.guard_loss(loss)
        if is_logging_step(self):  # only the steps the logger writes: a log call costs more host time than a step
            self.log_dict({"train/loss": loss, "train/kl": kl, "train/ce": ce}, prog_bar=True,
                          sync_dist=True)  # the global batch's losses under DDP
            self.log("train/tokens", float((self.global_step + 1) * self.tokens_per_step))
        return loss

    @staticmethod
    def _targets_of(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's sparse targets [B, S, K]; a batch without them (the CE-only control, α = 0) gets one pad per
        row, which adds nothing to the (zero-weighted) KL."""
        if "knn_ids" in batch:
            return batch["knn_ids"], batch["knn_probs"]
        labels = batch["labels"]
        ids = torch.full((*labels.shape, 1), -1, dtype=torch.int64, device=labels.device)
        return ids, torch.zeros(ids.shape, dtype=torch.float32, device=labels.device)

    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{loss, kl, ce} of a training batch, as ``training_step`` computes them (without the step graph)."""
        x = batch["keys"] if self.hparams.mode == "offline" else batch["input_ids"]
        loss, kl, ce = self._step_losses(x, batch["labels"], *self._targets_of(batch)).unbind()
        return {"loss": loss, "kl": kl, "ce": ce}

    def configure_optimizers(self) -> dict[str, Any]:
        return adamw_warmup_cosine(self, list(self.memory.parameters()), self.lr, self.optim,
                                   capturable=bool(self.hparams.cuda_graph))

    # -- evaluation --------------------------------------------------------------------------------
    @torch.no_grad()
    def _eval_step(self, batch: dict[str, torch.Tensor], metric: TokenNLL) -> None:
        logits, keys = logits_and_ffn_inputs(self.decoder, batch["input_ids"], self.layer)
        labels = scored(batch, batch["labels"])  # sliding windows: only the labels no earlier window scored
        lp_lm = -scored(batch, token_nll(logits, batch["labels"])).double()
        lp_mem = -token_nll(self.memory(scored(batch, keys).float()), labels).double()
        metric.update(-interpolate(lp_lm, lp_mem, self.lambdas))

    def forward(self, keys: torch.Tensor) -> torch.Tensor:
        return self.memory(keys)

    def export(self, out: str | Path) -> Path:
        """The memory alone (config.json + model.safetensors), reloadable with ``memory.load_memory``."""
        extra = {"decoder": self.hparams.decoder, "decoder_fingerprint": self.decoder_fingerprint,
                 "layer": self.layer, "alpha": self.hparams.alpha, "size": self.hparams.size,
                 "teacher_fingerprint": self.teacher_fingerprint,
                 **{key: getattr(self, key) for key in RECORDED}}
        return save_memory(self.memory, self.memory.cfg, out, extra)


def _need_size(decoder: str) -> str:
    raise UserError(f"{decoder} is not a ladder decoder: pass --model.size (see `mlpmem sizes`)")

