"""Self-contained static HTML reports: one page per run and an index across runs.

Every picture is embedded as a base64 ``data:`` URI and the styling is
inline, so a page opens from disk with no server, no network and no
JavaScript. A page shows what is there and says what is not, results first:
distilled grid, evaluation tables (eval.json of the run and of baseline
selections, cross-model matrices), meta-loss curve (metrics.jsonl), the PCA
and neighbour panels of ``lgm pca`` / ``lgm neighbors`` (``<run>/analysis``),
provenance, and last the config, folded in a ``<details>`` element (it opens
without JavaScript).
"""

from __future__ import annotations

import base64
import html
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from lgm.errors import LgmError, UsageError

# The order of a run page: what the run produced first, how it was configured last.
SECTIONS = ("images", "evaluation", "loss", "pca", "neighbors", "provenance", "config")

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
td, th { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } img { max-width: 100%; image-rendering: pixelated; }
.missing { color: #888; font-style: italic; } code { background: #f5f5f5; padding: 0 .2em; }
.thumb { max-width: 360px; } summary { cursor: pointer; color: #555; }
"""


def data_uri(png: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(png).decode('ascii')}"


def img_tag(png: bytes, alt: str, cls: str = "") -> str:
    extra = f' class="{cls}"' if cls else ""
    return f'<img src="{data_uri(png)}" alt="{html.escape(alt)}"{extra}>'


def esc(v) -> str:
    return html.escape(str(v))


def table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def missing(text: str) -> str:
    return f'<p class="missing">{esc(text)}</p>'


def pct(summary_or_value) -> str:
    if summary_or_value is None:
        return ""
    if isinstance(summary_or_value, dict):
        return f"{summary_or_value['mean'] * 100:.1f} ± {summary_or_value.get('std', 0) * 100:.1f}"
    return f"{summary_or_value * 100:.1f}"


def read_json_or_none(path: Path) -> dict | None:
    """The JSON object in ``path``; None when it is missing, unreadable or not an object (every file lgm writes is)."""
    try:
        obj = json.loads(path.read_bytes().decode("utf-8")) if path.is_file() else None
    except (OSError, ValueError):  # ValueError: torn JSON or non-UTF-8 bytes
        return None
    return obj if isinstance(obj, dict) else None


def loss_curve_png(metrics: list[dict]) -> bytes | None:
    """The meta loss per step (and a running mean) as PNG bytes; None without metrics or matplotlib."""
    if not metrics:
        return None
    try:
        from lgm.analysis.plotting import pyplot

        plt = pyplot()
    except LgmError:
        return None
    steps = [m["step"] for m in metrics]
    loss = [m["loss"] for m in metrics]
    w = max(1, len(loss) // 50)
    smooth = [sum(loss[max(0, i - w + 1):i + 1]) / len(loss[max(0, i - w + 1):i + 1]) for i in range(len(loss))]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(steps, loss, lw=0.6, alpha=0.4, label="meta loss")
    ax.plot(steps, smooth, lw=1.5, label=f"running mean ({w} steps)")
    levels = [m.get("levels") for m in metrics]
    for i in range(1, len(levels)):
        if levels[i] != levels[i - 1]:
            ax.axvline(steps[i], color="grey", lw=0.5, ls=":")
    ax.set_xlabel("step")
    ax.set_ylabel("1 - cos(g_real, g_syn)")
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def grid_png(run: Path, artifact) -> bytes | None:
    if (run / "grid.png").is_file():
        return (run / "grid.png").read_bytes()
    if artifact is None:
        return None
    from lgm.grid import grid_image

    buf = io.BytesIO()
    grid_image(artifact.images, artifact.labels, artifact.class_names).save(buf, format="PNG")
    return buf.getvalue()


def eval_rows(stored: dict, label: str) -> list[list]:
    rows = []
    for key, r in sorted((stored or {}).items()):
        if not isinstance(r, dict) or "top1" not in r:
            continue
        backbone, _, protocol = key.partition("/")
        rows.append([label, backbone, protocol, pct(r["top1"]), pct(r.get("top5")), pct(r.get("nn1")),
                     pct(r.get("worst_group_top1")) if r.get("worst_group_top1") else ""])
    return rows


def crossmodel_table(cm: dict) -> str:
    cols = cm.get("backbones") or []
    rows = []
    for r in cm.get("rows", []):
        cells = [pct(r["top1"].get(b)) + (" (same)" if b == r.get("distilled_with") else "") for b in cols]
        nn = [pct(r.get("nn1", {}).get(b)) for b in cols] if r.get("nn1") else [""] * len(cols)
        rows.append([r["artifact"], r.get("distilled_with"), *cells, pct(r.get("cross_model_mean")), *nn])
    header = ["artifact", "distilled with", *(f"top-1 on {b}" for b in cols), "cross-model mean",
              *(f"1-NN on {b}" for b in cols)]
    return table(header, rows)


@dataclass(frozen=True)
class ReportConfig:
    """Static HTML reports (images embedded, no network, no JavaScript): one page per run and index.html."""

    out: str = "runs/report"
    """Directory receiving <run>.html per run and index.html."""
    crossmodel: tuple[str, ...] = ()
    """crossmodel.json files to show (rows of other artifacts too: the whole matrix)."""
    baselines: tuple[str, ...] = ()
    """Directories written by `lgm baselines` (their selections' eval.json are tabulated)."""


def run_page(run: Path, cfg: ReportConfig) -> tuple[str, dict]:
    """The HTML of one run's page and a summary row for the index."""
    from lgm.artifacts import DistilledSet
    from lgm.version import __version__

    if not run.exists():
        raise LgmError(f"{run} does not exist")
    run_dir = run if run.is_dir() else run.parent
    try:
        artifact = DistilledSet.load(run)
    except LgmError:
        artifact = None
    config = read_json_or_none(run_dir / "config.json") or (artifact.meta.get("config") if artifact else None)
    if artifact is None and config is None:
        raise LgmError(f"{run} holds neither a distilled artifact nor a config.json: not a run directory")
    meta = artifact.meta if artifact else {}
    config = config or {}
    from lgm.rundir import RunDir

    metrics = RunDir(run_dir).read_metrics()  # every valid line (a torn one, as a killed run leaves, skipped)
    title = f"{run_dir.name}: {meta.get('dataset', config.get('dataset', '?'))} on " \
            f"{meta.get('backbone', config.get('backbone', '?'))}"
    sections: dict[str, str] = {}

    # Provenance.
    wf = meta.get("weights_file") if isinstance(meta.get("weights_file"), dict) else {}
    weights = (f"{wf.get('path')} (sha256 {wf.get('sha256')})" if wf else config.get("weights")
               or ("random init" if meta.get("random_init") else "the backbone's installed default"))
    prov = [["run", str(run)], ["dataset", meta.get("dataset", config.get("dataset", ""))],
            ["data root", config.get("data_root") or "default ($LGM_DATA_ROOT or the dataset's standard place)"],
            ["backbone", meta.get("backbone", config.get("backbone", ""))], ["weights", weights],
            ["random-init backbone", meta.get("random_init", config.get("random_init", ""))],
            ["normalization", config.get("normalization", "")],
            ["images", f"{len(artifact.labels)} ({artifact.meta.get('ipc', config.get('ipc', '?'))} per class), "
                       f"{'x'.join(map(str, artifact.images.shape[1:]))}" if artifact else "not finished"],
            ["config hash", meta.get("config_hash", "")], ["lgm version (run)", meta.get("lgm_version", "")],
            ["lgm version (report)", __version__],
            ["distillation time", f"{meta['seconds']:.0f} s" if "seconds" in meta else ""],
            ["command line", meta.get("command_line", "not recorded")]]
    sections["provenance"] = '<h2 id="provenance">Provenance</h2>' + table(["", ""], prov)

    sections["config"] = '<h2 id="config">Config</h2>' + (
        f"<details><summary>the resolved configuration ({len(config)} keys)</summary>"
        + table(["key", "value"], [[k, json.dumps(v)] for k, v in sorted(config.items())]) + "</details>"
        if config else missing("no config.json"))
    png = loss_curve_png(metrics)
    final = metrics[-1]["loss"] if metrics else None
    sections["loss"] = '<h2 id="loss">Meta loss</h2>' + (
        img_tag(png, "meta loss per step") + f"<p>{len(metrics)} steps logged; last loss {final:.4f}.</p>" if png
        else missing("no metrics.jsonl (or matplotlib is not installed)"))
    grid = grid_png(run_dir, artifact)
    sections["images"] = '<h2 id="images">Distilled images</h2>' + (img_tag(grid, "distilled images") if grid
                                                                  else missing("no distilled images yet"))

    # Evaluation: the run's own eval.json, baselines, cross-model matrices.
    rows = eval_rows(read_json_or_none(run_dir / "eval.json"), "distilled")
    for b in cfg.baselines:
        bdir = Path(b)
        if not bdir.is_dir():
            raise LgmError(f"--baselines {b} is not a directory")
        for sub in sorted(p for p in bdir.iterdir() if p.is_dir()):
            rows += eval_rows(read_json_or_none(sub / "eval.json"), sub.name)
    header = ["images", "backbone", "protocol", "top-1 (%)", "top-5 (%)", "1-NN (%)", "worst group (%)"]
    evaluation = table(header, rows) if rows else missing("no eval.json: run lgm eval on the run (and baselines)")
    for c in cfg.crossmodel:
        cm = read_json_or_none(Path(c))
        if cm is None or "rows" not in cm:
            raise LgmError(f"--crossmodel {c} is not a readable crossmodel.json")
        evaluation += f"<h3>Cross-model ({esc(c)})</h3>" + crossmodel_table(cm)
    sections["evaluation"] = '<h2 id="evaluation">Evaluation</h2>' + evaluation

    analysis = run_dir / "analysis"
    pca = read_json_or_none(analysis / "pca.json")
    if (analysis / "pca.png").is_file():
        text = ""
        if pca:
            text = (f"<p>Distilled embeddings lie on average {pca['mean_distance_in_spreads']:.2f} class spreads "
                    f"from their class centroid; {pca['mean_fraction_of_class_closer'] * 100:.0f}% of a class's "
                    f"real images are closer to it ({pca['real_images']} real images, {esc(pca['backbone'])}).</p>")
            text += table(["image", "class", "distance (spreads)", "class closer (%)"],
                          [[d["index"], d["class"], f"{d['distance_in_spreads']:.2f}",
                            f"{d['fraction_of_class_closer'] * 100:.0f}"] for d in pca["distilled"]])
        sections["pca"] = ('<h2 id="pca">PCA of embeddings</h2>' + img_tag((analysis / "pca.png").read_bytes(), "PCA")
                           + text)
    else:
        sections["pca"] = '<h2 id="pca">PCA of embeddings</h2>' + missing(f"not computed: lgm pca {run}")
    nb = read_json_or_none(analysis / "neighbors.json")
    if (analysis / "neighbors.png").is_file():
        text = (f"<p>Top: distilled; bottom: the nearest real training image (cosine, {esc(nb['backbone'])}, "
                f"{nb['searched_images']} images searched); mean cosine {nb['mean_cosine']:.3f}.</p>") if nb else ""
        sections["neighbors"] = ('<h2 id="neighbors">Nearest real neighbours</h2>' +
                                 img_tag((analysis / "neighbors.png").read_bytes(), "nearest real neighbours") + text)
    else:
        sections["neighbors"] = ('<h2 id="neighbors">Nearest real neighbours</h2>'
                                 + missing(f"not computed: lgm neighbors {run}"))

    parts = [f"<h1>{esc(title)}</h1>"] + [sections[name] for name in SECTIONS]

    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
    own = f"{meta.get('backbone')}/spec"
    own_eval = (read_json_or_none(run_dir / "eval.json") or {}).get(own)
    summary = {"title": title, "dataset": meta.get("dataset", config.get("dataset")),
               "backbone": meta.get("backbone", config.get("backbone")), "steps": len(metrics),
               "final_loss": final, "top1": pct(own_eval["top1"]) if own_eval else "", "grid": grid}
    return page, summary


def write_reports(runs: tuple[str, ...], cfg: ReportConfig, log=None) -> list[Path]:
    """One page per run plus index.html in ``cfg.out``; returns the pages' paths (index last)."""
    from lgm.analysis.export import safe_name
    from lgm.artifacts import atomic_write_text

    log = log or (lambda m: print(f"lgm report: {m}", file=sys.stderr, flush=True))
    if not runs:
        raise UsageError("name at least one run directory")
    out = Path(cfg.out)
    pages, rows, used = [], [], set()
    for run in runs:
        page, summary = run_page(Path(run), cfg)
        name = safe_name(Path(run).resolve().name)
        stem, i = name, 1
        while name in used:
            i += 1
            name = f"{stem}_{i}"
        used.add(name)
        path = out / f"{name}.html"
        atomic_write_text(path, page)
        pages.append(path)
        log(f"{run} -> {path}")
        rows.append((path.name, summary))
    body = ["<h1>lgm runs</h1><table><tr><th>run</th><th>dataset</th><th>backbone</th><th>steps</th>"
            "<th>last meta loss</th><th>top-1 (own backbone, %)</th><th>images</th></tr>"]
    for href, s in rows:
        thumb = img_tag(s["grid"], "grid", "thumb") if s["grid"] else ""
        loss = f"{s['final_loss']:.4f}" if s["final_loss"] is not None else ""
        body.append(f'<tr><td><a href="{esc(href)}">{esc(s["title"])}</a></td><td>{esc(s["dataset"])}</td>'
                    f'<td>{esc(s["backbone"])}</td><td>{s["steps"]}</td><td>{loss}</td><td>{esc(s["top1"])}</td>'
                    f"<td>{thumb}</td></tr>")
    body.append("</table>")
    index = out / "index.html"
    atomic_write_text(index, "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>lgm runs</title>"
                      f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")
    return pages + [index]
