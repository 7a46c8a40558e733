"""Pictures and pages for a simulation: a quality-vs-energy PNG and a self-contained HTML report."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from .metrics import pareto_front
from .simulator import RunStats, SimulationResult

_BASELINE_STYLE = {
    "always-small": ("s", "#6b7280"),
    "always-large": ("D", "#b91c1c"),
    "always-best": ("v", "#be185d"),
    "random (matched share)": ("X", "#a16207"),
    "oracle": ("P", "#15803d"),
}


def best_single_lines(result: SimulationResult) -> list[str]:
    """One line per set of measured models: always-best's pick on those rows, labelled by the rows' sources
    (``mmlu``, ``alpaca_eval``, ``chat``): with several sources each measured on its own models, always-best is a
    different model on each, and a reader must see which is which."""
    out = []
    for models, best in result.best_single.items():
        scope = result.best_single_rows.get(models, {})
        sources = ", ".join(scope.get("sources", ())) or "?"
        names = models.split("+")
        rows = f"{scope['rows']:,} " if "rows" in scope else ""
        out.append(f"always-best on the {rows}{sources} rows: {best} (best mean score of the {len(names)} models "
                   f"measured there: {', '.join(names)})")
    return out


def _best_label(result: SimulationResult) -> str:
    """The plot legend's always-best entry: with several sources, each one's pick (its sources joined by ``+``)."""
    if len(result.best_single) < 2:
        return "always-best"
    picks = [f"{best} on {'+'.join(result.best_single_rows.get(models, {}).get('sources', ())) or '?'}"
             for models, best in result.best_single.items()]
    return "always-best: " + ",\n".join(picks)  # a pick a line: one wide entry pushed the legend off the figure


def _fig(result: SimulationResult, title: str | None = None):  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    carbon = result.router.co2e_g_total is not None
    if carbon:
        fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(18, 6.6), gridspec_kw={"width_ratios": [3, 2, 2]})
        _carbon_panel(cx, result)
    else:
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 6.6), gridspec_kw={"width_ratios": [3, 2]})
    # -- left: quality vs energy ---------------------------------------------------------------------------
    th = result.threshold_sweep
    ax.plot(
        [p.energy_j_per_request for p in th], [100 * p.accuracy for p in th], "-", color="#9ca3af", lw=1.5,
        label="plain threshold router (τ = 0…1)", zorder=1,
    )
    if result.sweep:
        sw = sorted(result.sweep, key=lambda p: p.energy_j_per_request)
        ax.plot(
            [p.energy_j_per_request for p in sw], [100 * p.accuracy for p in sw], "o-", color="#2563eb", ms=3.5,
            lw=1.5, label=f"policy `{result.policy}`, accuracy target swept", zorder=2,
        )
    pts: list[RunStats] = [result.router, *result.baselines.values(), *result.sweep, *th]
    real = [p for p in pts if p.name != "oracle"]
    front = pareto_front([p.energy_j_per_request for p in real], [p.accuracy for p in real])
    fx = [real[i].energy_j_per_request for i in front]
    fy = [100 * real[i].accuracy for i in front]
    ax.plot(fx, fy, color="black", lw=5, alpha=0.18, solid_capstyle="round",
            label="Pareto frontier (all points but the oracle)", zorder=0)
    for name, p in result.baselines.items():
        marker, color = _BASELINE_STYLE.get(name, ("^", "#7c3aed"))
        ax.scatter(p.energy_j_per_request, 100 * p.accuracy, marker=marker, s=110, color=color, zorder=4,
                   edgecolor="white", label=_best_label(result) if name == "always-best" else name)
    r = result.router
    ax.scatter(r.energy_j_per_request, 100 * r.accuracy, marker="*", s=320, color="#2563eb", edgecolor="black",
               zorder=5, label=f"policy `{result.policy}` ({100 * r.quality_vs_large:.1f} % quality, "
               f"{100 * r.energy_vs_large:.1f} % energy of always-large; {100 * r.quality_vs_best:.1f} % / "
               f"{100 * r.energy_vs_best:.1f} % of always-best)")
    energies = [p.energy_j_per_request for p in pts if p.energy_j_per_request > 0]
    if energies and max(energies) / max(min(energies), 1e-12) > 30:
        ax.set_xscale("log")
    ax.set_xlabel("energy per request (J)" + (", log scale" if ax.get_xscale() == "log" else ""))
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    ax.set_title("quality vs energy", fontsize=11)
    # -- right: where requests and joules went --------------------------------------------------------------
    rows = [("requests", result.router.share_requests), ("energy", result.router.share_energy)]
    shown = _main_models(result.models, [share for _, share in rows])
    colors = [plt.get_cmap("tab10")(j % 10) for j in range(len(shown))]
    for k, (_, share) in enumerate(rows):
        left = 0.0
        parts: list[tuple[str, float, tuple[float, float, float, float] | str]] = [
            (m, 100 * share.get(m, 0.0), colors[j]) for j, m in enumerate(shown)]
        rest = len(result.models) - len(shown)
        if rest:
            parts.append((f"{rest} other models", 100 * sum(share.get(m, 0.0) for m in result.models
                                                            if m not in shown), "#d1d5db"))
        for label, v, bar_color in parts:
            bx.barh(k, v, left=left, color=bar_color, edgecolor="white", label=label if k == 0 else None)
            if v >= 6:
                bx.text(left + v / 2, k, f"{v:.0f} %", ha="center", va="center", fontsize=9)
            left += v
    bx.set_yticks([0, 1], [f"share of\n{label}" for label, _ in rows])
    bx.invert_yaxis()
    bx.set_xlim(0, 100)
    bx.set_xlabel("%")
    bx.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    bx.set_title(f"policy `{result.policy}`:\nwhere requests and joules went", fontsize=11)
    fig.suptitle(title or f"router simulate — {Path(result.outcomes).name}: {result.requests:,} requests",
                 fontsize=12)
    fig.tight_layout()
    return fig


def _main_models(models: list[str], shares: list[dict[str, float]], most: int = 8) -> list[str]:
    """The models a share bar names (in the data's order): all of them when few, else the ``most`` with the largest
    share of requests or of joules; a legend of 48 names squeezed the chart to a strip."""
    if len(models) <= most:
        return list(models)
    weight = {m: max(s.get(m, 0.0) for s in shares) for m in models}
    keep = set(sorted(models, key=lambda m: -weight[m])[:most])
    return [m for m in models if m in keep and weight[m] > 0] or list(models[:most])


def _carbon_panel(cx, result: SimulationResult) -> None:  # noqa: ANN001
    """Grams CO2e per request of the policy and each baseline, at the replayed series' intensities."""
    runs = [result.router, *result.baselines.values()]
    names = [r.name + (" (policy)" if r is result.router else "") for r in runs]
    values = [r.co2e_g_per_request or 0.0 for r in runs]
    colors = ["#2563eb"] + [_BASELINE_STYLE.get(r.name, ("^", "#7c3aed"))[1] for r in runs[1:]]
    cx.barh(range(len(runs)), values, color=colors)
    cx.set_yticks(range(len(runs)), names, fontsize=8)
    cx.invert_yaxis()
    for i, v in enumerate(values):
        cx.text(v, i, f" {v:.3g}", va="center", fontsize=8)
    info = result.carbon or {}
    cx.set_xlabel(f"g CO2e per request ({info.get('series', '')}, mean {info.get('mean_g_per_kwh') or 0:.0f} g/kWh)")
    cx.set_title("carbon per request", fontsize=11)
    cx.grid(alpha=0.3, axis="x")


def plot_png(result: SimulationResult, path: str | Path | None = None, title: str | None = None) -> bytes:
    """Render the plot; write it to ``path`` when given; return the PNG bytes."""
    import matplotlib.pyplot as plt

    fig = _fig(result, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    data = buf.getvalue()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    return data


def _pct(x: float) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{100 * x:.1f} %"


def stats_header(result: SimulationResult) -> list[str]:
    return STATS_HEADER + ([] if result.router.co2e_g_total is None else ["g CO2e / request"])


def stats_rows(result: SimulationResult) -> list[list[str]]:
    """Router + baselines as table rows: name, accuracy, quality and energy vs always-large and vs always-best,
    J/request, share sent to the largest model."""
    out = []
    for p in [result.router, *result.baselines.values()]:
        out.append([
            p.name + (" (policy)" if p is result.router else ""),
            _pct(p.accuracy),
            _pct(p.quality_vs_large),
            _pct(p.quality_vs_best),
            f"{p.energy_j_per_request:,.3g}",
            _pct(p.energy_vs_large),
            _pct(p.energy_vs_best),
            _pct(p.large_share),
            *([] if result.router.co2e_g_total is None else [f"{p.co2e_g_per_request:.3g}"]),
        ])
    return out


STATS_HEADER = ["router", "accuracy", "quality vs always-large", "quality vs always-best", "J / request",
                "energy vs always-large", "energy vs always-best", "to largest model"]


SEGMENT_HEADER = ["segment", "requests", "accuracy", "always-large accuracy", "J / request",
                  "always-large J / request"]


def segment_rows(result: SimulationResult) -> list[list[str]]:
    """The policy per workload segment (the part of ``task`` before ``/``), beside always-large on the same rows:
    on a file that mixes workloads the totals can hide a segment where the policy does badly."""
    return [
        [seg, f"{int(v['requests']):,}", _pct(v["accuracy"]), _pct(v["large_accuracy"]),
         f"{v['energy_j_per_request']:,.3g}", f"{v['large_energy_j_per_request']:,.3g}"]
        for seg, v in result.router.by_segment.items()
    ]


def write_html(result: SimulationResult, path: str | Path, png: bytes | None = None) -> None:
    png = png if png is not None else plot_png(result)
    img = base64.b64encode(png).decode("ascii")
    esc = html.escape

    def table(header: list[str], rows: list[list[str]]) -> str:
        th = "".join(f"<th>{esc(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"

    parts = [
        f"<h1>Simulation: policy <code>{esc(result.policy)}</code> on <code>{esc(result.outcomes)}</code></h1>",
        f"<p>{result.requests:,} requests ({result.distinct_prompts:,} distinct prompts), models: "
        f"{esc(', '.join(result.models))}; classifier: {esc(result.classifier)}. "
        f"Skipped lines: {result.skipped}.</p>",
        f'<img alt="quality vs energy" src="data:image/png;base64,{img}">',
        "<h2>Policy and baselines</h2>",
        table(stats_header(result), stats_rows(result)),
        "<ul>" + "".join(f"<li>{esc(line)}</li>" for line in best_single_lines(result)) + "</ul>",
        "<h2>Share per model (policy)</h2>",
        table(
            ["model", "share of requests", "share of energy"],
            [[m, _pct(result.router.share_requests[m]), _pct(result.router.share_energy[m])] for m in result.models],
        ),
    ]
    if result.router.by_segment:
        parts += ["<h2>By workload segment (policy)</h2>", table(SEGMENT_HEADER, segment_rows(result))]
    rm = result.routing_metrics
    if rm and "policy_sweep" in rm:
        rows = [[name, f"{rm[key]['apgr']:.3f}", _pct(rm[key]["cpt50"]), _pct(rm[key]["cpt80"])]
                for name, key in (("policy, accuracy target swept", "policy_sweep"),
                                  (f"classifier score {rm['classifier_score']['score']}", "classifier_score"),
                                  ("random", "random"), ("oracle", "oracle"))]
        parts += [
            f"<h2>Routing metrics ({esc(rm['weak'])} → {esc(rm['strong'])})</h2>",
            table(["router", "APGR", "CPT(50 %)", "CPT(80 %)"], rows),
        ]
    if result.sweep:
        parts += [
            "<h2>Accuracy target sweep</h2>",
            table(
                ["target", "accuracy", "quality vs always-large", "quality vs always-best", "J / request",
                 "energy vs always-large", "energy vs always-best"],
                [[f"{p.target:g}", _pct(p.accuracy), _pct(p.quality_vs_large), _pct(p.quality_vs_best),
                  f"{p.energy_j_per_request:,.3g}", _pct(p.energy_vs_large), _pct(p.energy_vs_best)]
                 for p in result.sweep],
            ),
        ]
    parts += ["<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in result.notes) + "</ul>"]
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#111}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ddd;padding:4px 10px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}th{background:#f3f4f6}img{max-width:100%}"
    )
    doc = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>router simulate: {esc(result.policy)}</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(doc, encoding="utf-8")
