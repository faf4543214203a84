"""A sweep on a pretrained base (the spec's ``base:``, issue #17 item 4): memory sizes relative to one loaded
decoder, one datastore, run as one study. References: transformers in float64 for the base's loss, the memory
checkpoints' weights for their parameters, ``mlpmem collect`` over the same run directories for the accounting
(the path hand-made runs take), and the base directory's listing (nothing is written into it)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.study.spec import SweepSpec
from mlpmem_lightning.study.sweep import run_sweep
from tests.pretrained_helpers import base_with_store
from tests.study.test_collect_pretrained import SEQ, _reference_nll
from tests.study.test_sweep import write_spec

pytestmark = pytest.mark.integration


def base_spec(root, base, tokens, **overrides):
    # the corpus base_with_store tokenized with the base's tokenizer (the sweep's default prepare on a base)
    return write_spec(root / "spec.yaml", study="on-base", base=str(base), token_store=str(tokens),
                      corpus=str(root / "corpus.jsonl"), prepare={},
                      memory_sizes=["x0.5", "x1"], architectures=["decoder", "knn_lm", "mlp_memory"],
                      seq_len=SEQ, batch_size=4, memory_tokens=3 * 4 * SEQ, memory_mode="offline",
                      temperatures=[1.0, 4.0, 16.0], knn={"index": "flat", "k": 8, "keep": 8},
                      targets_temperature="knn_lm",
                      datastore={"batch_size": 8}, **{"decoder_sizes": None, **overrides})


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    import mlpmem_lightning.cli.lightning as lightning_cli

    root = tmp_path_factory.mktemp("on-base")
    base, tokens = base_with_store(root, "tinybase")
    before = sorted(p.relative_to(base) for p in base.rglob("*"))
    spec = base_spec(root, base, tokens)
    runs, real = [], lightning_cli.run_cli

    def counting(config, **kwargs):
        sub = config["subcommand"]
        runs.append((sub, config[sub]["model"]["class_path"], config[sub]["model"]["init_args"].get("size")))
        return real(config, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lightning_cli, "run_cli", counting)
        run_sweep(spec)
    (root / "runs.json").write_text(__import__("json").dumps(runs))
    assert sorted(p.relative_to(base) for p in base.rglob("*")) == before  # nothing written into the base
    return root, base, SweepSpec.load(spec)


def test_every_memory_size_is_a_point_on_the_one_base(study):
    root, base, spec = study
    assert spec.decoder_sizes == ["tinybase"]
    assert [(p["decoder_size"], p["memory_size"]) for p in spec.grid()] == [("tinybase", "x0.5"), ("tinybase", "x1")]
    df = pd.read_csv(spec.study_dir / "results.csv")
    assert set(df["decoder_size"]) == {"tinybase"}
    test = df[df["split"] == "test"]
    assert sorted(test[test["arch"] == "mlp_memory"]["memory_size"]) == ["x0.5", "x1"]
    assert len(list((spec.out_dir / "datastores").iterdir())) == 1  # one datastore, shared by both memories


def test_the_two_trials_evaluate_the_base_and_its_knn_lm_once(study):
    """The second memory size reuses the first trial's evaluations of the base and of the kNN-LM (same config, same
    decoder), and the kNN-LM's validate pass that chose the targets' T is its evaluation's, not a second one."""
    import json

    root, _, _ = study
    runs = [tuple(r) for r in json.loads((root / "runs.json").read_text())]
    for module in ("DecoderLM", "KNNLM"):
        assert [r[0] for r in runs if r[1] == module] == ["validate", "test"], runs
    assert sorted(r[2] for r in runs if r[1] == "MemoryLM" and r[0] == "fit") == ["x0.5", "x1"]


def test_the_base_is_scored_and_counted_as_loaded_not_trained(study):
    from mlpmem_lightning.data.token_store import TokenStore

    root, base, spec = study
    df = pd.read_csv(spec.study_dir / "results.csv")
    test = df[df["split"] == "test"]
    dec = test[test["arch"] == "decoder"].iloc[0]
    assert dec["loss"] == pytest.approx(_reference_nll(base, TokenStore(root / "tokens").split("test")), rel=1e-5)
    assert dec["flops_train_total"] == 0 and dec["train_tokens"] == 0 and pd.isna(dec["lr"])
    from transformers import AutoModelForCausalLM

    assert (df["params_decoder"] == sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(base).parameters())
            ).all()
    for size in ("x0.5", "x1"):
        run = next((spec.out_dir / "memories").glob(f"{size}-on-tinybase-seed0-*"))
        state = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)["state_dict"]
        row = test[(test["arch"] == "mlp_memory") & (test["memory_size"] == size)].iloc[0]
        assert row["params_memory"] == sum(v.numel() for k, v in state.items() if k.startswith("memory."))


