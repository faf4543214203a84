"""Memory-size scaling at a fixed base (issue #17): base + memory loss against the memory's parameters.

One base decoder, one datastore, several memory sizes (``x0.25`` … ``x2`` of the base, or ladder rungs): the
memory rows of ``results.csv`` (``arch == mlp_memory``, each at its λ chosen on valid) are fitted with
L(N_mem) = E + A·N_mem^(−α) (:func:`~.fits.fit_power_law`, with its bootstrap interval), and the base alone
(``decoder``) and its kNN-LM (``knn_lm``, T and λ tuned on valid) are the reference lines: E is the loss an
unbounded memory would reach on this base, to be read against the kNN-LM it imitates.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.study.analysis.fits import fit_power_law

X_AXIS = "params_memory"


def memory_scaling(df: pd.DataFrame, split: str = "test", bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The fit over memory sizes and the reference losses of one base, from results rows of ``split``."""
    rows = df[df["split"] == split]
    bases = rows["decoder_size"].astype(str).unique()
    if len(bases) != 1:
        raise UserError(f"memory-size scaling needs one base decoder, got {len(bases)} ({', '.join(bases)}): "
                        "filter the results to one decoder_size")
    memory = rows[rows["arch"] == "mlp_memory"].sort_values(X_AXIS)
    refs = {arch: float(rows.loc[rows["arch"] == arch, "loss"].mean()) for arch in ("decoder", "knn_lm")
            if (rows["arch"] == arch).any()}
    x = memory[X_AXIS].to_numpy(float)
    fit = fit_power_law(x, memory["loss"].to_numpy(float), bootstrap=bootstrap, seed=seed) \
        if len(np.unique(x)) >= 3 else None  # E, A and α need 3 sizes: fewer are tabled, not fitted
    sizes = memory.groupby(X_AXIS, as_index=False).agg(memory_size=("memory_size", "first"), loss=("loss", "mean"),
                                                       lam=("lambda", "mean"))
    if "decoder" in refs:  # relative perplexity change against the base, the paper's −8% on GPT2-large
        sizes["ppl_change_vs_base"] = np.exp(sizes["loss"] - refs["decoder"]) - 1
    span = float(sizes[X_AXIS].max() / sizes[X_AXIS].min())
    return {"base": str(bases[0]), "split": split, "fit": fit, "references": refs, "sizes": sizes,
            "span": span, "n_sizes": int(len(sizes))}


def summary_lines(result: dict[str, Any]) -> list[str]:
    """Markdown lines: the table per size, the references and the fit with its interval (and whether α is
    identified: an interval reaching the fit's bounds, or fewer than 5 sizes, claims nothing)."""
    fit, refs = result["fit"], result["references"]
    lines = [f"Base {result['base']} ({result['split']}), {result['n_sizes']} memory sizes spanning "
             f"{result['span']:.1f}x.", "", "| memory | params | λ | loss | ppl | vs base |",
             "|---|---|---|---|---|---|"]
    for r in result["sizes"].itertuples():
        change = f"{100 * r.ppl_change_vs_base:+.1f}%" if hasattr(r, "ppl_change_vs_base") else ""
        lines.append(f"| {r.memory_size} | {int(getattr(r, X_AXIS)):,} | {r.lam:.2f} | {r.loss:.4f} | "
                     f"{np.exp(r.loss):.2f} | {change} |")
    for arch, loss in refs.items():
        lines.append(f"| {arch} (reference) | | | {loss:.4f} | {np.exp(loss):.2f} | |")
    if fit is None:
        return lines + ["", f"Not fitted: {result['n_sizes']} memory sizes, and L = E + A·N^(−α) needs 3."]
    lo, hi = fit["alpha_ci"]
    note = "" if result["n_sizes"] >= 5 else " (fewer than 5 sizes: no significance claimed)"
    if not fit["alpha_identified"]:
        note += "; α is not identified: its interval reaches the fit's bound"
    lines += ["", f"L(N_mem) = {fit['E']:.4f} + {fit['A']:.3g}·N_mem^(−{fit['alpha']:.3f}); α 95% interval "
                  f"[{lo:.3f}, {hi:.3f}], E interval [{fit['E_ci'][0]:.4f}, {fit['E_ci'][1]:.4f}]{note}."]
    return lines
