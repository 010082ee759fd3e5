"""The code, its tests and its docs say what is, not how it came to be.

The history of the code lives in git. Issue numbers, before -> after figures
and accounts of earlier attempts go stale the day they are written (the fact
they describe changes, the sentence does not), so they are refused here.
"""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

#: What reads as history, each with why.
PATTERNS = {
    # ``owner/repo issue #n`` cites another project's tracker: that is a reference, not history
    "a project issue number": re.compile(r"(?P<citation>[\w.-]+/[\w.-]+\s+)?\bissues? #?\d+\b", re.I),
    "a before -> after figure": re.compile(
        r"\d+(?:\.\d+)?\s*(?:ms|s|x|%)?\s*(?:->|→)\s*\d+(?:\.\d+)?\s*(?:ms|s|x|%)(?!\w)"),
    "an account of earlier work": re.compile(
        r"\b(?:as (?:this|the) \w+ did (?:first|before)|an earlier (?:choice|version)|"
        r"(?:in|during|of) this session|no longer (?:has|does|needs)|used to be)\b", re.I),
    "an A/B log": re.compile(r"\bA/B (?:run|runs|figures|log)\b"),
}

#: Lines that match a pattern and are not history: (path, the words that make it so).
ALLOWED = {
    ("tests/test_no_history.py", ""),  # the patterns themselves
}


def files() -> list[pathlib.Path]:
    out = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "conftest.py"]
    for folder in ("portable_rnn", "tests", "docs"):
        out += sorted(p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".toml", ".txt", ".yml")
                      and "data" not in p.relative_to(ROOT).parts)
    return [p for p in out if p.is_file()]


def findings(path: pathlib.Path, root: pathlib.Path = ROOT) -> list[str]:
    rel = path.relative_to(root).as_posix()
    out = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        for what, pattern in PATTERNS.items():
            history = [m for m in pattern.finditer(line) if not m.groupdict().get("citation")]
            if history and not any(rel == p and words in line for p, words in ALLOWED):
                out.append(f"{rel}:{number}: {what}: {line.strip()}")
    return out


def test_no_history_in_code_tests_or_docs():
    found = [f for path in files() for f in findings(path)]
    assert found == [], "\n".join(found)


@pytest.mark.parametrize("line, what", [
    ("# the GRU went from 6.2 ms -> 3.5 ms with four steps", "a before -> after figure"),
    ("regression tests of issue 24.", "a project issue number"),
    ("sending them to NumPy (as this class did first) took", "an account of earlier work"),
    ("chosen by whole-layer A/B runs against torch.nn", "an A/B log"),
])
def test_each_pattern_catches_its_kind(tmp_path, line, what):
    """Each pattern finds what it is written for (else the test above could pass on nothing)."""
    path = tmp_path / "module.py"
    path.write_text(f"x = 1\n{line}\n")
    assert [f for f in findings(path, tmp_path) if what in f], findings(path, tmp_path)


@pytest.mark.parametrize("line", [
    "Upstream: pytorch/pytorch issue #6760 asks for a layer-normalised LSTM.",  # another project's tracker
    "``str(T)`` -> ``\"A/B\"`` -> ``{\"peak\", \"time\"}``",  # a mapping, not a change
    "600 MiB at T=10 -> 1200 MiB at T=20",  # a computation
])
def test_what_is_not_history_passes(tmp_path, line):
    path = tmp_path / "module.py"
    path.write_text(f"{line}\n")
    assert findings(path, tmp_path) == []
