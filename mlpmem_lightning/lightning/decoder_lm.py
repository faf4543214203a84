"""`DecoderLM`: the decoder-only baseline as a thin LightningModule.

Training is cross-entropy on the windows of ``LMDataModule`` with AdamW (weight decay
on matrices only), linear warmup then cosine decay, and a token budget
(``max_tokens``) that sets ``trainer.max_steps``. Evaluation accumulates the summed
token NLL and the token count (torchmetrics), so perplexity is exp of the exact
token-weighted mean over the split, independent of batching and of the number of GPUs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from mlpmem_lightning import __version__
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.lightning.evaluation import TokenNLL, scored, token_nll
from mlpmem_lightning.lightning.optim import (
    OPTIM,
    ClipGradients,
    FiniteLossGuard,
    OptimSettings,
    adamw_warmup_cosine,
    is_logging_step,
    tokens_per_step,
)
from mlpmem_lightning.lightning.step_graph import GraphedTrainStep, StepGraphHooks
from mlpmem_lightning.models.decoder import build_decoder, context_length
from mlpmem_lightning.models.families import get_family
from mlpmem_lightning.models.flops import forward_flops_of
from mlpmem_lightning.models.ladder import DEFAULT_CONTEXT, flops_per_token, get_size

FINETUNE_LR = 1e-4  # peak LR of --model.init_from runs without --model.lr: far below a fresh rung's


def lm_loss(net: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL of a transformers causal LM (what ``DecoderLM`` trains; compiled whole on GPU)."""
    return token_nll(net(input_ids=input_ids, use_cache=False).logits, labels).mean()


