"""The console script: help, sizes, every shipped YAML, and one-line errors."""

import subprocess
import sys

import pytest
import yaml

from mlpmem_lightning.cli.configs import all_configs, render
from mlpmem_lightning.cli.lightning import run_cli
from mlpmem_lightning.models.ladder import LADDER, total_params
from tests.helpers import EXP

MLPMEM = [sys.executable, "-m", "mlpmem_lightning.cli"]
PIPELINE = ("prepare", "datastore", "targets", "sweep", "report", "demo", "bench", "sizes", "fit", "validate", "test")


def mlpmem(*args, cwd=None):
    return subprocess.run(MLPMEM + list(args), capture_output=True, text=True, cwd=cwd)


def test_help_lists_every_subcommand():
    out = mlpmem("--help")
    assert out.returncode == 0
    for name in PIPELINE:
        assert f"    {name}" in out.stdout, name


def test_sizes_csv_matches_the_closed_form():
    import io

    import pandas as pd

    out = mlpmem("sizes", "--format", "csv", "--vocab-size", "1000")
    df = pd.read_csv(io.StringIO(out.stdout))
    assert list(df["name"]) == [s.name for s in LADDER]
    assert list(df["params_total"]) == [total_params(s, 1000) for s in LADDER]


def test_shipped_configs_are_the_generated_ones():
    generated = all_configs()
    shipped = {str(p.relative_to(EXP)) for p in EXP.rglob("*.yaml")}
    assert shipped == set(generated)
    for rel, content in generated.items():
        assert (EXP / rel).read_text() == render(content), f"{rel} is stale: run `make configs`"


def _print_config(capsys, *configs, extra=()):
    args = ["fit"] + [a for c in configs for a in ("--config", str(EXP / c))] + list(extra) + ["--print_config"]
    with pytest.raises(SystemExit) as exc:
        run_cli(args)
    assert exc.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("model", sorted(p.name for p in (EXP / "model").glob("*.yaml")))
def test_every_model_yaml_parses(capsys, model):
    extra = ["--model.decoder", "runs/some/decoder"] if model.startswith("memory_") else []
    cfg = _print_config(capsys, "trainer/cpu.yaml", "data/wiki-summaries.yaml", f"model/{model}", extra=extra)
    want = yaml.safe_load((EXP / "model" / model).read_text())["model"]
    assert cfg["model"]["class_path"] == want["class_path"]
    assert cfg["model"]["init_args"]["size"] == want["init_args"]["size"]


@pytest.mark.parametrize("cfg", sorted(str(p.relative_to(EXP)) for p in EXP.glob("[dt]*/*.yaml")))
def test_every_trainer_and_data_yaml_parses(capsys, cfg):
    parsed = _print_config(capsys, cfg, "model/decoder_200k.yaml")
    want = yaml.safe_load((EXP / cfg).read_text())
    section = "trainer" if "trainer" in want else "data"
    for key, value in want[section].items():
        assert parsed[section][key] == value


def test_model_is_chosen_by_class_name(capsys):
    cfg = _print_config(capsys, "data/wiki-summaries.yaml", extra=["--model", "DecoderLM", "--model.size", "400k"])
    assert cfg["model"]["class_path"].endswith("DecoderLM") and cfg["model"]["init_args"]["size"] == "400k"


@pytest.mark.parametrize("args, message", [
    (["prepare", "--corpus", "no-such-corpus", "--out", "x"], "wiki-summaries"),
    (["bench", "--sections", "nope"], "unknown bench sections"),
    (["sweep", "--config", "no-such-spec.yaml"], "does not exist"),
    (["report", "--results", "missing.csv", "--out", "r"], "does not exist"),
    (["targets", "--datastore", "missing", "--out", "t"], "does not exist"),
    (["targets", "--datastore", "missing", "--out", "t", "--k", "0"], "argument --k: 0 must be >= 1"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    out = mlpmem(*args, cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr
