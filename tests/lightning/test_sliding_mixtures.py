"""Sliding-window evaluation for the kNN-LM (issue #16 item 4): at λ = 0 it is the decoder's sliding-window
loss exactly (the same windows, the same scored labels)."""

from __future__ import annotations

from mlpmem_lightning.cli.lightning import run_cli
from tests.helpers import EXP
from tests.lightning.test_knn_lm import SEQ, knn_args

SLIDE = ["--data.eval_context", str(SEQ), "--data.eval_stride", str(SEQ // 4), "--data.eval_windows", "40"]


def test_knn_lm_at_lambda_0_is_the_decoders_sliding_window_loss(small_datastore, small_decoder, small_store,
                                                                tmp_path):
    knn = run_cli(knn_args("validate", small_decoder, small_store, small_datastore, "--model.k", "16",
                           "--model.lambdas", "[0.0, 0.25]", "--trainer.default_root_dir", str(tmp_path / "knn"),
                           *SLIDE))
    dec = run_cli(["validate", "--config", str(EXP / "model/decoder_200k.yaml"), "--data.token_store",
                   str(small_store), "--data.seq_len", str(SEQ), "--trainer.default_root_dir", str(tmp_path / "dec"),
                   "--trainer.enable_progress_bar", "false", *SLIDE,
                   "--ckpt_path", str(small_decoder / "checkpoints" / "best.ckpt")])
    assert float(knn.trainer.callback_metrics["val/ppl_lambda_0.00"]) == float(dec.trainer.callback_metrics["val/ppl"])
    assert 0 < float(knn.trainer.callback_metrics["val/ppl_lambda_0.25"]) < float("inf")
