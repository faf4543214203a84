"""`DecoderLM`: the decoder-only baseline as a thin LightningModule.

Training is cross-entropy on the windows of ``LMDataModule`` with AdamW (weight decay
on matrices only), linear warmup then cosine decay, and a token budget
(``max_tokens``) that sets ``trainer.max_steps``. Evaluation accumulates the summed
token NLL and the token count (torchmetrics), so perplexity is exp of the exact
token-weighted mean over the split, independent of batching and of the number of GPUs.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from mlpmem_lightning import __version__
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.lightning.evaluation import TokenNLL, token_nll
from mlpmem_lightning.lightning.optim import (
    OPTIM,
    ClipGradients,
    FiniteLossGuard,
    OptimSettings,
    adamw_warmup_cosine,
    is_logging_step,
    make_capturable,
    tokens_per_step,
)
from mlpmem_lightning.lightning.step_graph import GraphedTrainStep
from mlpmem_lightning.models.decoder import build_decoder, context_length
from mlpmem_lightning.models.families import get_family
from mlpmem_lightning.models.ladder import DEFAULT_CONTEXT, flops_per_token, get_size


def lm_loss(net: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL of a transformers causal LM (what ``DecoderLM`` trains; compiled whole on GPU)."""
    return token_nll(net(input_ids=input_ids, use_cache=False).logits, labels).mean()


