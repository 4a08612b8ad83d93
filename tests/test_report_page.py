"""report/index.html: one self-contained page per sweep, built here from a small fake summary (rows shaped like
summarise()'s) and tiny pictures, then opened in a real headless Chromium (Debian's `chromium-headless-shell` or
`chromium`; skipped, with the reason, when none is installed): no console errors, the table and every image shown.
No training, no Ray."""
import fcntl
import html
import json
import os
import re
import select
import shutil
import subprocess
import textwrap
import time

import optuna
import pytest
import yaml
from PIL import Image

from cmdm.run_files import SweepFiles
from cmdm.tuning import report
from cmdm.tuning.report import gif_title, make_report, write_page
from cmdm.tuning.sweep_file import load_sweep

from badinput import ROOT

LONG = ("a person walks forward slowly, then stops, turns around to the left and waves with the right hand "
        "before sitting down on a chair that stands behind them")          # > 3 title lines of 48 characters
NASTY = 'a person <script>alert("x")</script> & jumps'


def sweep_for(tmp_path):
    spec = {"name": "page", "base": str(ROOT / "configs" / "demo.yaml"), "output_root": str(tmp_path / "outputs"),
            "space": {"training.lr": {"loguniform": [1e-5, 1e-2]}, "model.dropout": {"uniform": [0.0, 0.3]}},
            "metric": "fid", "mode": "min", "targets": {"fid": "<= 16"}}
    (tmp_path / "page.yaml").write_text(yaml.safe_dump(spec))
    return load_sweep(tmp_path / "page.yaml")


def row(trial_id, lr, fid, **extra):
    """A row as summarise() writes it."""
    history = [{"epoch": e, "evaluations": e, "loss": 1.0 / e, "fid": fid * (1 + 1 / e) if fid else None}
               for e in (1, 2, 3)]
    out = {"trial_id": trial_id, "params": {"training.lr": lr, "model.dropout": 0.1}, "end": "finished",
           "epochs": 3, "evaluations": 3, "best": {"fid": fid, "top1": 0.3, "top2": 0.4, "top3": 0.5, "mm_dist": 3.0}
           if fid else None, "best_epoch": 3 if fid else None, "diagnosis": [], "error": None,
           "targets_met": bool(fid) and fid <= 16, "train_seconds": 10.0, "trial_seconds": 12.0,
           "history": history, "run_dir": "/nowhere"}
    out.update(extra)
    return out


def fake_summary(lineage=False):
    rows = [row("t_mid", 1e-3, 20.0, diagnosis=["loss_oscillating"], end="stopped by ASHA"),
            row("t_best", 3e-3, 9.5),
            row("t_none", 1e-5, None, end="failed", diagnosis=["<b>not_a_rule</b>"]),
            row("t_worst", 1e-2, 40.0)]
    if lineage:
        rows[0].update(parent="t_worst", forked_at_step=320, remedy="loss_oscillating: lr x2/3")
    return {"sweep": "page", "metric": "fid", "mode": "min", "targets": ["fid <= 16"], "wall_seconds": 123.0,
            "trial_seconds_sum": 48.0, "best_trial": "t_best", "trials": rows}


def tiny_gif(path, colour):
    frames = [Image.new("RGB", (16, 16), colour), Image.new("RGB", (16, 16), (255, 255, 255))]
    frames[0].save(path, save_all=True, append_images=frames[1:], loop=0, duration=100)


def fake_render_samples(checkpoint, out_dir, k=3):
    out_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (caption, colour) in enumerate([(LONG, (200, 0, 0)), (NASTY, (0, 0, 200))][:k]):
        tiny_gif(out_dir / f"sample_{i}.gif", colour)
        out.append((out_dir / f"sample_{i}.gif", caption))
    return out


def study_with_trials(sweep, n):
    files = SweepFiles(sweep.sweep_dir)
    files.root.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=sweep.name, storage=f"sqlite:///{files.optuna_db}")
    dist = {"training.lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True),
            "model.dropout": optuna.distributions.FloatDistribution(0.0, 0.3)}
    for i in range(n):
        lr, dropout = 10 ** (-5 + 3 * i / max(n - 1, 1)), 0.3 * ((i * 7) % n) / n
        study.add_trial(optuna.trial.create_trial(params={"training.lr": lr, "model.dropout": dropout}, distributions=dist,
                                                  value=abs(i - n / 2) + 0.01 * dropout,
                                                  user_attrs={"warm_start": "old/x"} if i < 2 else {}))


