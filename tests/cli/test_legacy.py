"""Checkpoints written before the package was split into subpackages still load."""

import torch

from mlpmem_lightning.cli.lightning import run_cli
from tests.cli.test_cli import EXP


def test_checkpoint_with_an_old_class_path_validates(small_decoder, small_store, tmp_path):
    """mlpmem 0.1 recorded ``_class_path: mlpmem_lightning.decoder_lm.DecoderLM``; LightningCLI imports it."""
    ckpt = torch.load(small_decoder / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["_class_path"] == "mlpmem_lightning.lightning.decoder_lm.DecoderLM"
    ckpt["hyper_parameters"]["_class_path"] = "mlpmem_lightning.decoder_lm.DecoderLM"
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)

    def validate(path):
        cli = run_cli(["validate", "--config", str(EXP / "trainer/cpu.yaml"), "--model", "DecoderLM",
                       "--data.token_store", str(small_store), "--data.seq_len", "128", "--data.batch_size", "16",
                       "--data.eval_windows", "8", "--trainer.default_root_dir", str(tmp_path / path.stem),
                       "--trainer.enable_progress_bar", "false", "--ckpt_path", str(path)])
        return float(cli.trainer.callback_metrics["val/loss"])

    assert validate(old) == validate(small_decoder / "checkpoints" / "best.ckpt")
