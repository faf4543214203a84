"""Fingerprints: every artifact records what it was made from, every consumer checks it (issue #7, point 3).

(a) Each artifact records the package version and its inputs' fingerprints, compared with values read or
recomputed independently from the input files. (b) Each consumer refuses a mismatched input with one line
that names both sides. Mismatches are made by copying or editing manifests and checkpoints (arrays are
symlinked), never by new builds, so the file stays fast on the session fixtures of ``conftest.py``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mlpmem_lightning import __version__, artifacts
from mlpmem_lightning.cli.lightning import run_cli
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.models.loading import load_decoder, weights_fingerprint
from tests.helpers import EXP
from tests.knn.test_search import clustered, make_datastore

ROOT = Path(__file__).resolve().parent.parent
SEQ = 128
TRAINER = ["--config", str(EXP / "trainer/cpu.yaml"), "--trainer.enable_progress_bar", "false"]


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)  # the experiments/ configs are relative


def manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def ckpt_of(run: Path, name: str = "best.ckpt") -> Path:
    return run / "checkpoints" / name


def one_line(err: pytest.ExceptionInfo, *both: object) -> str:
    """The error's message, asserted to be one line naming every value in ``both``."""
    msg = str(err.value)
    assert "\n" not in msg, msg
    for value in both:
        assert str(value) in msg, (value, msg)
    return msg


def mirror(src: Path, dst: Path, edit: dict | None = None) -> Path:
    """``dst`` with ``src``'s files symlinked and its manifest copied (with ``edit`` applied)."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name not in ("manifest.json", ".lock"):
            (dst / f.name).symlink_to(f)
    (dst / "manifest.json").write_text(json.dumps({**manifest(src), **(edit or {})}))
    return dst


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def other_store(small_store, tmp_path_factory):
    """The small token store under another fingerprint (the arrays are the same)."""
    fp = "f" * 16
    assert manifest(small_store)["fingerprint"] != fp
    return mirror(small_store, tmp_path_factory.mktemp("other") / "store", {"fingerprint": fp})


@pytest.fixture(scope="module")
def other_decoder(small_decoder, tmp_path_factory):
    """The small decoder's checkpoint with one weight nudged: another decoder fingerprint, same token store."""
    ckpt = torch.load(ckpt_of(small_decoder), weights_only=False)
    name = next(k for k in ckpt["state_dict"] if k.endswith("embed_tokens.weight"))
    ckpt["state_dict"][name] = ckpt["state_dict"][name] * 1.01
    path = tmp_path_factory.mktemp("other") / "decoder.ckpt"
    torch.save(ckpt, path)
    return path


def mem_args(cmd, decoder, store, targets, run, *extra):
    return [cmd, *TRAINER, "--model", "MemoryLM", "--model.decoder", str(decoder), "--data.token_store", str(store),
            *(["--data.targets", str(targets)] if targets else []), "--data.seq_len", str(SEQ),
            "--data.batch_size", "4", "--data.eval_windows", "2", "--trainer.default_root_dir", str(run), *extra]


@pytest.fixture(scope="module")
def memory_run(small_decoder, small_store, small_targets, tmp_path_factory):
    """A MemoryLM fitted for 2 steps of 4 windows: enough for its checkpoints."""
    run = tmp_path_factory.mktemp("mem") / "run"
    run_cli(mem_args("fit", small_decoder, small_store, small_targets, run, "--model.max_tokens", str(2 * 4 * SEQ)))
    return run


# ---------------------------------------------------------------------------------------------------
# (a) what each artifact records
# ---------------------------------------------------------------------------------------------------

def test_token_store_records_version_settings_and_its_files(small_store):
    m = manifest(small_store)
    hashes = {s: sha256_of(small_store / f"{s}.npy") for s in ("train", "valid", "test")}
    tok = sha256_of(small_store / "tokenizer.json")
    assert m["mlpmem_version"] == __version__ and m["settings"]["vocab_size"] == 4096
    assert m["sha256"] == hashes and m["tokenizer"]["sha256"] == tok and m["corpus"]["name"] == "wiki-summaries"
    assert m["fingerprint"] == artifacts.hash_json({"tokens": hashes, "tokenizer": tok})


