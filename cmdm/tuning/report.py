"""The sweep's report (report/): index.html, one self-contained page people open, and the pictures it embeds.

    report/index.html          the trials sorted by the metric (targets met, how each ended, params, diagnoses,
                               lineage), the curves, parameters vs metric, Optuna's parameter importances, the
                               doctor's diagnoses and the best trial's motions with their full captions
    report/curves.png          metric and loss per trial
    report/params_vs_<metric>.png   the best metric against each searched key
    report/best_trial/*.gif    the best trial's model on a few test captions (+ captions.json)

Every image is embedded in the page as a data URI and the page fetches nothing (its Content-Security-Policy
forbids it), so the one file opens from disk or as a mail attachment. `LiveReport` rewrites the page (without
the GIFs, which need the model) each time a trial ends; run.py writes it whole when the sweep ends.
"""
from __future__ import annotations

import base64
import html
import json
import math
import os
import textwrap
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pandas as pd
import torch
from ray import tune

from matplotlib.figure import Figure

from cmdm.atomic import atomic_write_text
from cmdm.data.humanml3d import collate, dataset_from_config
from cmdm.evaluation.generate import load_for_evaluation
from cmdm.evaluation.metrics import LOWER_IS_BETTER
from cmdm.run_files import SweepFiles
from cmdm.skeleton import recover_from_ric
from cmdm.tuning.doctor import RULES, explain
from cmdm.tuning.space import fork_source, format_value
from cmdm.tuning.summary import summarise
from cmdm.tuning.sweep_file import Sweep
from cmdm.viz import TITLE_LINES, TITLE_WIDTH, save_gif

METRICS = ("fid", "top1", "top2", "top3", "mm_dist")
LINEAGE = ("parent", "forked_at_step", "remedy")   # keys a row has when its trial continued another one


def make_report(sweep: Sweep, summary: dict, num_gifs: int = 3, samples: bool = True) -> Path:
    """curves.png, params_vs_<metric>.png, best_trial/*.gif (with samples) and index.html."""
    files = SweepFiles(sweep.sweep_dir)
    out = files.report
    out.mkdir(parents=True, exist_ok=True)
    draw_curves(sweep, summary["trials"], out / "curves.png")
    draw_params(sweep, summary["trials"], out / f"params_vs_{sweep.metric}.png")
    best = summary.get("best_trial")
    if samples and best and files.trial(best).best.is_file():
        try:
            gifs = render_samples(files.trial(best).best, out / "best_trial", num_gifs)
            atomic_write_text(out / "best_trial" / "captions.json", json.dumps(
                {"trial": best, "samples": [{"gif": p.name, "caption": c} for p, c in gifs]}, indent=1) + "\n")
        except Exception as exc:  # the page says there are no GIFs; never lose the page over them
            print(f"[report] could not draw the best trial's GIFs: {exc}", flush=True)
    write_page(sweep, summary, out, final=samples)
    return out


def draw_curves(sweep: Sweep, trials: list[dict], path: Path) -> None:
    fig = Figure(figsize=(12, 4.5))
    ax1, ax2 = fig.subplots(1, 2)
    for r in trials:
        ev = [h for h in r["history"] if h.get(sweep.metric) is not None]
        ev = {h["evaluations"]: h for h in ev if h.get("evaluations")}
        if ev:
            ax1.plot(list(ev), [h[sweep.metric] for h in ev.values()], marker="o", label=r["trial_id"])
        ax2.plot([h["epoch"] for h in r["history"] if h.get("loss") is not None],
                 [h["loss"] for h in r["history"] if h.get("loss") is not None], marker="o", label=r["trial_id"])
    ax1.set(xlabel="evaluation", ylabel=sweep.metric, title=f"{sweep.metric} per trial")
    ax2.set(xlabel="epoch", ylabel="train loss", title="loss per trial", yscale="log")
    if sweep.metric == "fid":
        ax1.set_yscale("log")
    if ax1.get_legend_handles_labels()[0]:
        ax1.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    _save_fig(fig, path)


def draw_params(sweep: Sweep, trials: list[dict], path: Path) -> None:
    keys = list(sweep.space)
    fig = Figure(figsize=(4 * len(keys), 3.5))
    axes = fig.subplots(1, len(keys), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r["params"][key], r["best"][sweep.metric]) for r in trials
               if r["best"] and r["best"].get(sweep.metric) is not None]
        if pts:
            xs = [p[0] for p in pts] if sweep.space[key].kind != "choice" else [str(p[0]) for p in pts]
            ax.scatter(xs, [p[1] for p in pts])
        if sweep.space[key].kind == "loguniform":
            ax.set_xscale("log")
        ax.set(xlabel=key, ylabel=f"best {sweep.metric}")
    fig.tight_layout()
    _save_fig(fig, path)


