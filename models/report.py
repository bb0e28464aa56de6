"""The evaluation report: metrics.json, PNG figures and one HTML page that shows them.

Pure presentation over arrays: labels and the probabilities of several scorers
(the model and its baselines) for the same users, plus a categorical grouping
(the lifecycle stage). Knows nothing about events or features.

Figures (one PNG each, both heads side by side): ``roc.png``, ``pr.png``,
``calibration.png`` (reliability diagram over the ECE bins, with the share of
users per bin), ``lift.png`` (cumulative lift by share of users targeted),
``scores.png`` (the model's score distribution by actual outcome) and
``stages.png`` (users per stage, and observed vs predicted rates per stage).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

from models.evaluate import DEFAULT_BINS, calibration_table, head_metrics, lift_curve, pr_curve, roc_curve  # noqa: E402

FIGURES: tuple[str, ...] = ("roc.png", "calibration.png", "lift.png", "pr.png", "scores.png", "stages.png")
#: Metrics where lower is better; every other metric is better when higher.
LOWER_IS_BETTER: frozenset[str] = frozenset({"log_loss", "brier", "ece"})
COMPARED: tuple[str, ...] = ("roc_auc", "pr_auc", "log_loss", "brier", "ece", "lift_at_10")
#: What "beats a baseline" means: ranking (ROC-AUC, PR-AUC, lift) and proper scoring rules (log-loss, Brier).
#: ECE is not among them: it is no skill score (predicting the base rate for everyone has an ECE near 0), so
#: it is checked against an absolute limit instead.
BEATS_ON: tuple[str, ...] = ("roc_auc", "pr_auc", "log_loss", "brier", "lift_at_10")
ECE_LIMIT = 0.03
_COLORS = {"model": "#1f5fbf", "rfm": "#d98c1a", "bgnbd": "#2f9e5b"}
_HEAD_TITLES = {"churn_risk": "churn risk", "purchase_propensity": "purchase propensity"}
_DPI = 110


@dataclass(frozen=True)
class ReportData:
    """Everything the report shows. ``scores[name]`` is (n x heads) probabilities, like ``labels``."""

    heads: tuple[str, ...]
    labels: npt.NDArray[np.float32]
    scores: dict[str, npt.NDArray[np.float64]]
    scorer_titles: dict[str, str]
    groups: npt.NDArray[np.object_]  # e.g. the stage of each user
    group_order: tuple[str, ...]
    segments: dict[str, npt.NDArray[np.bool_]]  # name -> rows, e.g. "all", "active"
    segment_titles: dict[str, str]
    meta: dict[str, Any] = field(default_factory=dict)
    notes: Sequence[str] = ()  # paragraphs (plain text) shown under the headline table
    primary: str = "model"

    def __post_init__(self) -> None:
        n = self.labels.shape[0]
        if self.labels.shape != (n, len(self.heads)):
            raise ValueError(f"labels must be (n, {len(self.heads)}), got {self.labels.shape}")
        for name, s in self.scores.items():
            if s.shape != self.labels.shape:
                raise ValueError(f"scores of {name!r} have shape {s.shape}, labels {self.labels.shape}")
        if self.primary not in self.scores:
            raise ValueError(f"primary scorer {self.primary!r} not among {list(self.scores)}")


def compute_metrics(data: ReportData, n_bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """``{segment: {head: {scorer: metrics}}}``, and per segment and head whether the primary scorer
    beats every other one (on each metric of :data:`BEATS_ON`) and whether its ECE is within :data:`ECE_LIMIT`.
    """
    out: dict[str, Any] = {
        "segments": {},
        "primary_beats_baselines": {},
        "primary_ece_within_limit": {},
        "beats_on": list(BEATS_ON),
        "ece_limit": ECE_LIMIT,
        "ece_bins": n_bins,
    }
    for seg, rows in data.segments.items():
        per_head: dict[str, Any] = {}
        wins: dict[str, Any] = {}
        calibrated: dict[str, bool] = {}
        for h, head in enumerate(data.heads):
            y = data.labels[rows, h]
            if y.shape[0] == 0:
                continue
            per_head[head] = {name: head_metrics(y, s[rows, h], n_bins).as_dict() for name, s in data.scores.items()}
            wins[head] = _wins(per_head[head], data.primary)
            calibrated[head] = bool(per_head[head][data.primary]["ece"] <= ECE_LIMIT)
        out["segments"][seg] = per_head
        out["primary_beats_baselines"][seg] = wins
        out["primary_ece_within_limit"][seg] = calibrated
    return out


def _wins(metrics: dict[str, dict[str, float]], primary: str) -> dict[str, bool]:
    """Per metric of :data:`BEATS_ON`: is the primary scorer strictly better than every other scorer?"""
    res = {}
    for k in BEATS_ON:
        mine = metrics[primary][k]
        others = [m[k] for name, m in metrics.items() if name != primary]
        if k in LOWER_IS_BETTER:
            res[k] = all(mine < o for o in others)
        else:
            res[k] = all(mine > o for o in others)
    return res


# --------------------------------------------------------------------------- figures


def _axes(n_heads: int, rows: int = 1, height: float = 4.0) -> tuple[Any, Any]:
    fig, axes = plt.subplots(rows, n_heads, figsize=(5.2 * n_heads, height * rows), squeeze=False)
    return fig, axes


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI, metadata={"Software": None})
    plt.close(fig)


def _title(head: str) -> str:
    return _HEAD_TITLES.get(head, head)


def plot_roc(data: ReportData, rows: npt.NDArray[np.bool_], path: Path) -> None:
    fig, axes = _axes(len(data.heads))
    for h, head in enumerate(data.heads):
        ax = axes[0, h]
        y = data.labels[rows, h]
        for name, s in data.scores.items():
            fpr, tpr = roc_curve(y, s[rows, h])
            auc = head_metrics(y, s[rows, h]).roc_auc
            ax.plot(
                fpr,
                tpr,
                color=_COLORS.get(name),
                lw=2 if name == data.primary else 1.3,
                label=f"{data.scorer_titles[name]} (AUC {auc:.3f})",
            )
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
        ax.set(title=f"ROC: {_title(head)}", xlabel="false positive rate", ylabel="true positive rate")
        ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def plot_pr(data: ReportData, rows: npt.NDArray[np.bool_], path: Path) -> None:
    fig, axes = _axes(len(data.heads))
    for h, head in enumerate(data.heads):
        ax = axes[0, h]
        y = data.labels[rows, h]
        for name, s in data.scores.items():
            rec, prec = pr_curve(y, s[rows, h])
            ap = head_metrics(y, s[rows, h]).pr_auc
            ax.step(
                rec,
                prec,
                where="post",
                color=_COLORS.get(name),
                lw=2 if name == data.primary else 1.3,
                label=f"{data.scorer_titles[name]} (AP {ap:.3f})",
            )
        ax.axhline(float(y.mean()), ls=":", color="grey", lw=1, label=f"base rate {y.mean():.2f}")
        ax.set(title=f"Precision-recall: {_title(head)}", xlabel="recall", ylabel="precision", ylim=(0, 1.02))
        ax.legend(loc="lower left", fontsize=8)
    _save(fig, path)


def plot_calibration(data: ReportData, rows: npt.NDArray[np.bool_], path: Path, n_bins: int = DEFAULT_BINS) -> None:
    fig = plt.figure(figsize=(5.2 * len(data.heads), 5.6))
    grid = fig.add_gridspec(2, len(data.heads), height_ratios=(3, 1))
    edges = np.linspace(0, 1, n_bins + 1)
    for h, head in enumerate(data.heads):
        ax = fig.add_subplot(grid[0, h])
        hist = fig.add_subplot(grid[1, h], sharex=ax)
        y = data.labels[rows, h]
        width = 1.0 / n_bins / (len(data.scores) + 1)
        for j, (name, s) in enumerate(data.scores.items()):
            mean_p, rate, count = calibration_table(y, s[rows, h], n_bins)
            ok = count > 0
            e = head_metrics(y, s[rows, h], n_bins).ece
            ax.plot(
                mean_p[ok],
                rate[ok],
                marker="o",
                ms=4,
                color=_COLORS.get(name),
                lw=2 if name == data.primary else 1.3,
                label=f"{data.scorer_titles[name]} (ECE {e:.3f})",
            )
            hist.bar(
                edges[:-1] + (j + 0.5) * width, count / count.sum(), width=width, align="edge", color=_COLORS.get(name)
            )
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
        ax.set(title=f"Calibration: {_title(head)}", ylabel="observed rate", xlim=(0, 1), ylim=(0, 1))
        ax.legend(loc="upper left", fontsize=8)
        hist.set(xlabel="predicted probability (bin mean)", ylabel="share of users")
    _save(fig, path)


def plot_lift(data: ReportData, rows: npt.NDArray[np.bool_], path: Path) -> None:
    fig, axes = _axes(len(data.heads))
    for h, head in enumerate(data.heads):
        ax = axes[0, h]
        y = data.labels[rows, h]
        for name, s in data.scores.items():
            fr, lift = lift_curve(y, s[rows, h], points=20)
            ax.plot(
                fr * 100,
                lift,
                marker="o",
                ms=3,
                color=_COLORS.get(name),
                lw=2 if name == data.primary else 1.3,
                label=f"{data.scorer_titles[name]} (lift@10% {lift[1]:.2f})",
            )
        ax.axhline(1.0, ls=":", color="grey", lw=1)
        ax.set(
            title=f"Cumulative lift: {_title(head)}",
            xlabel="% of users targeted (highest scores first)",
            ylabel="positive rate / base rate",
        )
        ax.legend(loc="upper right", fontsize=8)
    _save(fig, path)


def plot_scores(data: ReportData, rows: npt.NDArray[np.bool_], path: Path) -> None:
    fig, axes = _axes(len(data.heads))
    s = data.scores[data.primary]
    bins = np.linspace(0, 1, 41)
    for h, head in enumerate(data.heads):
        ax = axes[0, h]
        y = data.labels[rows, h]
        p = s[rows, h]
        n_neg, n_pos = int((y == 0).sum()), int((y == 1).sum())
        ax.hist(p[y == 0], bins=bins, alpha=0.6, color="#7a8ca3", label=f"outcome did not happen (n={n_neg:,})")
        ax.hist(p[y == 1], bins=bins, alpha=0.6, color="#c0392b", label=f"outcome happened (n={n_pos:,})")
        ax.set(
            title=f"{data.scorer_titles[data.primary]}: {_title(head)} scores",
            xlabel="predicted probability",
            ylabel="users",
        )
        ax.legend(loc="upper center", fontsize=8)
    _save(fig, path)


def plot_stages(data: ReportData, path: Path) -> None:
    order = [g for g in data.group_order if (data.groups == g).any()]
    fig, axes = plt.subplots(1, 1 + len(data.heads), figsize=(5.2 * (1 + len(data.heads)), 4.0), squeeze=False)
    counts = [int((data.groups == g).sum()) for g in order]
    ax = axes[0, 0]
    bars = ax.bar(order, counts, color="#5d6d7e")
    ax.bar_label(bars, labels=[f"{c:,}" for c in counts], fontsize=8)
    ax.set(title="Users per stage at the as-of date", ylabel="users")
    x = np.arange(len(order))
    for h, head in enumerate(data.heads):
        ax = axes[0, 1 + h]
        obs = [float(data.labels[data.groups == g, h].mean()) for g in order]
        ax.bar(x - 0.2, obs, width=0.4, color="#7a8ca3", label="observed rate")
        for j, (name, s) in enumerate(data.scores.items()):
            pred = [float(s[data.groups == g, h].mean()) for g in order]
            ax.scatter(
                x + 0.2 + 0.06 * (j - 1),
                pred,
                color=_COLORS.get(name),
                zorder=3,
                s=28,
                marker="D" if name == data.primary else "o",
                label=f"{data.scorer_titles[name]} (mean)",
            )
        ax.set_xticks(x, order)
        ax.set(title=f"{_title(head)} by stage: observed vs predicted", ylabel="rate", ylim=(0, 1.05))
        ax.legend(loc="best", fontsize=8)
    _save(fig, path)


# --------------------------------------------------------------------------- page


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:.4f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return html.escape(str(v))


def _metric_table(data: ReportData, seg_metrics: dict[str, Any]) -> str:
    rows = []
    head_cells = "".join(f"<th>{k.replace('_', ' ')}</th>" for k in COMPARED)
    rows.append(f"<tr><th>head</th><th>scorer</th>{head_cells}<th>mean score / rate</th></tr>")
    for head, per in seg_metrics.items():
        best = {}
        for k in COMPARED:
            vals = {name: m[k] for name, m in per.items()}
            best[k] = (min if k in LOWER_IS_BETTER else max)(vals, key=lambda n, v=vals: v[n])  # type: ignore[misc]
        for i, (name, m) in enumerate(per.items()):
            cells = "".join(f"<td class='{'best' if best[k] == name else ''}'>{_fmt(m[k])}</td>" for k in COMPARED)
            label = f"<td rowspan='{len(per)}'>{html.escape(_title(head))}</td>" if i == 0 else ""
            rows.append(
                f"<tr>{label}<td>{html.escape(data.scorer_titles[name])}</td>{cells}"
                f"<td>{m['mean_score']:.3f} / {m['positive_rate']:.3f}</td></tr>"
            )
    return "<table class='metrics'>" + "".join(rows) + "</table>"


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1180px;color:#222;
padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f6f8} td:first-child,td:nth-child(2){text-align:left}
table.meta td{text-align:left} td.best{font-weight:700;background:#e8f3ea}
img{max-width:100%;border:1px solid #eee;margin:.4em 0} .verdict{font-size:1.1em}
.ok{color:#1e7b34;font-weight:600} .bad{color:#b03a2e;font-weight:600} p.note{color:#444;max-width:70em}
"""

