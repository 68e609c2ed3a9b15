"""The walk-forward report: equity curves and drawdowns as PNG, and an HTML page with the comparison
table, the per-fold table and the audits."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and in tests
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402

from crypto_pipeline.backtest.audits import AuditResult  # noqa: E402
from crypto_pipeline.backtest.walkforward import WalkForwardReport  # noqa: E402


def plot_equity(report: WalkForwardReport, out: Path) -> Path:
    """Stitched out-of-sample equity (growth of 1) and drawdown of every policy, fold starts marked."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True, height_ratios=(2, 1))
    for policy in report.policies():
        returns = report.stitched(policy)
        equity = (1 + returns).cumprod()
        top.plot(equity.index, equity.to_numpy(), label=policy, lw=1.2)
        bottom.plot(equity.index, (equity / equity.cummax() - 1).to_numpy() * 100, lw=1.0)
    for fold in report.folds:
        for ax in (top, bottom):
            ax.axvline(fold.test_start, color="grey", lw=0.6, ls=":")
    top.set_ylabel("equity (growth of 1)")
    top.set_title("Walk-forward, out of sample (folds stitched; each fold starts from cash)")
    top.legend(loc="best", fontsize=8)
    bottom.set_ylabel("drawdown %")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _html_table(frame: pl.DataFrame) -> str:
    return frame.to_pandas().to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0)


def write_report(
    report: WalkForwardReport,
    out_dir: Path,
    audits: Sequence[AuditResult] = (),
    extra: str = "",
    stem: str = "walk_forward",
) -> dict[str, Path]:
    """`<stem>.html` and `<stem>.png` in `out_dir` (a backtest run names its own stem: one file per run)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png = plot_equity(report, out_dir / f"{stem}.png")
    audit_rows = "".join(
        f"<tr><td>{html.escape(a.name)}</td><td>{'pass' if a.passed else 'FAIL'}</td>"
        f"<td>{html.escape(a.detail)}</td></tr>"
        for a in audits
    )
    folds = pl.DataFrame([f.as_dict() for f in report.folds])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Walk-forward report</title></head>
<body><h1>Walk-forward report</h1><p>{html.escape(extra)}</p>
<img src="{png.name}" alt="equity and drawdowns">
<h2>Policies (stitched out-of-sample)</h2>{_html_table(report.table())}
<h2>Folds</h2>{_html_table(folds)}
<h2>Per fold</h2>{_html_table(report.per_fold())}
<h2>Audits</h2><table><tr><th>audit</th><th>result</th><th>detail</th></tr>{audit_rows}</table>
</body></html>"""
    page_path = out_dir / f"{stem}.html"
    page_path.write_text(page)
    return {"png": png, "html": page_path}
