"""A pretrained base through the pipeline on CPU: a tiny random transformers Llama as the base, a token store
tokenized with its own tokenizer (``prepare --tokenizer DIR``), DecoderLM ``init_from`` it, its datastore and
targets as a teacher's for another decoder of the same tokenizer (MemoryLM ``teacher``), a base-relative memory."""

from __future__ import annotations

import pytest
import torch

from mlpmem_lightning.cli.lightning import run_cli
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.data.token_store import TokenStore
from mlpmem_lightning.data.tokenizer import tokenizer_fingerprint
from tests.helpers import EXP
from tests.pretrained_helpers import base_with_store, save_hf_dir, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.integration
TRAINER = ["--config", str(EXP / "trainer/cpu.yaml"), "--trainer.enable_progress_bar", "false"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(base directory, its token store): 150 made-up documents tokenized with the base's tokenizer."""
    return base_with_store(tmp_path_factory.mktemp("pretrained"))


def test_token_store_carries_the_base_tokenizer(base):
    base_dir, store = base
    s = TokenStore(store)
    assert s.manifest["tokenizer"]["fingerprint"] == tokenizer_fingerprint(tiny_tokenizer())
    assert s.manifest["tokenizer_source"]["fingerprint"] == s.tokenizer_fingerprint
    assert s.vocab_size == tiny_tokenizer().get_vocab_size()


def test_decoder_lm_starts_from_the_base_and_exports(base, tmp_path):
    """init_from: the untrained module's logits are the base's; after a few steps the checkpoint loads (its config
    travels with it) and exports to a directory that from_pretrained loads with the same logits."""
    from transformers import AutoModelForCausalLM

    from mlpmem_lightning.lightning.decoder_lm import DecoderLM
    from mlpmem_lightning.models.importing import export_decoder
    from mlpmem_lightning.models.loading import load_decoder

    base_dir, store = base
    ids = torch.randint(300, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        start = DecoderLM(init_from=str(base_dir)).net.eval()(input_ids=ids).logits
        ref = tiny_model("llama", 300)(input_ids=ids).logits
    torch.testing.assert_close(start, ref)
    run_cli(["fit", *TRAINER, "--model", "DecoderLM", "--model.init_from", str(base_dir), "--model.max_tokens",
             str(4 * 4 * 32), "--data.token_store", str(store), "--data.seq_len", "32", "--data.batch_size", "4",
             "--trainer.default_root_dir", str(tmp_path / "run")])
    dec = load_decoder(tmp_path / "run")
    assert dec.size_name is None and dec.tokenizer_fingerprint == tokenizer_fingerprint(tiny_tokenizer())
    export_decoder(tmp_path / "run", tmp_path / "hf")
    net = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(net(input_ids=ids).logits, dec.net(input_ids=ids).logits)
        assert not torch.allclose(net(input_ids=ids).logits, ref)  # it trained


def test_teacher_targets_train_another_decoders_memory(base, tmp_path):
    """The base's targets train a memory for a student of the same tokenizer only with --model.teacher true; the
    teacher is recorded; a base-relative size (x0.5) builds at the student's width."""
    from mlpmem_lightning.knn.datastore import DatastoreSettings, build_datastore
    from mlpmem_lightning.knn.targets import TargetSettings, build_targets
    from mlpmem_lightning.models.loading import load_decoder

    base_dir, store = base
    build_datastore(base_dir, store, tmp_path / "ds", DatastoreSettings(batch_size=8, seq_len=32), device="cpu")
    build_targets(tmp_path / "ds", tmp_path / "tg", TargetSettings(index="flat", k=8, keep=8), device="cpu")
    student = save_hf_dir(tmp_path / "student", "llama", tiny_tokenizer(), seed=1)
    argv = ["fit", *TRAINER, "--model", "MemoryLM", "--model.decoder", str(student), "--model.size", "x0.5",
            "--model.max_tokens", str(2 * 4 * 32), "--data.token_store", str(store), "--data.seq_len", "32",
            "--data.batch_size", "4", "--data.targets", str(tmp_path / "tg")]
    with pytest.raises(UserError, match="--model.teacher true"):
        run_cli([*argv, "--trainer.default_root_dir", str(tmp_path / "refused")])
    run_cli([*argv, "--model.teacher", "true", "--trainer.default_root_dir", str(tmp_path / "mem")])
    ckpt = torch.load(next((tmp_path / "mem").rglob("*.ckpt")), weights_only=False)
    assert ckpt["teacher_fingerprint"] == load_decoder(base_dir).fingerprint
    assert ckpt["decoder_fingerprint"] == load_decoder(student).fingerprint != ckpt["teacher_fingerprint"]