def test_decoder_checkpoint_records_version_token_store_and_tokenizer(small_decoder, small_store):
    for name in ("best.ckpt", "last.ckpt"):
        ckpt = torch.load(ckpt_of(small_decoder, name), weights_only=False)
        assert ckpt["mlpmem_version"] == __version__
        assert ckpt["hyper_parameters"]["data_fingerprint"] == manifest(small_store)["fingerprint"]
        assert ckpt["tokenizer_sha256"] == sha256_of(small_store / "tokenizer.json")
        assert ckpt["datamodule_hyper_parameters"]["seq_len"] == SEQ


def test_datastore_records_version_decoder_token_store_and_settings(small_datastore, small_decoder, small_store):
    m = manifest(small_datastore)
    net = load_decoder(small_decoder).net
    assert m["mlpmem_version"] == __version__
    assert m["decoder_fingerprint"] == weights_fingerprint(net)
    assert m["token_store_fingerprint"] == manifest(small_store)["fingerprint"]
    assert m["settings"] == {"split": "train", "layer": -1, "seq_len": SEQ, "batch_size": 16, "precision": "32"}
    assert m["values_sha256"] == sha256_of(small_datastore / "values.npy")


def test_index_entry_records_version_datastore_and_file(small_datastore, small_targets):
    import faiss

    m = manifest(small_datastore)
    entry = m["indexes"]["ivfflat"]  # built by the small_targets run
    assert entry["datastore_fingerprint"] == m["fingerprint"] and entry["ntotal"] == m["N"]
    assert entry["sha256"] == sha256_of(small_datastore / entry["file"])
    assert entry["mlpmem_version"] == __version__ and entry["faiss_version"] == faiss.__version__
    assert m["mlpmem_version"] == __version__


def test_centroid_cache_records_version_datastore_and_array(tmp_path):
    from mlpmem_lightning.knn.search import make_searcher

    ds = make_datastore(tmp_path / "ds", clustered(600, 8, 4, 1), fingerprint="fp-a")
    make_searcher(ds, "ivfflat", backend="clustered", nlist=4)
    record = json.loads((ds / "centroids-4-seed0-faiss-cpu.json").read_text())
    assert record["datastore_fingerprint"] == manifest(ds)["fingerprint"] == "fp-a"
    assert record["sha256"] == sha256_of(ds / "centroids-4-seed0-faiss-cpu.npy")
    assert record["mlpmem_version"] == __version__
    assert record["nlist"] == 4 and record["seed"] == 0


def test_targets_record_version_datastore_and_search_inputs(small_targets, small_datastore, tmp_path):
    from mlpmem_lightning.knn.targets import TargetSettings, build_targets

    m = manifest(small_targets)
    ds = manifest(small_datastore)
    assert m["mlpmem_version"] == __version__ and m["datastore_fingerprint"] == ds["fingerprint"]
    assert m["search_inputs"] == {"index_sha256": sha256_of(small_datastore / "index_ivfflat.faiss")}
    assert m["settings"]["k"] == 64 and m["backend"] == "faiss"
    # the clustered backend records its centroids instead
    ds2 = make_datastore(tmp_path / "ds", clustered(600, 8, 4, 2), fingerprint="fp-b")
    got = build_targets(ds2, tmp_path / "t", TargetSettings(index="ivfflat", k=8, keep=4, nlist=4, backend="clustered"),
                        device="cpu")
    cen = np.load(ds2 / "centroids-4-seed0-faiss-cpu.npy")
    assert got["search_inputs"] == {"centroids_sha256": hashlib.sha256(cen.tobytes()).hexdigest(), "nlist": 4}
    assert got["datastore_fingerprint"] == "fp-b"


def test_memory_checkpoint_and_export_record_version_and_inputs(memory_run, small_decoder, small_store,
                                                               small_datastore, small_targets, tmp_path):
    from mlpmem_lightning.lightning.memory_lm import MemoryLM

    want = {"decoder_fingerprint": weights_fingerprint(load_decoder(small_decoder).net),
            "token_store_fingerprint": manifest(small_store)["fingerprint"],
            "datastore_fingerprint": manifest(small_datastore)["fingerprint"],
            "targets_fingerprint": manifest(small_targets)["fingerprint"]}
    for name in ("best.ckpt", "last.ckpt"):
        ckpt = torch.load(ckpt_of(memory_run, name), weights_only=False)
        assert ckpt["mlpmem_version"] == __version__ and {k: ckpt[k] for k in want} == want
    MemoryLM.load_from_checkpoint(ckpt_of(memory_run), map_location="cpu").export(tmp_path / "mem")
    meta = json.loads((tmp_path / "mem" / "config.json").read_text())
    assert meta["mlpmem_version"] == __version__ and {k: meta["extra"][k] for k in want} == want


