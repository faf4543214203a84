"""A tiny sweep with every architecture, the CE-only control included: the results columns of issue #15
(``params_non_embedding``, ``temperature``, ``lr``, ``epochs``, ``targets_mass_kept_mean``) against what the
artifacts themselves hold (checkpoints' weights, manifests, the token store, the shipped configs)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.core.resources import experiments_dir
from mlpmem_lightning.study.sweep import run_sweep
from tests.study.test_sweep import only, write_spec

pytestmark = pytest.mark.integration  # runs whole stages end to end

GRID = [0.5, 2.0, 8.0, 32.0]


def non_embedding(state: dict[str, torch.Tensor], skip: tuple[str, ...]) -> int:
    """Parameters of a checkpoint's state dict but those whose name holds one of ``skip`` (embeddings, heads)."""
    return sum(v.numel() for k, v in state.items() if v.is_floating_point() and not any(s in k for s in skip))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cols")
    spec = write_spec(tmp / "spec.yaml", decoder_sizes=["200k"], control_sizes=["200k"], temperatures=GRID)
    return pd.read_csv(run_sweep(spec)), tmp / "study"


def row(df: pd.DataFrame, arch: str, split: str = "valid") -> pd.Series:
    found = df[(df["arch"] == arch) & (df["split"] == split)]
    assert len(found) == 1, (arch, split)
    return found.iloc[0]


@pytest.mark.slow  # a whole sweep or 3 kNN evaluations: CI keeps under 15 min; make test-slow
def test_every_architecture_has_its_rows_and_the_new_columns(sweep):
    df, _ = sweep
    assert sorted(df["arch"].unique()) == ["decoder", "knn_lm", "mlp_memory", "mlp_memory_ce"]
    for col in ("params_non_embedding", "temperature", "lr", "epochs"):
        assert col in df.columns
    assert list(df.columns[15:19]) == ["params_non_embedding", "temperature", "lr", "epochs"]  # after the schema's


@pytest.mark.slow  # a whole sweep or 3 kNN evaluations: CI keeps under 15 min; make test-slow
def test_parameters_lr_and_epochs_follow_the_artifacts(sweep):
    df, out = sweep
    dec = torch.load(only(out, "decoders/200k-seed0-*") / "checkpoints" / "best.ckpt", weights_only=False)
    dec_ne = non_embedding(dec["state_dict"], ("embed", "lm_head"))
    mem = torch.load(_memory_ckpt(out, "mlp_memory"), weights_only=False)
    mem_ne = non_embedding(mem["state_dict"], ("head",))
    train = len(np.load(out / "tokens" / "train.npy", mmap_mode="r"))
    lr = yaml.safe_load((experiments_dir() / "model" / "decoder_200k.yaml").read_text())["model"]["init_args"]["lr"]
    for arch, ne in (("decoder", dec_ne), ("knn_lm", dec_ne), ("mlp_memory", dec_ne + mem_ne),
                     ("mlp_memory_ce", dec_ne + mem_ne)):
        for split in ("valid", "test"):
            r = row(df, arch, split)
            assert r["params_non_embedding"] == ne, arch
            assert r["lr"] == lr and r["epochs"] == pytest.approx(r["train_tokens"] / train, rel=1e-12)


def _memory_ckpt(out, arch):
    """The checkpoint of the memory run of ``arch``: the CE control's has no targets recorded."""
    for path in sorted(out.glob("memories/*/checkpoints/best.ckpt")):
        ckpt = torch.load(path, weights_only=False)
        if (ckpt.get("targets_fingerprint") is None) == (arch == "mlp_memory_ce"):
            return path
    raise AssertionError(f"no memory run of {arch}")


@pytest.mark.slow  # a whole sweep or 3 kNN evaluations: CI keeps under 15 min; make test-slow
def test_temperatures_are_the_chosen_and_the_rule_ones(sweep):
    df, out = sweep
    from mlpmem_lightning.knn.settings import TargetSettings
    from mlpmem_lightning.knn.temperature import median_neighbour_distance
    from tests.study.test_sweep import TINY

    assert row(df, "decoder")["temperature"] != row(df, "decoder")["temperature"]  # empty: NaN
    assert math.isnan(row(df, "mlp_memory_ce", "test")["temperature"])
    knn_valid, knn_test = row(df, "knn_lm"), row(df, "knn_lm", "test")
    best = min(GRID, key=lambda t: knn_valid[f"ppl_T_{t:g}"])  # the T of the lowest valid ppl over the grid
    assert knn_valid["temperature"] == knn_test["temperature"] == best
    assert knn_valid["ppl"] == pytest.approx(knn_valid[f"ppl_T_{best:g}"], rel=1e-6)
    manifest = json.loads((only(out, "targets/200k-seed0-*") / "manifest.json").read_text())
    median = median_neighbour_distance(only(out, "datastores/200k-seed0-*"), TargetSettings(**TINY["knn"]))
    for split in ("valid", "test"):
        r = row(df, "mlp_memory", split)
        assert r["temperature"] == manifest["temperature"] == pytest.approx(0.1 * median, rel=1e-12)
        assert r["targets_mass_kept_mean"] == manifest["mass_kept_mean"]


@pytest.mark.slow  # a whole sweep or 3 kNN evaluations: CI keeps under 15 min; make test-slow
def test_ce_control_is_charged_no_datastore_or_search(sweep):
    """Same memory and budget as mlp_memory; its FLOPs are mlp_memory's less the datastore pass and the search."""
    from mlpmem_lightning.data.token_store import TokenStore
    from mlpmem_lightning.models.flops import datastore_flops, search_flops
    from mlpmem_lightning.models.ladder import get_size
    from mlpmem_lightning.models.loading import load_decoder
    from tests.study.test_sweep import TINY

    df, out = sweep
    mem, ce, dec = row(df, "mlp_memory"), row(df, "mlp_memory_ce"), row(df, "decoder")
    assert (ce["memory_size"], ce["params_memory"], ce["train_tokens"]) == (
        mem["memory_size"], mem["params_memory"], mem["train_tokens"])  # same memory, same budget
    assert ce["flops_train_total"] > dec["flops_train_total"]
    rung, rows = get_size("200k"), int(mem["datastore_rows"])
    family, vocab = load_decoder(only(out, "decoders/200k-seed0-*")).family, TokenStore(out / "tokens").vocab_size
    spent = datastore_flops(rung, vocab, TINY["seq_len"], rows, family=family) + search_flops(rows, rows, rung.d_model)
    assert mem["flops_train_total"] - ce["flops_train_total"] == spent
    assert math.isnan(ce["targets_mass_kept_mean"])


@pytest.mark.parametrize("overrides, message", [
    ({"control_sizes": ["800k"]}, "control_sizes"),
    ({"temperatures": [1.0, -2.0]}, "temperatures"),
    ({"targets_temperature_scale": 0}, "targets_temperature_scale"),
])
def test_bad_recipe_keys(tmp_path, overrides, message):
    from mlpmem_lightning.study.spec import SweepSpec

    with pytest.raises(UserError, match=message):
        SweepSpec.load(write_spec(tmp_path / "spec.yaml", **overrides))
