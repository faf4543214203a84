"""The memory-size scaling plot (issue #17): base + memory loss against memory parameters, the fit with its band,
and the base alone and its kNN-LM as horizontal reference lines (:mod:`..analysis.memory_scaling`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mlpmem_lightning.study.analysis.fits import band, predict
from mlpmem_lightning.study.analysis.memory_scaling import X_AXIS


def plot_memory_scaling(result: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fit, sizes = result["fit"], result["sizes"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(sizes[X_AXIS], sizes["loss"], color="tab:green", marker="^", label="base + memory (λ on valid)")
    for x_, y_, name in zip(sizes[X_AXIS], sizes["loss"], sizes["memory_size"], strict=True):
        ax.annotate(name, (x_, y_), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if fit is not None:  # over the data's range only; α in the legend only where its interval identifies it
        x = np.geomspace(fit["x_min"], fit["x_max"], 100)
        lo_ci, hi_ci = fit["alpha_ci"]
        alpha = (f"α = {fit['alpha']:.2f} [{lo_ci:.2f}, {hi_ci:.2f}]" if fit["alpha_identified"]
                 else "α not identified")
        ax.plot(x, predict(fit, x), color="tab:green", label=f"fit, {alpha}")
        lo, hi = band(fit, x)
        ax.fill_between(x, lo, hi, color="tab:green", alpha=0.2)
    for arch, style in (("decoder", ("tab:blue", "base alone")), ("knn_lm", ("tab:orange", "kNN-LM (T, λ on valid)"))):
        if arch in result["references"]:
            ax.axhline(result["references"][arch], color=style[0], linestyle="--", label=style[1])
    ax.set_xscale("log")
    ax.set_xlabel("memory parameters")
    ax.set_ylabel(f"{result['split']} loss (nats/token)")
    ax.set_title(f"memory-size scaling on {result['base']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    fig.savefig(Path(path).with_suffix(".pdf"))
    plt.close(fig)
    return Path(path)