# ---------------------------------------------------------------------------------------------------
# (b) each consumer refuses a mismatch in one line that names both sides
# ---------------------------------------------------------------------------------------------------

def test_prepare_names_both_settings(small_store):
    from mlpmem_lightning.data.token_store import PrepareSettings, prepare

    recorded = manifest(small_store)["settings"]["vocab_size"]
    with pytest.raises(UserError) as err:
        prepare(PrepareSettings(corpus="wiki-summaries", vocab_size=999, max_documents=2000), small_store)
    one_line(err, f"vocab_size: {recorded} != 999", "built with other settings")


def test_data_module_names_both_fingerprints(small_store):
    from mlpmem_lightning.data.datamodule import LMDataModule

    with pytest.raises(UserError) as err:
        LMDataModule(str(small_store), fingerprint="0123456789abcdef").store
    one_line(err, manifest(small_store)["fingerprint"], "0123456789abcdef")


def test_decoder_evaluation_names_both_token_stores(small_decoder, small_store, other_store, tmp_path):
    with pytest.raises(UserError) as err:
        run_cli(["validate", *TRAINER, "--config", str(EXP / "model/decoder_200k.yaml"), "--data.token_store",
                 str(other_store), "--data.seq_len", str(SEQ), "--trainer.default_root_dir", str(tmp_path / "v"),
                 "--ckpt_path", str(ckpt_of(small_decoder))])
    one_line(err, manifest(small_store)["fingerprint"], manifest(other_store)["fingerprint"])