def _save_fig(fig, path: Path) -> None:
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def render_samples(checkpoint: Path, out_dir: Path, k: int = 3) -> list[tuple[Path, str]]:
    """GIFs of k test captions generated by a checkpoint (DDIM, the config's sampler settings): (gif, caption)."""
    cfg, model, diffusion = load_for_evaluation(str(checkpoint), None)
    test_set = dataset_from_config(cfg.data, "test", train=False, seed=cfg.seed, progress=False)
    batch = collate([test_set[i] for i in range(min(k, len(test_set)))])
    model.eval()
    with torch.no_grad():
        cond = model.encode_batch(batch)
        x0 = diffusion.sample(model, cond, batch["mask"], sampler=cfg.evaluation.sampler,
                              steps=cfg.evaluation.ddim_steps, guidance_scale=cfg.evaluation.guidance_scale,
                              progress=False, generator=torch.Generator().manual_seed(cfg.seed))
    feats = test_set.denormalize(x0.float())
    out = []
    for i, caption in enumerate(batch["text"]):
        n = int(batch["length"][i])
        joints = recover_from_ric(feats[i, :n].numpy().astype(np.float32))
        out.append((save_gif(joints, out_dir / f"sample_{i}.gif", title=gif_title(caption)), caption))
    return out


def gif_title(caption: str) -> str:
    """The caption as it fits above a GIF (TITLE_LINES lines of TITLE_WIDTH characters): whole, or cut after a
    word with an ellipsis (the page prints every caption in full under its GIF)."""
    if len(textwrap.wrap(caption, TITLE_WIDTH)) <= TITLE_LINES:
        return caption
    words = caption.split()
    while words and len(textwrap.wrap(" ".join(words) + " ...", TITLE_WIDTH)) > TITLE_LINES:
        words.pop()
    return " ".join(words) + " ..."


# ---------------------------------------------------------------- the page

def param_importances(sweep: Sweep) -> tuple[dict | None, str]:
    """Optuna's parameter importances over the sweep's study (PED-ANOVA, Optuna's default evaluator, which
    needs no scikit-learn), and a note: how many trials they rest on, Optuna's own warnings, or why none."""
    db = SweepFiles(sweep.sweep_dir).optuna_db
    if not db.is_file():
        return None, "No Optuna study in this sweep folder (a random-search sweep has none)."
    try:
        study = optuna.load_study(study_name=sweep.name, storage=f"sqlite:///{db}")
        finished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if len(finished) < 2:
            return None, f"Importances need at least 2 finished trials; the study has {len(finished)}."
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (KeyError, ValueError, RuntimeError, optuna.exceptions.OptunaError) as exc:
        return None, f"Optuna could not compute importances: {exc}"
    earlier = sum(1 for t in finished if t.user_attrs.get("warm_start"))
    note = (f"Optuna's {type(evaluator).__name__} over the study's "
            f"{len(finished)} finished trials" + (f" ({earlier} of them from warm_start sweeps)" if earlier else "")
            + "." + "".join(f" Optuna: {w.message}" for w in caught))
    return importances, note


def sorted_rows(trials: list[dict], metric: str) -> list[dict]:
    """Best metric first; trials without an evaluation last."""
    sign = 1 if LOWER_IS_BETTER[metric] else -1

    def key(r):
        v = (r.get("best") or {}).get(metric)
        return (0, sign * v) if isinstance(v, (int, float)) and math.isfinite(v) else (1, 0)
    return sorted(trials, key=key)


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _data_uri(path: Path) -> str | None:
    if not path.is_file():
        return None
    kind = {".png": "image/png", ".gif": "image/gif"}[path.suffix]
    return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _image(path: Path, alt: str) -> str:
    uri = _data_uri(path)
    return f'<img src="{uri}" alt="{_e(alt)}">' if uri else f'<p class="note">{_e(path.name)} is not drawn yet.</p>'


def _number(v) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else ("-" if v is None else str(v))


