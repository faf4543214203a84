"""Memory-size scaling at a fixed base: the fit recovers a known power law; references and per-size changes are
the rows' own numbers (reference: numpy on the generating parameters)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.study.analysis.memory_scaling import memory_scaling, summary_lines
from mlpmem_lightning.study.report.memory_scaling import plot_memory_scaling

E, A, ALPHA = 2.5, 40.0, 0.3


def _rows(params=(1e6, 2e6, 4e6, 8e6, 16e6), decoder="smollm2") -> pd.DataFrame:
    rows = [{"arch": "mlp_memory", "decoder_size": decoder, "memory_size": f"x{p / 8e6:g}", "params_memory": p,
             "loss": E + A * p ** -ALPHA, "lambda": 0.3, "split": "test"} for p in params]
    rows += [{"arch": "decoder", "decoder_size": decoder, "memory_size": "", "params_memory": 0, "loss": 3.2,
              "lambda": 0.0, "split": "test"},
             {"arch": "knn_lm", "decoder_size": decoder, "memory_size": "", "params_memory": 0, "loss": 3.0,
              "lambda": 0.25, "split": "test"}]
    return pd.DataFrame(rows)


def test_fit_recovers_the_power_law_and_references(tmp_path):
    result = memory_scaling(_rows(), bootstrap=50)
    fit = result["fit"]
    assert fit["alpha"] == pytest.approx(ALPHA, rel=1e-2) and fit["E"] == pytest.approx(E, rel=1e-2)
    assert result["references"] == {"decoder": 3.2, "knn_lm": 3.0}
    assert result["span"] == pytest.approx(16.0) and result["n_sizes"] == 5
    want = np.exp(E + A * np.array([1e6, 2e6, 4e6, 8e6, 16e6]) ** -ALPHA - 3.2) - 1
    np.testing.assert_allclose(result["sizes"]["ppl_change_vs_base"], want)
    assert any("α 95% interval" in line for line in summary_lines(result))
    assert plot_memory_scaling(result, tmp_path / "m.png").stat().st_size > 0


def test_one_base_only():
    df = pd.concat([_rows(), _rows(decoder="other")])
    with pytest.raises(UserError, match="one base decoder"):
        memory_scaling(df, bootstrap=10)


def test_relative_memory_sizes_in_a_sweep_spec_count_like_the_built_memory():
    """sweeps/memory-scaling.yaml: x-sizes on one ladder decoder span 8x; the torch-free config the study counts
    equals the memory MemoryLM builds on that decoder (reference: sum of numel of the built module)."""
    from mlpmem_lightning.models.base_memory import relative_config_for_rung, relative_memory_config
    from mlpmem_lightning.models.decoder import build_decoder
    from mlpmem_lightning.models.ladder import get_size
    from mlpmem_lightning.models.memory import MLPMemory, memory_params
    from mlpmem_lightning.study.spec import SweepSpec
    from tests.helpers import SWEEPS

    spec = SweepSpec.load(SWEEPS / "memory-scaling.yaml")
    rung = get_size(spec.decoder_sizes[0])
    net = build_decoder(rung, 512)
    counts = []
    for size in spec.memory_sizes:
        cfg = relative_config_for_rung(size, rung, "llama", 512)
        assert cfg == relative_memory_config(size, net)
        counts.append(sum(p.numel() for p in MLPMemory(cfg).parameters()))
        assert counts[-1] == memory_params(cfg)
    assert counts == sorted(counts) and counts[-1] / counts[0] >= 6  # the head (fixed) narrows the 8x span a little