@pytest.fixture
def built(tmp_path, monkeypatch):
    """A final page: fake summary, a study with 12 trials, GIFs from a stand-in render_samples."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sweep = sweep_for(tmp_path)
    files = SweepFiles(sweep.sweep_dir)
    study_with_trials(sweep, 12)
    files.trial("t_best").checkpoints.mkdir(parents=True)
    files.trial("t_best").best.write_bytes(b"stand-in")           # make_report draws samples of model_best.pt
    monkeypatch.setattr(report, "render_samples", fake_render_samples)
    out = make_report(sweep, fake_summary(lineage=True))
    return sweep, out / "index.html"


def test_page_has_sorted_rows_targets_escaped_text_and_importances(built):
    sweep, page = built
    text = page.read_text()
    assert re.findall(r'<tr[^>]* data-trial="([^"]+)"', text) == ["t_best", "t_mid", "t_worst", "t_none"]
    best_row = re.search(r'<tr class="best" data-trial="t_best">(.*?)</tr>', text).group(1)
    assert "&#10003; met" in best_row and "<b>9.5</b>" in best_row and "0.003" in best_row
    assert "stopped by ASHA" in text and "failed" in text
    for head in ("<th>parent</th>", "<th>forked_at_step</th>", "<th>remedy</th>"):
        assert head in text
    assert "loss_oscillating: lr x2/3" in text and ">320<" in text
    # every string from data is escaped; the page has no script at all and fetches nothing
    assert "<script" not in text and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; jumps" in text
    assert "&lt;b&gt;not_a_rule&lt;/b&gt;" in text and "<b>not_a_rule</b>" not in text
    srcs = re.findall(r'<img src="([^"]*)"', text)
    assert len(srcs) == 4 and all(s.startswith(("data:image/png;base64,", "data:image/gif;base64,")) for s in srcs)
    assert not re.search(r'(src|href)="(?!data:)', text) and "default-src 'none'" in text
    # the GIFs with their full captions, under each one
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", text)
    assert captions == [LONG, "a person &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; jumps"]
    assert json.loads((page.parent / "best_trial" / "captions.json").read_text())["trial"] == "t_best"
    # Optuna's importances over the study, and how many trials they rest on
    section = re.search(r'<section id="importance">(.*?)</section>', text, re.S).group(1)
    assert "training.lr" in section and "model.dropout" in section and 'class="bar"' in section
    assert ("PedAnovaImportanceEvaluator over the study's 12 finished trials (2 of them from warm_start sweeps)"
            in html.unescape(section))
    # the doctor's diagnoses, explained
    diagnoses = re.search(r'<section id="diagnoses">(.*?)</section>', text, re.S).group(1)
    assert "<b>t_mid</b>: loss_oscillating:" in diagnoses


def test_a_live_page_without_study_lineage_or_gifs_says_why(tmp_path):
    sweep = sweep_for(tmp_path)
    out = SweepFiles(sweep.sweep_dir).report
    out.mkdir(parents=True)
    text = write_page(sweep, fake_summary(), out, final=False).read_text()
    assert "while the sweep runs" in text and "The GIFs are drawn when the sweep ends." in text
    assert "No Optuna study in this sweep folder" in text and "curves.png is not drawn yet." in text
    assert "<th>parent</th>" not in text and "<th>remedy</th>" not in text
    assert not SweepFiles(sweep.sweep_dir).optuna_db.exists()          # reading the page created no study
    study_with_trials(sweep, 1)
    text = write_page(sweep, fake_summary(), out, final=False).read_text()
    assert "Importances need at least 2 finished trials; the study has 1." in text


def test_gif_titles_are_whole_or_cut_after_a_word():
    assert gif_title(NASTY) == NASTY
    title = gif_title(LONG)
    lines = textwrap.wrap(title, 48)
    assert len(lines) == 3 and title.endswith(" ...") and LONG.startswith(title[:-4])
    assert LONG[len(title) - 4] == " "                 # the cut falls between two words


# --------------------------------------------------------------------------------------------
# In a real browser, over Chromium's DevTools protocol (--remote-debugging-pipe: fds 3 and 4)
# --------------------------------------------------------------------------------------------

BROWSERS = ("chromium-headless-shell", "chromium", "google-chrome")
SHOWN = """Promise.all([...document.images].map(i => i.decode().then(() => true, () => false))).then(ok => ({
  decoded: ok.filter(Boolean).length, images: ok.length,
  sizes: [...document.images].map(i => [i.naturalWidth, i.naturalHeight]),
  rows: [...document.querySelectorAll('#trials tbody tr')].map(r => r.dataset.trial),
  captions: [...document.querySelectorAll('figcaption')].map(f => f.textContent),
  importance: [...document.querySelectorAll('#importance .bar')].length, title: document.title}))"""


def above_4(fd: int) -> int:
    """A copy of fd numbered 5 or more (the original is closed)."""
    copy = fcntl.fcntl(fd, fcntl.F_DUPFD, 5)
    os.close(fd)
    return copy


class DevTools:
    """Just enough of the DevTools protocol: NUL-terminated JSON messages over two pipes."""

    def __init__(self, browser, profile):
        to_chrome, self._w = os.pipe()
        self._r, from_chrome = os.pipe()
        to_chrome, from_chrome = (above_4(fd) for fd in (to_chrome, from_chrome))   # the dup2s cannot collide

        def pipes():
            os.dup2(to_chrome, 3)
            os.dup2(from_chrome, 4)
        self.proc = subprocess.Popen([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                      f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     close_fds=False, preexec_fn=pipes)
        os.close(to_chrome)
        os.close(from_chrome)
        self._buf, self._id, self.events, self.deadline = b"", 0, [], time.time() + 30

    def _read(self) -> dict:
        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._r], [], [], max(0.0, self.deadline - time.time()))
            assert ready, "the browser did not answer within 30 s"
            chunk = os.read(self._r, 1 << 16)
            assert chunk, "the browser closed its pipe"
            self._buf += chunk
        message, _, self._buf = self._buf.partition(b"\0")
        return json.loads(message)

    def call(self, method, params=None, session=None) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._w, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._id:
                assert "error" not in reply, (method, reply["error"])
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method):
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._read())

    def close(self):
        try:
            self.call("Browser.close")
        finally:
            self.proc.wait(timeout=10)
            os.close(self._w)
            os.close(self._r)


def open_page(tools, session, page) -> tuple[dict, list[str]]:
    """Load page and wait for it; what it shows, and every console message, exception and error log entry."""
    tools.events.clear()
    tools.call("Page.navigate", {"url": page.as_uri()}, session)
    tools.wait_for("Page.loadEventFired")
    shown = tools.call("Runtime.evaluate", {"expression": SHOWN, "awaitPromise": True, "returnByValue": True},
                       session)["result"]["value"]
    problems = []
    for e in tools.events:
        p = e.get("params", {})
        if e.get("method") == "Runtime.consoleAPICalled":
            problems.append(f"console.{p['type']}: " + " ".join(str(a.get("value")) for a in p.get("args", [])))
        elif e.get("method") == "Runtime.exceptionThrown":
            problems.append(f"exception: {p['exceptionDetails'].get('text')}")
        elif e.get("method") == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
            problems.append(f"log {p['entry']['level']}: {p['entry']['text']}")
    return shown, problems


def test_the_page_loads_in_a_headless_browser(built, tmp_path):
    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        pytest.skip("no headless browser installed (" + ", ".join(BROWSERS) + " not on PATH): "
                    "apt-get install chromium-headless-shell to run this test")
    _, page = built
    tools = DevTools(browser, tmp_path / "profile")
    try:
        target = next(t for t in tools.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        session = tools.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            tools.call(f"{domain}.enable", session=session)
        shown, problems = open_page(tools, session, page)
        # the checker sees what it must: the same page with one image from the network is refused and reported
        bad = tmp_path / "bad.html"
        bad.write_text(page.read_text().replace("</body>", '<img src="http://127.0.0.1:9/x.png"></body>'))
        _, bad_problems = open_page(tools, session, bad)
    finally:
        tools.close()
    assert problems == [], problems
    assert shown["title"] == "Sweep page" and shown["rows"] == ["t_best", "t_mid", "t_worst", "t_none"]
    assert shown["images"] == 4 and shown["decoded"] == 4 and all(w > 0 and h > 0 for w, h in shown["sizes"])
    assert shown["captions"] == [LONG, NASTY] and shown["importance"] == 2
    assert any("Content Security Policy" in p and "127.0.0.1:9" in p for p in bad_problems), bad_problems


def test_live_report_rewrites_the_page_as_trials_end(tmp_path):
    """The Tune callback, fed stand-in trials: each trial's reports become its row, the page is written when a
    trial ends (without GIFs), and it pickles (Tune keeps callbacks with the experiment for --resume)."""
    import pickle
    from types import SimpleNamespace
    sweep = sweep_for(tmp_path)
    live = report.LiveReport(sweep)
    pickle.loads(pickle.dumps(live))

    def trial(trial_id, lr, status="TERMINATED"):
        return SimpleNamespace(trial_id=trial_id, config={"training.lr": lr, "model.dropout": 0.1}, status=status,
                               ERROR="ERROR", path=str(tmp_path / "tune" / trial_id), last_result={})
    a, b = trial("a", 1e-3), trial("b", 1e-4, status="RUNNING")
    for t, fids in ((a, (30.0, 12.0)), (b, (50.0,))):
        for e, fid in enumerate(fids, 1):
            t.last_result = {"trial_id": t.trial_id, "epoch": e, "evaluations": e, "loss": 1.0 / e, "fid": fid,
                             "best_fid": min(fids[:e]), "diagnosis": [], "config": t.config}
            live.on_trial_result(0, [a, b], t, t.last_result)
    live.on_trial_complete(0, [a, b], a)
    pickle.loads(pickle.dumps(live))                                     # with its writer thread running
    live.on_experiment_end([a, b])                                       # waits for the page
    text = (SweepFiles(sweep.sweep_dir).report / "index.html").read_text()
    assert re.findall(r'<tr[^>]* data-trial="([^"]+)"', text) == ["a", "b"]
    assert "while the sweep runs" in text and "&#10003; met" in text       # a's 12 meets fid <= 16
    assert (SweepFiles(sweep.sweep_dir).report / "curves.png").is_file()
