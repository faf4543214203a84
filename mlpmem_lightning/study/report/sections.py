"""report.md's sections on every run, the decoder-only compute frontier and the IsoFLOP view, and its methods.

Numbers from :mod:`mlpmem_lightning.study.analysis` (``run_table``, ``compute_frontier``, ``isoflop_groups``);
the markdown around them here, so that :mod:`.markdown` stays the page's outline.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlpmem_lightning.study import analysis as an
from mlpmem_lightning.study.architectures import style
from mlpmem_lightning.study.report.plots import AXIS_LABELS, ISOFLOP_PLOT, fmt_x, look
from mlpmem_lightning.study.report.text import PAPER_GAIN, base_label, capital, g, md_table, span, with_study

OPTIONAL_WHY = {
    "params_non_embedding": "fits and plots use total parameters only",
    "temperature": "the kNN temperature T is not shown",
    "lr": "learning rates are not shown",
    "epochs": "epochs are not shown",
    "last10_improvement": "the last-10% improvement is not shown",
    "converged": "convergence is not shown",
}


def data_notes(df: pd.DataFrame) -> str:
    """Which of DESIGN.md's newer columns this table lacks (an older results.csv), and what that leaves out."""
    missing = an.missing_optional(df)
    if not missing:
        return ""
    return ("*This results table has no " + "; no ".join(f"`{c}` ({OPTIONAL_WHY[c]})" for c in missing)
            + ": it predates those columns.*")


def runs_section(df: pd.DataFrame) -> str:
    """Every model: settings, λ*, and perplexity at λ*, at λ = 0.25 (the paper's) and at λ = 1 (the mixed-in
    component alone), on valid and test. Also in ``runs.csv``."""
    t = an.run_table(df)
    fixed = [f"{s}_{an.lambda_column(x)}" for s in ("valid", "test") for x in an.FIXED_LAMBDAS]
    fixed = [c for c in fixed if t[c].notna().any()]
    extra = [c for c in ("temperature", "lr", "epochs", "converged") if c in t.columns and t[c].notna().any()]
    axis = an.param_axis(df)
    headers = (["architecture", "decoder", "memory", AXIS_LABELS[axis], "train tokens", "seed"]
               + [{"temperature": "T"}.get(c, c) for c in extra] + ["λ*", "valid ppl", "test ppl"]
               + [_fixed_header(c) for c in fixed])
    rows = []
    for r in t.to_dict("records"):
        rows.append([look(r["arch"])[0], r["decoder_size"], r["memory_size"] or "—", fmt_x(r[axis], axis),
                     fmt_x(r["train_tokens"], "params_total"), r["seed"]]
                    + [_cell(r[c]) for c in extra] + [g(r["lambda"], 3), g(r["valid_ppl"]), g(r["test_ppl"])]
                    + [g(r[c]) for c in fixed])
    lam_note = ("λ* was chosen on valid; the test perplexity is at λ*. The columns at fixed λ come from the λ grid "
                "evaluated in the same pass: λ = 1 is the mixed-in component alone (the memory, or the kNN "
                "distribution), λ = 0.25 the paper's weight.")
    if not any(c.startswith("test_") for c in fixed):
        lam_note += " This table holds the grid for valid only."
    return f"{lam_note} Machine-readable: `runs.csv`.\n\n" + md_table(*with_study(headers, rows, list(t["study"])))


def _fixed_header(col: str) -> str:
    split, lam = col.split("_", 1)
    return f"{split} ppl λ={float(lam[len(an.LAMBDA_PREFIX):]):g}"


def _cell(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, str):
        return v
    return "—" if v is None or not np.isfinite(v) else f"{v:.4g}"


