"""Datastore alignment and resumption, and the kNN-LM on the embedded corpus."""


import numpy as np
import pytest
import torch

from mlpmem_lightning.cli.lightning import run_cli
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.data.token_store import TokenStore
from mlpmem_lightning.knn.datastore import Datastore, DatastoreSettings, build_datastore
from mlpmem_lightning.models.decoder import logits_and_ffn_inputs
from mlpmem_lightning.models.loading import load_decoder
from tests.helpers import EXP
from tests.killing import KILL_SEED, kill_after_progress, kill_rng

SEQ = 128


@pytest.fixture
def datastore(small_datastore):
    return small_datastore


def test_datastore_rows_follow_the_alignment(datastore, small_decoder, small_store):
    ds, tokens = Datastore(datastore), np.asarray(TokenStore(small_store).split("train"))
    n_windows = (len(tokens) - 1) // SEQ
    assert len(ds) == n_windows * SEQ and ds.keys.dtype == np.float16 and ds.values.dtype == np.int32
    assert np.array_equal(ds.values, tokens[1:len(ds) + 1])  # row p stores token p+1
    net = load_decoder(small_decoder).net
    for j in (0, 7, n_windows - 1):  # the full forward's FFN input for window j is rows [jL, (j+1)L)
        x = torch.from_numpy(tokens[j * SEQ:(j + 1) * SEQ].astype(np.int64))[None]
        with torch.no_grad():
            _, h = logits_and_ffn_inputs(net, x)
        np.testing.assert_array_equal(ds.keys[j * SEQ:(j + 1) * SEQ], h[0].numpy().astype(np.float16))
    m = ds.manifest
    assert m["seq_len"] == SEQ and m["d"] == 64 and m["token_store_fingerprint"] == TokenStore(small_store).fingerprint


def test_datastore_progress_is_saved_behind_the_forward_and_never_ahead_of_the_keys(datastore, small_decoder,
                                                                                  small_store, tmp_path, monkeypatch):
    """Its progress records are flushed on their own thread (``BackgroundSaves``, as the targets'): the forward goes
    on while a record is saved, and every window a record counts already has its final keys."""
    import threading

    import mlpmem_lightning.knn.datastore as m
    from mlpmem_lightning.core.writer import ArtifactWriter

    monkeypatch.setattr(m, "SAVE_ROWS", 16 * SEQ)
    final, out = Datastore(datastore).keys, tmp_path / "ds"
    save, records, went_on = ArtifactWriter.save_progress, [], threading.Event()

    def checked_save(self, state, arrays=()):
        keys = np.load(out / "keys.npy", mmap_mode="r")
        rows = state["done"] * SEQ
        records.append(bool(np.array_equal(keys[:rows], final[:rows])))
        if len(records) == 1:  # does the forward go on while the first record is being saved?
            for _ in range(400):
                if np.any(keys[rows:] != 0):
                    went_on.set()
                    break
                threading.Event().wait(0.025)
        save(self, state, arrays)

    monkeypatch.setattr(ArtifactWriter, "save_progress", checked_save)
    build_datastore(small_decoder, small_store, out, DatastoreSettings(batch_size=16), device="cpu")
    assert len(records) >= 2 and all(records), records
    assert went_on.is_set()
    assert np.array_equal(np.load(out / "keys.npy"), final)


