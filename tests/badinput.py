"""The harness of the bad-input suite (tests/test_bad_input_*.py): one row per mistake a user can make.

A row runs one of the project's commands in-process on a file or argument that is wrong, and the harness
checks what a user must see: exit code 2, one `error:` paragraph that names the file or key and says how to
fix it, no traceback, and no file outside the run's own folder created, changed or deleted.

    CASES = [Case("evaluate-on-a-text-file", ["cmdm.evaluate", "{tmp}/notes.txt"],
                  setup=lambda tmp: (tmp / "notes.txt").write_text("hello"),
                  names=["{tmp}/notes.txt"], fix=["checkpoint"])]

    @pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
    def test_bad_input(case, tmp_path, monkeypatch):
        check(case, tmp_path, monkeypatch)

`{tmp}` in argv, names and fix is replaced by the row's temporary folder (the working directory of the run),
`{root}` by the repository root (e.g. `{root}/configs/demo.yaml`).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import io
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]

# entry point -> (module or script, function): what `python <entry> ...` runs
ENTRIES = {
    "train_ray.py": (ROOT / "train_ray.py", "main"),
    "tune_ray.py": (ROOT / "tune_ray.py", "main"),
    "cmdm.config": ("cmdm.config", "main"),
    "cmdm.evaluate": ("cmdm.evaluate", "main"),
    "cmdm.evaluation.fit": ("cmdm.evaluation.fit", "main"),
    "cmdm.evaluation.sanity": ("cmdm.evaluation.sanity", "main"),
    "cmdm.data.synthetic": ("cmdm.data.synthetic.cli", "main"),
    "cmdm.model": ("cmdm.model.__main__", "main"),
}


@dataclass
class Case:
    id: str
    argv: Sequence[str]                       # entry (a key of ENTRIES) then its arguments
    setup: Callable[[Path], object] | None = None   # writes the row's files into tmp (before the snapshot)
    names: Sequence[str] = ()                 # what the message must name: the file, the key, the value
    fix: Sequence[str] = ()                   # words of the fix the message must say
    code: int = 2
    may_change: Sequence[str] = ()            # paths under tmp the command may write (its run folder)
    env: dict = field(default_factory=dict)   # environment variables for the run


@dataclass
class Outcome:
    code: int | None
    out: str
    err: str
    traceback: str | None


def _main_of(entry: str):
    target, name = ENTRIES[entry]
    if isinstance(target, Path):
        spec = importlib.util.spec_from_file_location(f"_entry_{target.stem}", target)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    return getattr(module, name)


def run_entry(argv: Sequence[str]) -> Outcome:
    """Run `python <argv[0]> <argv[1:]>` in this process; an escaping exception is a failure, not an exit."""
    main = _main_of(argv[0])
    out, err, tb, code = io.StringIO(), io.StringIO(), None, None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv[1:]))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if isinstance(exc.code, str):
                print(exc.code, file=err)
        except BaseException:  # noqa: BLE001: what a user would see as a traceback
            tb = traceback.format_exc()
    return Outcome(code, out.getvalue(), err.getvalue(), tb)


def snapshot(root: Path, skip: Sequence[Path] = ()) -> dict:
    """path -> sha1 of every file under root (outside `skip`): what a command must leave as it was."""
    skip = [Path(p).resolve() for p in skip]
    files = {}
    for path in sorted(root.rglob("*")):
        resolved = path.resolve()
        if any(resolved == s or s in resolved.parents for s in skip) or not path.is_file():
            continue
        files[str(path.relative_to(root))] = hashlib.sha1(path.read_bytes()).hexdigest()
    return files


def error_paragraph(text: str) -> str:
    """The text from the first `error:` to the end (argparse puts its usage line before it)."""
    at = text.find("error:")
    return text[at:].strip() if at >= 0 else ""


def check(case: Case, tmp_path: Path, monkeypatch) -> Outcome:
    """Run one row and assert everything the bad-input standard asks of it; returns the outcome."""
    tmp = tmp_path.resolve()
    fill = lambda s: str(s).replace("{tmp}", str(tmp)).replace("{root}", str(ROOT))  # noqa: E731
    if case.setup is not None:
        case.setup(tmp)
    monkeypatch.chdir(tmp)
    for key, value in case.env.items():
        monkeypatch.setenv(key, fill(value))
    allowed = [tmp / fill(p) for p in case.may_change]
    before = snapshot(tmp, allowed)
    outcome = run_entry([fill(a) for a in case.argv])
    text = outcome.out + outcome.err
    assert outcome.traceback is None, f"{case.id}: an exception escaped:\n{outcome.traceback}"
    assert "Traceback" not in text, f"{case.id}: a traceback was printed:\n{text}"
    assert outcome.code == case.code, f"{case.id}: exit code {outcome.code}, expected {case.code}:\n{text}"
    message = error_paragraph(outcome.err) or error_paragraph(text)
    assert message, f"{case.id}: no `error:` message:\n{text}"
    assert "\n\n" not in message.strip(), f"{case.id}: more than one paragraph:\n{message}"
    assert len(message) < 2000, f"{case.id}: a {len(message)}-character message"
    for name in case.names:
        assert fill(name) in message, f"{case.id}: the message does not name {fill(name)!r}:\n{message}"
    for word in case.fix:
        assert fill(word).lower() in message.lower(), f"{case.id}: the message does not say {fill(word)!r}:\n{message}"
    after = snapshot(tmp, allowed)
    assert after == before, f"{case.id}: files outside the run folder changed: " \
        f"{sorted(set(before.items()) ^ set(after.items()))[:10]}"
    return outcome