class DecoderLM(ClipGradients, FiniteLossGuard, L.LightningModule):
    """Decoder-only causal LM on the size ladder.

    Args:
        size: ladder rung (``mlpmem sizes`` lists them).
        family: a registered decoder family (``mlpmem sizes --help`` lists them): ``llama`` (RMSNorm, SwiGLU,
            RoPE), ``gpt2``, ...
        vocab_size: taken from the token store when ``None``; if set, it must match it.
        context: maximum sequence length of the positions.
        tie_embeddings: share the input embedding and the output head.
        lr: peak learning rate (default: the rung's).
        weight_decay: AdamW decay, applied to matrices only.
        betas: AdamW betas.
        warmup_fraction: share of the steps spent warming up (at least ``warmup_min_steps``, at most half the run).
        min_lr_ratio: final LR as a fraction of the peak.
        max_tokens: training token budget; `mlpmem fit` sets ``trainer.max_steps`` from it unless
            ``--trainer.max_steps`` is given (``None``: the trainer's).
        compile: ``torch.compile`` the network (GPU).
        cuda_graph: capture the whole training step (forward, loss, backward, gradient clipping, AdamW) once as a
            CUDA graph and replay it (GPU; ``lightning/step_graph.py``): the small rungs are launch-bound without
            it. Needs ``accumulate_grad_batches`` 1. ``on_before_optimizer_step`` hooks are not called.
        dropout: dropout probability in the blocks.
        warmup_min_steps: fewest warmup steps (``lightning/optim.py: warmup_steps``).
        data_fingerprint: token store this model belongs to (recorded at fit; checked later).
    """

    def __init__(self, size: str = "200k", family: str = "llama", vocab_size: int | None = None,
                 context: int = DEFAULT_CONTEXT, tie_embeddings: bool = False, lr: float | None = OPTIM.lr,
                 weight_decay: float = OPTIM.weight_decay, betas: tuple[float, float] = OPTIM.betas,
                 warmup_fraction: float = OPTIM.warmup_fraction, min_lr_ratio: float = OPTIM.min_lr_ratio,
                 max_tokens: int | None = 2_000_000, compile: bool = False, cuda_graph: bool = False,
                 dropout: float = 0.0, warmup_min_steps: int = OPTIM.warmup_min_steps,
                 data_fingerprint: str | None = None):
        super().__init__()
        get_family(family)  # a str, not a Literal, so that registered families are accepted: checked here
        self.save_hyperparameters()
        self.ladder = get_size(size)
        self.optim = OptimSettings(lr, weight_decay, tuple(betas), warmup_fraction, min_lr_ratio, warmup_min_steps)
        self.lr = lr if lr is not None else self.ladder.lr
        self.net = None
        self.step_graph: GraphedTrainStep | None = None
        if vocab_size is not None:
            self._build(vocab_size)
        self.val_nll, self.test_nll = TokenNLL(), TokenNLL()

    def _build(self, vocab_size: int) -> None:
        hp = self.hparams
        self.net = build_decoder(self.ladder, vocab_size, hp.family, hp.context, hp.tie_embeddings, hp.dropout)
        self.hparams["vocab_size"] = vocab_size

    # -- set-up: bind the model to its data and its budget -------------------------------------
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        if self.net is None:
            self._build(dm.vocab_size)
        elif self.hparams.vocab_size != dm.vocab_size:
            raise UserError(f"the model's vocab_size is {self.hparams.vocab_size} but the token store's tokenizer has "
                            f"{dm.vocab_size}: drop --model.vocab_size or prepare the data with the model's tokenizer")
        self._check_data(dm)
        if dm.seq_len > context_length(self.net):
            raise UserError(f"seq_len {dm.seq_len} exceeds the model's context {context_length(self.net)}: "
                            "lower --data.seq_len or raise --model.context")
        self.flops_per_token = flops_per_token(self.ladder, dm.vocab_size, dm.seq_len, self.hparams.family)
        self.tokens_per_step = tokens_per_step(self)
        self.train_loss = self._loss
        if stage == "fit" and self.hparams.compile:
            # the loss compiled with the network (not the network alone): the fp32 logits are never written out
            # (1 GB a step at 64 x 256 x 16384), which was a third of a 6m step's GPU time
            net = self.net
            self.train_loss = torch.compile(lambda input_ids, labels: lm_loss(net, input_ids, labels))
        if stage == "fit" and self.hparams.cuda_graph:
            if self.trainer.accumulate_grad_batches != 1:
                raise UserError("--model.cuda_graph true overwrites the gradients at each step: "
                                "drop --trainer.accumulate_grad_batches or set --model.cuda_graph false")
            if self.trainer.world_size > 1:  # its backward runs inside the step, outside DDP's gradient reduction
                raise UserError("--model.cuda_graph true trains on one device: set --model.cuda_graph false to "
                                f"train on {self.trainer.world_size} processes")
            self.step_graph = GraphedTrainStep(self.net, self.train_loss, self._clip_and_step)

    def _check_data(self, dm) -> None:
        have, fp = self.hparams.data_fingerprint, dm.fingerprint
        if have is None:
            self.hparams["data_fingerprint"] = fp
        elif have != fp:
            raise UserError(f"this model was trained on token store {have} but --data.token_store {dm.token_store} "
                            f"has {fp}: pass the token store the model was trained on")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Besides the hyper-parameters (``data_fingerprint``: the token store), the package version and the
        sha256 of the tokenizer, which `mlpmem generate` checks the tokenizer it is given against."""
        super().on_save_checkpoint(checkpoint)  # FiniteLossGuard: never a checkpoint of non-finite weights
        checkpoint["mlpmem_version"] = __version__
        dm = getattr(self._trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "store"):
            checkpoint["tokenizer_sha256"] = dm.store.manifest["tokenizer"]["sha256"]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A resumed fit gets its hyper-parameters from the command line, not the checkpoint: refuse weights
        trained on another token store than the one set up (``validate``/``test`` check it in ``setup``)."""
        have = (checkpoint.get("hyper_parameters") or {}).get("data_fingerprint")
        now = self.hparams.get("data_fingerprint")
        if None not in (have, now) and have != now:
            raise UserError(f"the checkpoint was trained on token store {have} but --data.token_store has {now}: "
                            "pass the token store of the run, or another --trainer.default_root_dir to start afresh")

    # -- steps -------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.net(input_ids=input_ids, use_cache=False).logits

    def _loss(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return lm_loss(self.net, input_ids, labels)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.step_graph is not None:  # forward, backward, clipping and the update all replayed here: Lightning's
            # backward and optimizer step are skipped (``backward``, ``optimizer_step`` below)
            loss = self.step_graph(batch["input_ids"], batch["labels"])
        else:
            loss = self.train_loss(batch["input_ids"], batch["labels"])
        self.guard_loss(loss)
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)  # the global batch's loss under DDP
        if is_logging_step(self):
            tokens = (self.global_step + 1) * self.tokens_per_step
            self.log_dict({"train/tokens": float(tokens), "train/flops": float(tokens) * self.flops_per_token})
        return loss

    def _eval_step(self, batch: dict[str, torch.Tensor], metric: TokenNLL) -> None:
        metric.update(token_nll(self(batch["input_ids"]), batch["labels"]))

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_nll)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.test_nll)

    def _log_epoch(self, metric: TokenNLL, prefix: str) -> None:
        """Token-weighted mean NLL over the whole split (synced across ranks) and its perplexity."""
        loss = metric.compute().reshape(-1)[0]
        metric.reset()
        self.log_dict({f"{prefix}/loss": loss, f"{prefix}/ppl": torch.exp(loss)}, prog_bar=True, sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch(self.val_nll, "val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch(self.test_nll, "test")

    # -- optimisation ------------------------------------------------------------------------
    def _clip_and_step(self) -> None:
        """What Lightning does after backward, done inside the step graph: clip (``--trainer.gradient_clip_val``,
        by norm) and the AdamW update (capturable, its LR a device tensor that the LR schedule fills)."""
        optimizer = self.trainer.optimizers[0]
        if clip := self.trainer.gradient_clip_val:
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if self.trainer.gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, clip)
            else:
                torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        if self.step_graph is None:
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        optimizer_closure()  # training_step: the graph replays forward, backward, clipping and the update

    def on_train_start(self) -> None:
        if self.step_graph is not None and self.device.type == "cuda":  # after a resumed optimizer's state is loaded
            make_capturable(self.trainer.optimizers[0], self.device)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        if self.step_graph is None:  # the graph overwrites its gradients each step: nothing to zero
            optimizer.zero_grad()

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        if self.step_graph is None:
            super().backward(loss, *args, **kwargs)

    def configure_optimizers(self) -> dict[str, Any]:
        return adamw_warmup_cosine(self, list(self.parameters()), self.lr, self.optim,
                                   capturable=bool(self.hparams.cuda_graph))