def test_killed_datastore_resumes_byte_identical(datastore, small_decoder, small_store, tmp_path):
    code = ("from mlpmem_lightning.knn.datastore import *; import mlpmem_lightning.knn.datastore as m; "
            "m.SAVE_ROWS = 512; "
            f"build_datastore({str(small_decoder)!r}, {str(small_store)!r}, {str(tmp_path / 'ds')!r}, "
            "DatastoreSettings(batch_size=16), device='cpu')")
    n_windows = Datastore(datastore).manifest["N"] // SEQ
    done_at = kill_rng("datastore").randint(16, n_windows * 3 // 4)  # a random point after progress
    kill_after_progress(code, tmp_path / "ds" / "progress.rank0.json", done_at=done_at)
    assert not (tmp_path / "ds" / "manifest.json").exists(), f"killed at {done_at} (MLPMEM_KILL_SEED={KILL_SEED})"
    build_datastore(small_decoder, small_store, tmp_path / "ds", DatastoreSettings(batch_size=16), device="cpu")
    for name in ("keys.npy", "values.npy"):
        assert (datastore / name).read_bytes() == (tmp_path / "ds" / name).read_bytes()


def knn_args(cmd, decoder, store, datastore, *extra):
    return [cmd, "--model", "KNNLM", "--model.decoder", str(decoder), "--model.datastore", str(datastore),
            "--data.token_store", str(store), "--data.seq_len", str(SEQ), "--data.batch_size", "16",
            "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", *extra]


def test_knn_lm_beats_the_decoder_and_lambda0_is_the_decoder(datastore, small_decoder, small_store, tmp_path):
    knn = run_cli(knn_args("validate", small_decoder, small_store, datastore, "--model.k", "64",
                           "--trainer.default_root_dir", str(tmp_path / "knn")))
    m = {k: float(v) for k, v in knn.trainer.callback_metrics.items()}
    dec = run_cli(["validate", "--config", str(EXP / "model/decoder_200k.yaml"),
                   "--data.token_store", str(small_store), "--data.seq_len", str(SEQ),
                   "--trainer.default_root_dir", str(tmp_path / "dec"), "--trainer.enable_progress_bar", "false",
                   "--ckpt_path", str(small_decoder / "checkpoints" / "best.ckpt")])
    assert m["val/ppl_lambda_0.00"] == float(dec.trainer.callback_metrics["val/ppl"])  # exactly
    print(f"decoder valid ppl {m['val/decoder_ppl']:.2f}, kNN-LM best {m['val/best_ppl']:.2f} "
          f"at λ={m['val/best_lambda']:.2f}")
    assert m["val/best_ppl"] < m["val/decoder_ppl"] and 0 < m["val/best_lambda"] < 1


def test_knn_lm_lets_go_of_its_searcher_when_the_pass_ends(datastore, small_decoder, small_store, tmp_path,
                                                          monkeypatch):
    """After validate nothing holds the searcher (its keys), even while the trainer and module are still alive."""
    import gc
    import weakref

    from mlpmem_lightning.knn import search

    made, make = [], search.make_searcher

    def remembered(*args, **kwargs):
        searcher = make(*args, **kwargs)
        made.append(weakref.ref(searcher))
        return searcher

    monkeypatch.setattr(search, "make_searcher", remembered)
    knn = run_cli(knn_args("validate", small_decoder, small_store, datastore, "--model.k", "16",
                           "--trainer.default_root_dir", str(tmp_path / "knn")))
    gc.collect()
    assert made and knn.model is not None and all(ref() is None for ref in made)


def test_knn_lm_refuses_a_datastore_of_another_decoder(datastore, small_decoder, small_store, tmp_path):
    ckpt = torch.load(small_decoder / "checkpoints" / "best.ckpt", weights_only=False)
    name = next(k for k in ckpt["state_dict"] if k.endswith("embed_tokens.weight"))
    ckpt["state_dict"][name] = ckpt["state_dict"][name] + 1e-3  # a different decoder
    torch.save(ckpt, tmp_path / "other.ckpt")
    with pytest.raises(UserError, match="was built from decoder"):
        run_cli(knn_args("validate", tmp_path / "other.ckpt", small_store, datastore,
                         "--trainer.default_root_dir", str(tmp_path / "knn")))


@pytest.mark.parametrize("extra, message", [
    (["--model.lambdas", "[0.5, 1.5]"], "λ must lie in"),
    (["--model.lambda_", "-0.1"], "λ must lie in"),
    (["--model.temperature", "0"], "temperature"),
    (["--model.k", "0"], "k=0"),
    (["--data.seq_len", "64"], "seq_len 128"),
])
def test_knn_lm_bad_input(datastore, small_decoder, small_store, tmp_path, extra, message):
    with pytest.raises(UserError, match=message):
        run_cli(knn_args("validate", small_decoder, small_store, datastore, *extra,
                         "--trainer.default_root_dir", str(tmp_path / "knn")))


def test_two_process_datastore_is_identical(datastore, small_decoder, small_store, tmp_path):
    """Rank-sharded (2 gloo processes, each its own window range) == the single-process datastore."""
    from mlpmem_lightning.core.distributed import run_on_ranks

    run_on_ranks(build_datastore, 2, "cpu", decoder=str(small_decoder), data=str(small_store),
                 out=str(tmp_path / "ds2"), settings=DatastoreSettings(batch_size=16))
    for name in ("keys.npy", "values.npy"):
        assert (datastore / name).read_bytes() == (tmp_path / "ds2" / name).read_bytes()
    assert Datastore(tmp_path / "ds2").fingerprint == Datastore(datastore).fingerprint