class DecoderLM(StepGraphHooks, ClipGradients, FiniteLossGuard, L.LightningModule):
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
        init_from: start from a transformers model directory (``mlpmem import-decoder``'s output, any
            ``from_pretrained`` directory) instead of a fresh rung: continued pretraining or fine-tuning on the
            token store, whose tokenizer must be the model's. ``size``, ``family``, ``context`` and
            ``tie_embeddings`` then come from the model; the LR defaults to ``FINETUNE_LR``.
    """

    def __init__(self, size: str = "200k", family: str = "llama", vocab_size: int | None = None,
                 context: int = DEFAULT_CONTEXT, tie_embeddings: bool = False, lr: float | None = OPTIM.lr,
                 weight_decay: float = OPTIM.weight_decay, betas: tuple[float, float] = OPTIM.betas,
                 warmup_fraction: float = OPTIM.warmup_fraction, min_lr_ratio: float = OPTIM.min_lr_ratio,
                 max_tokens: int | None = 2_000_000, compile: bool = False, cuda_graph: bool = False,
                 dropout: float = 0.0, warmup_min_steps: int = OPTIM.warmup_min_steps,
                 data_fingerprint: str | None = None, init_from: str | None = None):
        super().__init__()
        get_family(family)  # a str, not a Literal, so that registered families are accepted: checked here
        self.save_hyperparameters()
        self.ladder = get_size(size)
        self.optim = OptimSettings(lr, weight_decay, tuple(betas), warmup_fraction, min_lr_ratio, warmup_min_steps)
        self.lr = lr if lr is not None else (FINETUNE_LR if init_from else self.ladder.lr)
        self.net = None
        self.step_graph: GraphedTrainStep | None = None
        self.init_tokenizer: str | None = None  # the pretrained model's tokenizer fingerprint, checked in setup
        if init_from:
            self._build_from(init_from)
        elif vocab_size is not None:
            self._build(vocab_size)
        self.val_nll, self.test_nll = TokenNLL(), TokenNLL()

    def _build(self, vocab_size: int) -> None:
        hp = self.hparams
        self.net = build_decoder(self.ladder, vocab_size, hp.family, hp.context, hp.tie_embeddings, hp.dropout)
        self.hparams["vocab_size"] = vocab_size

    def _build_from(self, path: str) -> None:
        """A pretrained transformers model, made trainable; its config is kept in the checkpoint (``hf_config``)
        so that the checkpoint loads without the directory."""
        from mlpmem_lightning.models.loading import load_decoder

        if not (Path(path) / "config.json").is_file():
            raise UserError(f"--model.init_from {path} is not a transformers model directory: pass one "
                            "(`mlpmem import-decoder` writes one from a GGUF file)")
        dec = load_decoder(path)
        self.net = dec.net.float().train().requires_grad_(True)
        self.init_tokenizer = dec.tokenizer_fingerprint
        self.hparams.update(vocab_size=int(self.net.config.vocab_size), family=dec.family)

    # -- set-up: bind the model to its data and its budget -------------------------------------
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        if self.net is None:
            self._build(dm.vocab_size)
        elif self.hparams.vocab_size != dm.vocab_size:
            raise UserError(f"the model's vocab_size is {self.hparams.vocab_size} but the token store's tokenizer has "
                            f"{dm.vocab_size}: drop --model.vocab_size or prepare the data with the model's tokenizer")
        self._check_data(dm)
        dm.store.check_tokenizer(self.init_tokenizer, str(self.hparams.init_from))
        if dm.seq_len > context_length(self.net):
            raise UserError(f"seq_len {dm.seq_len} exceeds the model's context {context_length(self.net)}: "
                            "lower --data.seq_len or raise --model.context")
        if (dm.eval_context or 0) > context_length(self.net):
            raise UserError(f"--data.eval_context {dm.eval_context} exceeds the model's context "
                            f"{context_length(self.net)}: lower --data.eval_context or raise --model.context")
        self.flops_per_token = (3 * forward_flops_of(self.net, dm.seq_len) if self.hparams.init_from else
                                flops_per_token(self.ladder, dm.vocab_size, dm.seq_len, self.hparams.family))
        # one window: Lightning's model summary counts the forward's FLOPs on it (else "Total FLOPs: 0")
        self.example_input_array = torch.zeros(1, dm.seq_len, dtype=torch.long)
        self.tokens_per_step = tokens_per_step(self)
        self.train_loss = self._loss
        if stage == "fit" and self.hparams.compile:
            # the loss compiled with the network (not the network alone): the fp32 logits are never written out
            # (1 GB a step at 64 x 256 x 16384), which was a third of a 6m step's GPU time
            net = self.net
            self.train_loss = torch.compile(lambda input_ids, labels: lm_loss(net, input_ids, labels))
        if stage == "fit" and self.hparams.cuda_graph:
            self.start_step_graph(self.net, self.train_loss)

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
            checkpoint["tokenizer_fingerprint"] = dm.store.tokenizer_fingerprint
        if self.hparams.init_from:  # not a ladder rung: the architecture travels with the weights
            checkpoint["hf_config"] = self.net.config.to_dict()

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
        if is_logging_step(self):  # only the steps the logger writes: a log call costs more host time than a step
            self.log("train/loss", loss, prog_bar=True, sync_dist=True)  # the global batch's loss under DDP
            tokens = (self.global_step + 1) * self.tokens_per_step
            self.log_dict({"train/tokens": float(tokens), "train/flops": float(tokens) * self.flops_per_token})
        return loss

    def _eval_step(self, batch: dict[str, torch.Tensor], metric: TokenNLL) -> None:
        metric.update(scored(batch, token_nll(self(batch["input_ids"]), batch["labels"])))

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

    def configure_model(self) -> None:
        """Under Lightning's ``ModelParallelStrategy`` (FSDP2), shard each transformer block, then the rest, over
        the mesh's data-parallel dimension: parameters, gradients and AdamW state are split over the ranks
        (docs/multi-node.md). Any other strategy leaves the network whole."""
        mesh = self.device_mesh
        if mesh is None or self.net is None:
            return
        from torch.distributed.fsdp import fully_shard

        if mesh.ndim > 1:
            if mesh["tensor_parallel"].size() > 1:
                raise UserError("tensor parallelism is not implemented for the decoder: pass "
                                "--trainer.strategy.tensor_parallel_size 1 (FSDP over data_parallel_size ranks)")
            mesh = mesh["data_parallel"]
        for blocks in [m for m in self.net.modules() if isinstance(m, torch.nn.ModuleList)]:
            for block in blocks:
                fully_shard(block, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def on_test_epoch_end(self) -> None:
        self._log_epoch(self.test_nll, "test")

    # -- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        return adamw_warmup_cosine(self, list(self.parameters()), self.lr, self.optim,
                                   capturable=bool(self.hparams.cuda_graph))