def _table(sweep: Sweep, summary: dict) -> str:
    rows = sorted_rows(summary["trials"], sweep.metric)
    keys = list(sweep.space)
    lineage = [k for k in LINEAGE if any(k in r for r in rows)]
    head = (["#", "trial"] + [f'<th title="{_e(k)}">{_e(k.split(".")[-1])}</th>' for k in keys]
            + list(METRICS) + ["best epoch", "epochs", "evaluations", "targets met", "end", "diagnosis"] + lineage)
    out = ['<table id="trials"><thead><tr>' + "".join(h if h.startswith("<th") else f"<th>{_e(h)}</th>" for h in head)
           + "</tr></thead><tbody>"]
    for i, r in enumerate(rows, 1):
        best = r.get("best") or {}
        cells = [str(i), _e(r["trial_id"])] + [_e(format_value((r.get("params") or {}).get(k))) for k in keys]
        cells += [f'<b>{_e(_number(best.get(m)))}</b>' if m == sweep.metric else _e(_number(best.get(m)))
                  for m in METRICS]
        cells += [_e(_number(r.get("best_epoch"))), _e(r.get("epochs")), _e(r.get("evaluations")),
                  '<span class="yes">&#10003; met</span>' if r.get("targets_met") else "no", _e(r.get("end")),
                  _e(", ".join(r.get("diagnosis") or []) or "-")]
        cells += [_e(format_value(r.get(k)) if r.get(k) is not None else "-") for k in lineage]
        cls = ' class="best"' if r["trial_id"] == summary.get("best_trial") else ""
        out.append(f'<tr{cls} data-trial="{_e(r["trial_id"])}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _importance_section(sweep: Sweep) -> str:
    importances, note = param_importances(sweep)
    out = ['<section id="importance"><h2>Parameter importance</h2>']
    if importances:
        top = max(importances.values()) or 1.0
        out.append("<table><tbody>")
        for key, value in importances.items():
            out.append(f'<tr><td>{_e(key)}</td><td class="num">{value:.3f}</td><td class="bars">'
                       f'<div class="bar" style="width:{100 * value / top:.1f}%"></div></td></tr>')
        out.append("</tbody></table>")
    out.append(f'<p class="note">{_e(note)}</p></section>')
    return "\n".join(out)


def _diagnoses_section(sweep: Sweep, summary: dict) -> str:
    rules = {rule.name: rule for rule in RULES}
    items = [f"<li><b>{_e(r['trial_id'])}</b>: {_e(explain(rules[name]) if name in rules else name)}</li>"
             for r in summary["trials"] for name in r.get("diagnosis") or ()]
    remedies = []
    log = SweepFiles(sweep.sweep_dir).remedies
    for line in (log.read_text(encoding="utf-8", errors="replace").splitlines() if log.is_file() else ()):
        try:
            rec = json.loads(line)
            moved = ", ".join(f"{k}={format_value(v)}" for k, v in rec["point"].items() if rec["from"].get(k) != v)
            fork = rec.get("fork")
            how = (f", continuing its line from its {fork_source(fork)} at "
                   f"step {fork['step']} (epoch {fork['epoch']})" if isinstance(fork, dict) else "")
            remedies.append(f"<li><b>{_e(rec['trial_id'])}</b> {_e(rec['rule'])}: queued {_e(moved)}{_e(how)}</li>")
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    out = ['<section id="diagnoses"><h2>The doctor\'s diagnoses</h2>']
    out.append(f"<ul>{''.join(items)}</ul>" if items else '<p class="note">No trial was diagnosed.</p>')
    if remedies:
        out.append(f"<h3>Remedy trials queued</h3><ul>{''.join(remedies)}</ul>")
    return "\n".join(out + ["</section>"])


def _motions_section(summary: dict, out: Path, final: bool) -> str:
    folder = out / "best_trial"
    try:
        drawn = json.loads((folder / "captions.json").read_text())
    except (OSError, ValueError):
        drawn = None
    parts = ['<section id="motions"><h2>The best trial\'s motions</h2>']
    if isinstance(drawn, dict) and drawn.get("samples"):
        parts.append(f'<p class="note">Samples of trial {_e(drawn.get("trial"))}\'s model_best.pt on test captions'
                     + ("" if drawn.get("trial") == summary.get("best_trial") else
                        f" (drawn earlier; the best trial is now {_e(summary.get('best_trial'))})") + ".</p>")
        parts.append('<div class="gifs">')
        for sample in drawn["samples"]:
            caption = str(sample.get("caption", ""))
            parts.append(f"<figure>{_image(folder / Path(str(sample.get('gif'))).name, caption)}"
                         f"<figcaption>{_e(caption)}</figcaption></figure>")
        parts.append("</div>")
    elif final:
        parts.append('<p class="note">No GIFs: the best trial has no model_best.pt (no trial reached an '
                     'evaluation), or they could not be drawn.</p>')
    else:
        parts.append('<p class="note">The GIFs are drawn when the sweep ends.</p>')
    return "\n".join(parts + ["</section>"])


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 12.5px; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } .wide { overflow-x: auto; } tr.best td { background: #eef7ee; }
.yes { color: #17772a; font-weight: bold; }
.note { color: #666; } img { max-width: 100%; }
td.bars { width: 20em; text-align: left; } .bar { background: #4a7fc1; height: 0.9em; }
.gifs { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; width: 320px; } figcaption { font-size: 13px; }
"""
# Nothing may be fetched: images are data URIs, the style is inline, and there is no script.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def write_page(sweep: Sweep, summary: dict, out: Path, final: bool = True) -> Path:
    """report/index.html from the summary and the pictures in `out` (final: the sweep has ended)."""
    met = any(r.get("targets_met") for r in summary["trials"])
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    state = (f"written {when}, when the sweep ended" if final else
             f"written {when} while the sweep runs (rewritten each time a trial ends)")
    head = (f"<p>Metric <b>{_e(sweep.metric)}</b> ({_e(sweep.mode)}), {len(summary['trials'])} trials, best trial "
            f"<b>{_e(summary.get('best_trial') or 'none yet')}</b>. Targets "
            f"({_e(', '.join(summary.get('targets') or []) or 'none')}): "
            f"{'<span class=yes>met</span>' if met else 'not met'}. "
            f"Wall time {summary.get('wall_seconds', 0):.0f} s.</p><p class=\"note\">{_e(state)}.</p>")
    body = [f"<h1>Sweep {_e(sweep.name)}</h1>", head,
            f"<section id=\"table\"><h2>Trials, best {_e(sweep.metric)} first</h2>"
            f"<div class=\"wide\">{_table(sweep, summary)}</div></section>",
            f"<section id=\"curves\"><h2>Curves</h2>{_image(out / 'curves.png', 'metric and loss per trial')}</section>",
            f"<section id=\"params\"><h2>Parameters vs {_e(sweep.metric)}</h2>"
            f"{_image(out / f'params_vs_{sweep.metric}.png', f'best {sweep.metric} against each searched key')}"
            "</section>",
            _importance_section(sweep), _diagnoses_section(sweep, summary), _motions_section(summary, out, final)]
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f"<title>Sweep {_e(sweep.name)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
    path = out / "index.html"
    atomic_write_text(path, page)
    return path


class LiveReport(tune.Callback):
    """Rewrites report/ (the page and its curves, not the GIFs) each time a trial ends, from the reports seen so
    far completed by the trials' own files (summary.summarise), so people can open it while the sweep runs.
    The drawing (~1 s) runs on a thread, so the next trial does not wait for it; the sweep's end waits for the
    last one, so it never lands after the final page run.py writes."""

    def __init__(self, sweep: Sweep, asha: bool = True):
        self.sweep, self.asha, self.t0 = sweep, asha, time.time()
        self.reports: dict[str, list[dict]] = {}
        self._writer: threading.Thread | None = None

    def __getstate__(self):             # Tune pickles its callbacks with the experiment (for --resume)
        return {**self.__dict__, "_writer": None}

    def setup(self, **info):            # once per run of the sweep (a resumed one runs Tune's pickled copy)
        self.t0 = time.time()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.reports.setdefault(trial.trial_id, []).append({k: v for k, v in result.items() if k != "config"})

    def on_trial_complete(self, iteration, trials, trial, **info):
        results = [SimpleNamespace(metrics=t.last_result, config=t.config, path=t.path,
                                   error="error" if t.status == t.ERROR else None,
                                   metrics_dataframe=pd.DataFrame(self.reports[t.trial_id]))
                   for t in trials if self.reports.get(t.trial_id)]      # what summarise reads of a Tune result
        self.wait()
        self._writer = threading.Thread(target=self._write, args=(results, time.time() - self.t0), daemon=True)
        self._writer.start()

    on_trial_error = on_trial_complete

    def on_experiment_end(self, trials, **info):
        self.wait()

    def wait(self):
        if self._writer is not None:
            self._writer.join()

    def _write(self, results, wall_seconds):
        try:
            make_report(self.sweep, summarise(self.sweep, results, wall_seconds, asha=self.asha), samples=False)
        except Exception as exc:  # the page is a bonus: never stop the sweep over it
            print(f"[report] could not write the page: {exc}", flush=True)