def frontier_section(df: pd.DataFrame, matched: pd.DataFrame, split: str) -> str:
    """The envelope itself, then every other architecture's runs against it."""
    front = an.compute_frontier(df, split)
    if front.empty:
        return f"*No {base_label()} runs: no compute frontier.*"
    counts = an.decoder_cells(df, split).groupby("study").size()
    runs = (f"all {counts.iloc[0]}" if len(counts) == 1
            else "the runs of its own study (" + ", ".join(f"{n} in `{st}`" for st, n in counts.items()) + ")")
    head = (f"The lower envelope of {base_label()} {split} loss against training FLOPs over {runs} "
            f"{base_label()} runs (seed means per size and token budget); between its points the loss is "
            "interpolated linearly in log FLOPs.\n\n"
            + md_table(*with_study(["decoder", "train tokens", "FLOPs", "loss", "seeds"],
                                   [[r.decoder_size, fmt_x(r.train_tokens, "params_total"),
                                     fmt_x(r.flops_train_total, "flops_train_total"), f"{r.loss:.4f}",
                                     int(r.n_seeds)] for r in front.itertuples()], list(front["study"]))))
    rows = matched[matched["method"] == "frontier"]
    if rows.empty:
        return head + "\n\n*No other architecture has runs within or beyond the frontier's compute.*"
    body = [[look(r.arch)[0], r.decoder_size, r.memory_size or "—", fmt_x(r.x, "flops_train_total"),
             f"{r.loss:.4f}", f"{r.decoder_loss:.4f}" + (" ‡" if r.extrapolated else ""), f"{r.delta:+.4f}",
             int(r.n_seeds)] for r in rows.itertuples()]
    headers = ["architecture", "decoder", "memory", "FLOPs", "loss", "frontier loss", "Δ", "seeds"]
    return (head + "\n\n### Against the frontier\n\nMeasured losses (mean over seeds) against the frontier of "
            "their own study at the same FLOPs. ‡: more FLOPs than any decoder-only run; the frontier's last loss "
            "is shown, an upper bound of what a decoder alone would reach there.\n\n"
            + md_table(*with_study(headers, body, list(rows["study"]), always=front["study"].nunique() > 1)))


def ordering_section(df: pd.DataFrame, split: str) -> str:
    """Each step to the next larger decoder-only size against twice its seed noise (:mod:`..analysis.ordering`).
    Several studies are ordered each on its own, with its own seed noise."""
    steps = an.size_steps(df, split)
    if steps.empty:
        return f"*Fewer than two {base_label()} sizes: no size steps.*"
    axis = an.param_axis(df)
    multi = steps["study"].nunique() > 1
    head = (f"{capital(base_label())} {split} loss, mean over seeds, each size at its largest token budget, against "
            f"{AXIS_LABELS[axis]}. The seed noise σ is the pooled standard deviation of the seeds within a size"
            f"{' of one study' if multi else ''}; a step's noise is σ·√(1/n_a + 1/n_b), that of the difference of "
            f"two seed means, and a step is resolved when the loss falls by more than {an.NOISE_MULTIPLE:g}× that. "
            + " ".join(_noise_sentence(study, first, multi) for study, first in _first_step_per_study(steps)))
    rows = [[r["from"], r["to"], f"{r['drop']:+.4f}", "—" if not r["dof"] else f"{an.NOISE_MULTIPLE * r['noise']:.4f}",
             {None: "not measured", True: "yes", False: "no"}[r["resolved"]]] for r in steps.to_dict("records")]
    cols = ["from", "to", "loss falls by", f"{an.NOISE_MULTIPLE:g}× noise", "resolved"]
    return head + "\n\n" + md_table(*with_study(cols, rows, list(steps["study"])))


def _first_step_per_study(steps: pd.DataFrame) -> list[tuple[str, dict]]:
    """(study, its first step's record): σ and its degrees of freedom are the same on every step of a study."""
    return [(study, group.iloc[0].to_dict()) for study, group in steps.groupby("study", sort=True)]


def _noise_sentence(study: str, step: dict, multi: bool) -> str:
    where = f"`{study}`: " if multi else ""
    if not step["dof"]:
        return f"{where}no size has two seeds, so the seed noise is not measured and no step is called resolved."
    return f"{where}σ = {step['seed_sd']:.4f} nats/token ({int(step['dof'])} degrees of freedom)."


def ordering_conclusion(df: pd.DataFrame, split: str) -> str | None:
    """One sentence per study: how many size steps the loss falls at, and how many are resolved."""
    steps = an.size_steps(df, split)
    if steps.empty:
        return None
    multi = steps["study"].nunique() > 1
    parts = []
    for study, group in steps.groupby("study", sort=True):
        where = f" in `{study}`" if multi else ""
        line = (f"{capital(base_label())} {split} loss{where} falls at {int((group['drop'] > 0).sum())} of "
                f"{len(group)} size steps")
        if not group["dof"].iloc[0]:
            parts.append(line + " (one seed per size: the seed noise is not measured).")
        else:
            parts.append(line + f"; {int(group['resolved'].sum())} of them by more than {an.NOISE_MULTIPLE:g}× the "
                         f"seed noise (σ = {group['seed_sd'].iloc[0]:.4f}).")
    return " ".join(parts)