def test_the_targets_take_the_t_the_knn_lm_chose_on_valid(study):
    """``targets_temperature: knn_lm``: the memories imitate the kNN distribution at the T the kNN-LM chose on valid
    (read back from its own validate metrics), and record it."""
    root, base, spec = study
    df = pd.read_csv(spec.study_dir / "results.csv")
    logged = pd.read_csv(next((spec.out_dir / "knnlm").glob("*/validate/metrics.csv")))["val/temperature"].dropna()
    t = min([1.0, 4.0, 16.0], key=lambda g: abs(g - float(logged.iloc[-1])))
    assert set(df.loc[df["arch"] == "knn_lm", "temperature"]) == {t}
    assert set(df.loc[df["arch"] == "mlp_memory", "temperature"]) == {t}
    import json

    manifest = json.loads(next((spec.out_dir / "targets").glob("*/manifest.json")).read_text())
    assert manifest["temperature"] == t


def test_collect_over_the_sweeps_runs_gives_its_accounting(study):
    """The sweep (study/decoders.py) and `mlpmem collect` (study/collect_pretrained.py) count a base the same way."""
    from mlpmem_lightning.study.collect import collect

    root, base, spec = study
    runs = [*(spec.out_dir / "decoders").iterdir(), *(spec.out_dir / "knnlm").iterdir(),
            *(spec.out_dir / "memories").iterdir()]
    got = collect(runs, root / "collected.csv", study="on-base")
    swept = pd.read_csv(spec.study_dir / "results.csv")
    keys = ["arch", "memory_size", "split"]
    cols = ["params_decoder", "params_memory", "params_total", "params_non_embedding", "train_tokens",
            "flops_train_total", "loss", "lambda", "temperature", "datastore_rows"]
    a = swept.fillna({"memory_size": ""}).set_index(keys).sort_index()[cols]
    b = got.fillna({"memory_size": ""}).set_index(keys).sort_index()[cols]
    b.loc["decoder", "datastore_rows"] = a.loc["decoder", "datastore_rows"].to_numpy()  # the sweep names its trial's
    pd.testing.assert_frame_equal(a.astype(float), b.astype(float), check_exact=False, rtol=1e-6)


@pytest.mark.parametrize("overrides, message", [
    ({"decoder_budgets": [1.0]}, r"decoder_budgets train or tune a decoder, and a base is only loaded"),
    ({"decoder_sizes": ["n0.1m"]}, r"decoder sizes \['n0.1m'\] are not the base"),
])
def test_a_spec_that_would_train_the_base_is_refused_in_one_line(tmp_path, overrides, message):
    base, tokens = base_with_store(tmp_path, "tinybase")
    with pytest.raises(UserError, match=message):
        SweepSpec.load(base_spec(tmp_path, base, tokens, **overrides))


def test_a_base_that_is_not_a_model_directory_is_refused_in_one_line(tmp_path):
    (tmp_path / "nobase").mkdir()
    with pytest.raises(UserError, match=r"base .*nobase: not a transformers model directory .* import-decoder"):
        SweepSpec.load(base_spec(tmp_path, tmp_path / "nobase", tmp_path / "tokens"))


def test_a_store_in_the_bases_tokenizer_is_reused_wherever_that_tokenizer_lives(tmp_path):
    """SmolLM2's store was tokenized with the model imported to another directory than the one the GPU machine
    imports it to: the same tokenizer, so the store is the study's; another tokenizer is refused in one line."""
    import shutil

    from mlpmem_lightning.study.pipeline import prepare_tokens
    from tests.pretrained_helpers import save_hf_dir, tiny_tokenizer

    base, tokens = base_with_store(tmp_path, "tinybase")
    moved = shutil.copytree(base, tmp_path / "elsewhere" / "tinybase")
    spec = SweepSpec.load(base_spec(tmp_path, moved, tokens))
    assert prepare_tokens(spec) == tokens
    other = save_hf_dir(tmp_path / "other" / "tinybase", "llama", tiny_tokenizer(seed=1))
    with pytest.raises(UserError, match=r"^the decoder .*other/tinybase has another tokenizer .* prepare --tokenizer"):
        prepare_tokens(SweepSpec.load(base_spec(tmp_path, other, tokens)))


def test_the_summary_tables_the_sweeps_trials_and_fits_nothing_on_two_sizes(study, tmp_path):
    """summary.md from the sweep's own tables: every trial's seconds per stage as trials.csv holds them, and two
    memory sizes tabled, not fitted (E, A and α need three)."""
    from mlpmem_lightning.study.report.memory_summary import write_summary

    root, base, spec = study
    text = write_summary(spec.study_dir / "results.csv", None, tmp_path, bootstrap=20,
                         trials=spec.study_dir / "trials.csv").read_text()
    assert "Not fitted: 2 memory sizes, and L = E + A·N^(−α) needs 3." in text
    trials = pd.read_csv(spec.study_dir / "trials.csv")
    for r in trials.to_dict("records"):
        assert f"| {r['trial']} | {r['memory_size']} |" in text and f"{r['time_memory_fit_s']:.1f}" in text
    assert (tmp_path / "memory_scaling.png").is_file() and (tmp_path / "memory_scaling.pdf").is_file()