def test_resumed_decoder_fit_names_both_token_stores(small_decoder, small_store, other_store, tmp_path):
    """A fit resumed from last.ckpt takes its hyper-parameters from the command line: the checkpoint's
    token store is checked when it is loaded."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpt_of(small_decoder, "last.ckpt"), ckpt_of(run, "last.ckpt"))
    with pytest.raises(UserError) as err:
        run_cli(["fit", *TRAINER, "--config", str(EXP / "model/decoder_200k.yaml"), "--data.token_store",
                 str(other_store), "--data.seq_len", str(SEQ), "--data.batch_size", "4",
                 "--trainer.default_root_dir", str(run), "--model.max_tokens", str(1000 * 4 * SEQ)])
    one_line(err, manifest(small_store)["fingerprint"], manifest(other_store)["fingerprint"])


def test_datastore_build_names_both_token_stores(small_decoder, small_store, other_store, tmp_path):
    from mlpmem_lightning.knn.datastore import DatastoreSettings, build_datastore

    with pytest.raises(UserError) as err:
        build_datastore(small_decoder, other_store, tmp_path / "ds", DatastoreSettings(), device="cpu")
    one_line(err, manifest(small_store)["fingerprint"], manifest(other_store)["fingerprint"])
    assert not (tmp_path / "ds").exists()


def test_datastore_reuse_names_both_settings(small_decoder, small_store, small_datastore, tmp_path):
    from mlpmem_lightning.knn.datastore import DatastoreSettings, build_datastore

    out = tmp_path / "ds"
    out.mkdir()
    shutil.copy(small_datastore / "manifest.json", out / "manifest.json")  # a finished datastore, as far as reuse sees
    with pytest.raises(UserError) as err:
        build_datastore(small_decoder, small_store, out, DatastoreSettings(batch_size=16, layer=0), device="cpu")
    one_line(err, "is a datastore of another decoder", "settings.layer: -1 != 0")


def test_datastore_check_data_names_both_sides(small_datastore):
    from mlpmem_lightning.knn.datastore import Datastore

    ds = Datastore(small_datastore)
    with pytest.raises(UserError) as err:
        ds.check_data("e" * 16, SEQ)
    one_line(err, ds.manifest["token_store_fingerprint"], "e" * 16)
    with pytest.raises(UserError) as err:
        ds.check_data(ds.manifest["token_store_fingerprint"], 64)
    one_line(err, f"uses seq_len {ds.manifest['seq_len']} but --data.seq_len is 64")


def test_index_load_names_both_sides(small_datastore, small_targets, tmp_path):
    from mlpmem_lightning.knn.index import load_index

    m = manifest(small_datastore)
    entry = m["indexes"]["ivfflat"]
    stale = mirror(small_datastore, tmp_path / "stale",
                   {"indexes": {"ivfflat": {**entry, "datastore_fingerprint": "a" * 16}}})
    with pytest.raises(UserError) as err:
        load_index(stale, "ivfflat")
    one_line(err, "a" * 16, m["fingerprint"], "rebuild with `mlpmem targets")
    damaged = mirror(small_datastore, tmp_path / "damaged", {"indexes": {"ivfflat": {**entry, "sha256": "b" * 64}}})
    with pytest.raises(UserError) as err:
        load_index(damaged, "ivfflat")
    one_line(err, "b" * 64, sha256_of(small_datastore / "index_ivfflat.faiss"))


def test_stale_centroid_cache_is_retrained_not_used(tmp_path):
    """The cache is owned by the datastore: a record of other keys is not an error, the centroids are redone."""
    from mlpmem_lightning.knn.search.clustered import cached_centroids, train_centroids

    keys = clustered(600, 8, 4, 3)
    ds = make_datastore(tmp_path / "ds", keys, fingerprint="fp-new")
    np.save(ds / "centroids-4-seed0-faiss-cpu.npy", np.zeros((4, 8), np.float32))
    (ds / "centroids-4-seed0-faiss-cpu.json").write_text(json.dumps({"datastore_fingerprint": "fp-old"}))
    np.testing.assert_array_equal(cached_centroids(ds, np.load(ds / "keys.npy"), 4),
                                  train_centroids(np.load(ds / "keys.npy"), 4))
    assert json.loads((ds / "centroids-4-seed0-faiss-cpu.json").read_text())["datastore_fingerprint"] == "fp-new"


def test_targets_reuse_names_both_settings(small_datastore, small_targets, tmp_path):
    from mlpmem_lightning.knn.targets import TargetSettings, build_targets

    out = tmp_path / "t"
    out.mkdir()
    shutil.copy(small_targets / "manifest.json", out / "manifest.json")
    with pytest.raises(UserError) as err:
        build_targets(small_datastore, out, TargetSettings(index="ivfflat", k=32, keep=32, nprobe=16), device="cpu")
    one_line(err, "holds targets of another datastore", "settings.k: 64 != 32")


def test_data_module_targets_name_both_datastores(small_store, small_datastore, small_targets, tmp_path):
    from mlpmem_lightning.data.datamodule import LMDataModule

    targets = mirror(small_targets, tmp_path / "t", {"datastore_fingerprint": "c" * 16})
    with pytest.raises(UserError) as err:
        LMDataModule(str(small_store), seq_len=SEQ, targets=str(targets)).targets_info()
    one_line(err, "c" * 16, manifest(small_datastore)["fingerprint"])


def test_knn_lm_names_both_decoders_and_seq_lens(small_decoder, other_decoder, small_store, small_datastore, tmp_path):
    def knn(decoder, *extra):
        return ["validate", *TRAINER, "--model", "KNNLM", "--model.decoder", str(decoder), "--model.datastore",
                str(small_datastore), "--model.k", "8", "--data.token_store", str(small_store), "--data.seq_len",
                str(SEQ), "--trainer.default_root_dir", str(tmp_path / "knn"), *extra]

    with pytest.raises(UserError) as err:
        run_cli(knn(other_decoder))
    other_fp = weights_fingerprint(load_decoder(other_decoder).net)
    one_line(err, manifest(small_datastore)["decoder_fingerprint"], other_fp, "--model.decoder")
    with pytest.raises(UserError) as err:
        run_cli(knn(small_decoder, "--data.seq_len", "64"))
    one_line(err, "seq_len 128", "--data.seq_len is 64")


def test_memory_fit_names_both_decoders(other_decoder, small_store, small_datastore, small_targets, tmp_path):
    with pytest.raises(UserError) as err:
        run_cli(mem_args("fit", other_decoder, small_store, small_targets, tmp_path / "r"))
    other_fp = weights_fingerprint(load_decoder(other_decoder).net)
    one_line(err, manifest(small_datastore)["decoder_fingerprint"], other_fp, "targets come from decoder")


def test_memory_names_both_token_stores(small_decoder, small_store, other_store, small_datastore, small_targets,
                                        tmp_path):
    with pytest.raises(UserError) as err:  # the decoder's token store
        run_cli(mem_args("validate", small_decoder, other_store, None, tmp_path / "r"))
    one_line(err, manifest(small_store)["fingerprint"], manifest(other_store)["fingerprint"])
    with pytest.raises(UserError) as err:  # the targets' (their datastore's) token store
        run_cli(mem_args("fit", small_decoder, other_store, small_targets, tmp_path / "r"))
    one_line(err, manifest(small_datastore)["token_store_fingerprint"], manifest(other_store)["fingerprint"])


def test_memory_checkpoint_names_both_sides(memory_run, small_decoder, other_decoder, small_store, small_targets,
                                            tmp_path):
    from mlpmem_lightning.lightning.memory_lm import MemoryLM

    ckpt = torch.load(ckpt_of(memory_run, "last.ckpt"), weights_only=False)
    with pytest.raises(UserError) as err:  # another decoder
        MemoryLM.load_from_checkpoint(ckpt_of(memory_run), map_location="cpu", decoder=str(other_decoder))
    one_line(err, ckpt["decoder_fingerprint"], weights_fingerprint(load_decoder(other_decoder).net))

    ckpt["token_store_fingerprint"] = "d" * 16  # a memory of another token store, evaluated on this one
    torch.save(ckpt, tmp_path / "other-store.ckpt")
    with pytest.raises(UserError) as err:
        run_cli(mem_args("validate", small_decoder, small_store, None, tmp_path / "v", "--ckpt_path",
                         str(tmp_path / "other-store.ckpt")))
    one_line(err, "d" * 16, manifest(small_store)["fingerprint"], "--data.token_store")

    # a fit resumed with other targets (same datastore, another targets fingerprint)
    targets = mirror(small_targets, tmp_path / "t", {"fingerprint": "9" * 16})
    run = tmp_path / "resume"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpt_of(memory_run, "last.ckpt"), ckpt_of(run, "last.ckpt"))
    with pytest.raises(UserError) as err:
        run_cli(mem_args("fit", small_decoder, small_store, targets, run, "--model.max_tokens", str(4 * 4 * SEQ)))
    one_line(err, manifest(small_targets)["fingerprint"], "9" * 16, "--data.targets")


def test_generate_names_both_sides(memory_run, small_decoder, other_decoder, small_store, small_datastore, tmp_path):
    from mlpmem_lightning.inference.generate import run_generate
    from mlpmem_lightning.lightning.memory_lm import MemoryLM

    other_fp = weights_fingerprint(load_decoder(other_decoder).net)
    with pytest.raises(UserError) as err:  # a datastore of another decoder
        run_generate(str(other_decoder), "The", 2, datastore=str(small_datastore), device="cpu")
    one_line(err, manifest(small_datastore)["decoder_fingerprint"], other_fp)

    MemoryLM.load_from_checkpoint(ckpt_of(memory_run), map_location="cpu").export(tmp_path / "mem")
    with pytest.raises(UserError) as err:  # a memory of another decoder
        run_generate(str(other_decoder), "The", 2, memory=str(tmp_path / "mem"), device="cpu")
    one_line(err, json.loads((tmp_path / "mem" / "config.json").read_text())["extra"]["decoder_fingerprint"], other_fp)

    tok = tmp_path / "tokenizer.json"  # another tokenizer than the decoder's
    tok.write_text((small_store / "tokenizer.json").read_text() + "\n")
    with pytest.raises(UserError) as err:
        run_generate(str(small_decoder), "The", 2, tokenizer=str(tok), device="cpu")
    one_line(err, sha256_of(tok), sha256_of(small_store / "tokenizer.json"))
    assert isinstance(run_generate(str(small_decoder), "The", 2, tokenizer=str(small_store), device="cpu"), str)