_CAPTIONS = {
    "roc.png": "ROC curves: how well each scorer ranks users who will churn / order above those who will not.",
    "calibration.png": "Calibration: users grouped into equal-width probability bins; a calibrated scorer lies on the "
    "diagonal (predicted = observed). Bars: share of users in each bin.",
    "lift.png": "Cumulative lift: if you target the top x% of users by score, how many times the base rate of the "
    "outcome you reach.",
    "pr.png": "Precision-recall curves (average precision in the legend).",
    "scores.png": "The model's score distribution for users whose outcome did and did not happen: the less the two "
    "overlap, the better the separation.",
    "stages.png": "Lifecycle stages at the as-of date, and per stage the observed outcome rate next to each scorer's "
    "mean prediction.",
}


def write_report(data: ReportData, out_dir: Path, *, title: str, headline: str = "all") -> dict[str, Any]:
    """Write ``metrics.json``, the PNG figures and ``report.html`` to ``out_dir``; return the metrics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = compute_metrics(data)
    result = {"meta": data.meta, "headline_segment": headline, **metrics}
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2, sort_keys=True, default=float) + "\n")
    rows = data.segments[headline]
    plot_roc(data, rows, out_dir / "roc.png")
    plot_calibration(data, rows, out_dir / "calibration.png")
    plot_lift(data, rows, out_dir / "lift.png")
    plot_pr(data, rows, out_dir / "pr.png")
    plot_scores(data, rows, out_dir / "scores.png")
    plot_stages(data, out_dir / "stages.png")
    (out_dir / "report.html").write_text(_page(data, metrics, title, headline))
    return result


def _page(data: ReportData, metrics: dict[str, Any], title: str, headline: str) -> str:
    meta_rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_fmt(v)}</td></tr>" for k, v in data.meta.items())
    verdicts = []
    for head, wins in metrics["primary_beats_baselines"][headline].items():
        won = all(wins.values())
        lost = [k for k, v in wins.items() if not v]
        e = metrics["segments"][headline][head][data.primary]["ece"]
        cal_ok = e <= ECE_LIMIT
        text = (
            "beats both baselines on ROC-AUC, PR-AUC, log-loss, Brier and lift at 10%"
            if won
            else f"does not beat every baseline on: {', '.join(lost)}"
        )
        text += f"; calibration error {e:.3f} ({'within' if cal_ok else 'above'} the {ECE_LIMIT} limit)"
        cls = "ok" if won and cal_ok else "bad"
        verdicts.append(f"<li><span class='{cls}'>{html.escape(_title(head))}</span>: {html.escape(text)}</li>")
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f"<table class='meta'>{meta_rows}</table>",
        f"<h2>Headline: {html.escape(data.segment_titles[headline])}</h2>",
        f"<ul class='verdict'>{''.join(verdicts)}</ul>",
        _metric_table(data, metrics["segments"][headline]),
        *(f"<p class='note'>{html.escape(n)}</p>" for n in data.notes),
    ]
    for name in FIGURES:
        sections.append(f"<h2>{html.escape(name[:-4].title())}</h2><p class='note'>{html.escape(_CAPTIONS[name])}</p>")
        sections.append(f"<img src='{name}' alt='{name[:-4]}'>")
    for seg, per in metrics["segments"].items():
        if seg != headline:
            sections.append(f"<h2>Segment: {html.escape(data.segment_titles[seg])}</h2>")
            sections.append(_metric_table(data, per))
    sections.append(
        "<p class='note'>Best value per metric highlighted. ECE: 10 equal-width probability bins, weighted by "
        "users per bin. Lift at 10%: outcome rate among the 10% highest scores over the base rate (ties shared). "
        "Definitions and the design of this holdout: docs/model.md.</p>"
    )
    body = "\n".join(sections)
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n"
    )