def isoflop_section(df: pd.DataFrame, split: str) -> str:
    axis = an.param_axis(df)
    groups = an.isoflop_groups(df, split, axis)
    width = 10 ** an.ISOFLOP_DECADES
    text = (f"{base_label()} runs grouped into compute levels (each spans a factor {width:.2f} in FLOPs), loss "
            f"against {AXIS_LABELS[axis]} within each level; the lowest point of a level is the best size for "
            "that compute.")
    if groups.empty:
        return text + f"\n\n*No compute level holds two {base_label()} sizes.*\n\n![IsoFLOP]({ISOFLOP_PLOT})"
    rows, studies = [], []
    for (study, level), lev in groups.groupby(["study", "level"], sort=False):
        best = lev.loc[lev["loss"].idxmin()]
        studies.append(study)
        rows.append([fmt_x(lev["level_flops"].iloc[0], "flops_train_total"), len(lev),
                     ", ".join(f"{d} ({fmt_x(t, 'params_total')} tok)" for d, t in
                               zip(lev["decoder_size"], lev["train_tokens"])),
                     f"{best['decoder_size']} ({best['loss']:.4f})"])
    headers = ["level (≈FLOPs)", "runs", "decoder (train tokens)", "best"]
    return (text + "\n\n" + md_table(*with_study(headers, rows, studies))
            + f"\n\n![IsoFLOP]({ISOFLOP_PLOT})")


METHODS = f"""\
- **Axes.** Non-embedding parameters (`params_non_embedding`: everything the architecture runs but its token
  embedding and tied output head) are the primary axis, total parameters (`params_total`) the secondary one; the
  kNN-LM's datastore is data, not parameters. Training compute (`flops_train_total`) is everything spent to produce
  the architecture: decoder training, the datastore pass, the neighbour search and the memory's training.
- **Fits.** L(x) = E + A·x^(−α), Huber loss on log-residuals (Hoffmann et al. 2022, approach 3), 95% percentile
  bootstrap over runs. Against parameters each model counts at its largest token budget; against FLOPs the
  {{base}} fit uses only the runs on its compute frontier.
- **Honest statistics.** α is *not identified* when its interval reaches the fit's bounds
  {list(an.ALPHA_BOUNDS)} (`alpha_identified: false` in `fits.json`); it is then never printed as a number, and no
  exponent comparison is made. "Excludes 0", "steeper" and "shallower" are only said when every fit involved is on
  at least {an.MIN_SIZES_FOR_CLAIMS} sizes, its bootstrap interval of α has width (`ci_degenerate: false`) and
  its α is identified.
- **Matched compute** compares a run with the {{base}} compute frontier: the lower envelope of {{base}} loss against
  FLOPs over every size and token budget, interpolated linearly in log FLOPs; never against one run per size.
- **Figures.** Points are seed means with min–max error bars over seeds, labelled by decoder size; hollow points are
  runs a fit left out; fitted curves and their bands are drawn only over the range they were fitted on. Each
  figure is also saved as PDF.
- **Fitted comparison**: both fitted curves read off at the same x; Δ = loss(arch) − loss({{base}}), its interval the
  percentile interval of the difference over the two sets of bootstrap fits.
- **Measured pairs** (parameters): a run paired with the {{base}} run of the same study whose parameter count is
  equal within 1% (typically a kNN-LM and its own decoder).
- **One-line conclusions** are generated from the tables above by fixed rules, not written by hand."""


def methods() -> str:
    return METHODS.replace("{base}", base_label())


def own_decoder_section(gains: pd.DataFrame, split: str) -> str:
    """Each mixing architecture against decoder-only on its own decoder (:func:`..analysis.own_decoder_gains`)."""
    text = (f"Each architecture against {base_label()} on the very decoder it mixes with (same study, size and seed), "
            f"{split} split: the comparison the paper reports (a base with and without its memory; "
            f"{PAPER_GAIN:+.0%} in perplexity for GPT2-large with a 774M memory on WikiText-103). It is matched "
            "neither in parameters nor in compute (the sections above are); pairing on one decoder cancels that "
            "decoder's own noise.")
    if gains.empty:
        return text + f"\n\n*No run shares its decoder with a {base_label()} run.*"
    rows = [[style(r.arch).label, r.study, r.decoder_size, r.memory_size or "—", r.seed, f"{r.reference_loss:.4f}",
             f"{r.loss:.4f}", f"{r.delta:+.4f}", f"{r.ppl_change:+.1%}"] for r in gains.itertuples()]
    return text + "\n\n" + md_table(["architecture", "study", "decoder", "memory", "seed", f"{base_label()} loss",
                                      "loss", "Δ", "perplexity"], rows)


def own_decoder_conclusion(gains: pd.DataFrame) -> str | None:
    """One sentence: the range of each architecture's perplexity change on its own decoder."""
    if gains.empty:
        return None
    parts = [f"{style(arch).label} {span(g['ppl_change'], '+.1%')} ({len(g)} run{'s' if len(g) > 1 else ''})"
             for arch, g in gains.groupby("arch", sort=False)]
    return (f"On its own decoder, perplexity changes by: {'; '.join(parts)}. The paper: {PAPER_GAIN:+.0%} "
            "(GPT2-large + a 774M memory, WikiText-103).")

