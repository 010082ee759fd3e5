"""The documentation site builds as CONTRIBUTING.md says, with no warning, and leaves no name out.

The build (``mkdocs build --strict``, the command between CONTRIBUTING.md's docs-command
markers) runs every ``exec="on"`` Python block of every page, so a failing example fails here;
the reference's cross-references and the tutorials' maths (MathML made at build time) are
checked by the same build. One build serves the checks.

The how-to guides' ``bash`` blocks run here too, page by page, each page's blocks in order in a
fresh folder. A block that needs what a test machine has not got says so in an HTML comment
just above its fence, which the site does not show:

- ``<!-- needs: gpu -->`` (GPUs) or ``<!-- needs: hosts -->`` (several machines): skipped, with
  that reason;
- ``<!-- run by: tests/FILE.py -->``: the commands of a test of the suite (several programs side
  by side on free ports): skipped here, with that reason;
- ``<!-- given: a.txt b.txt -->``: the block reads files a reader brings; the test writes a short
  text into each first.
"""

from __future__ import annotations

import dataclasses
import html
import importlib
import importlib.util
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import types
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONFIG = DOCS / "config"
#: The public modules, each with an ``__all__`` whose every name needs a reference entry.
PUBLIC_MODULES = (
    "portable_rnn", "portable_rnn.activations", "portable_rnn.backends", "portable_rnn.engine.cells",
    "portable_rnn.course_layouts", "portable_rnn.cs231n", "portable_rnn.dask", "portable_rnn.dense",
    "portable_rnn.init", "portable_rnn.interop", "portable_rnn.interop.courses", "portable_rnn.interop.flax",
    "portable_rnn.interop.keras", "portable_rnn.interop.torch", "portable_rnn.io", "portable_rnn.jax",
    "portable_rnn.layers", "portable_rnn.engine.loop", "portable_rnn.losses", "portable_rnn.model", "portable_rnn.optim",
    "portable_rnn.parallel", "portable_rnn.engine.sequence", "portable_rnn.stepbystep", "portable_rnn.testing.fixtures",
    "portable_rnn.testing.gradcheck", "portable_rnn.torch", "portable_rnn.minimal", "portable_rnn.engine.layer_norm",
)


def docs_command() -> list[str]:
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- docs-command -->\s*```bash\n(.*?)```\s*<!-- /docs-command -->", text, re.S).group(1)
    (line,) = [line for line in block.splitlines() if line.strip()]
    return shlex.split(line)


def inventory(site: Path) -> set[str]:
    """The identifiers of the reference entries, from the site's ``objects.inv``."""
    data = (site / "objects.inv").read_bytes()
    body = zlib.decompress(data.split(b"\n", 4)[4]).decode()
    return {line.split(" ", 1)[0] for line in body.splitlines()}


def _missing_entries(entries: set[str]) -> list[str]:
    missing = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            homes = {f"{module_name}.{name}"}
            if hasattr(obj, "__module__") and hasattr(obj, "__qualname__"):
                homes.add(f"{obj.__module__}.{obj.__qualname__}")  # a re-export: documented where defined
            if type(obj).__name__ == "module":
                homes.add(obj.__name__)
            if module_name == "portable_rnn" and name == "__version__":
                continue  # its value is printed on the package's page
            if not homes & entries:
                missing.append(f"{module_name}.{name}")
    return missing


def test_the_command_is_mkdocs_strict():
    command = docs_command()
    assert command[:3] == ["mkdocs", "build", "--strict"], command


@pytest.mark.processes
def test_the_site_builds_without_warnings_and_every_public_name_has_an_entry(tmp_path):
    site = tmp_path / "site"
    command = docs_command()
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", MPLBACKEND="Agg")
    env.pop("KERAS_BACKEND", None)  # a page that needs it says so itself
    # mkdocs from this interpreter's environment, its output under tmp_path
    argv = [sys.executable, "-m", "mkdocs", *command[1:], "-d", str(site)]
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    warnings = [line for line in log.splitlines() if re.match(r"\s*(WARNING|ERROR)\b", line)]
    assert result.returncode == 0 and not warnings, "\n".join(warnings) or log[-5000:]
    assert (site / "index.html").is_file()
    assert _missing_entries(inventory(site)) == []
    assert _maths_problems(site) == []


def _maths_problems(site: Path) -> list[str]:
    """What is wrong with the built tutorials' maths: a page with no MathML, or ``$$`` left as text."""
    problems = []
    for page in sorted((DOCS / "tutorials").glob("*.md")):
        if "$" not in re.sub(r"```.*?```|`[^`\n]*`", "", page.read_text(encoding="utf-8"), flags=re.S):
            continue  # a tutorial without maths
        built = (site / "tutorials" / page.with_suffix(".html").name).read_text(encoding="utf-8")
        text = html.unescape(re.sub(r"<[^>]*>", "", re.sub(r"<(pre|code|math)\b.*?</\1>", "", built, flags=re.S)))
        if "<math " not in built:
            problems.append(f"{page.name}: no MathML")
        if "$$" in text:
            problems.append(f"{page.name}: $$ left as text")
    return problems


def test_every_python_block_on_every_page_runs_at_build_time():
    """A Python block without ``exec="on"`` would be shown but never run; only the README's are
    exempt, since tests/test_readme.py runs them."""
    unexecuted = []
    for page in sorted(DOCS.rglob("*.md")):
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            if re.match(r"\s*```+\s*(python|py|pycon)\b", line) and 'exec="on"' not in line:
                unexecuted.append(f"{page.relative_to(ROOT)}:{number}: {line.strip()}")
    assert unexecuted == [], "\n".join(unexecuted)


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; the front page keeps to 250"


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_each_public_module_has_a_reference_page(module_name):
    pages = "\n".join(p.read_text(encoding="utf-8") for p in (DOCS / "reference").glob("*.md"))
    assert re.search(rf"^::: {re.escape(module_name)}$", pages, re.M), module_name


def _config_module(name: str) -> types.ModuleType:
    """A module of docs/config (not a package: MkDocs imports them by path), imported by path."""
    spec = importlib.util.spec_from_file_location(f"_docs_config_{name}", CONFIG / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _markdown_as_the_site_converts_it(text: str) -> str:
    """``text`` through mkdocs.yml's Markdown extensions and the maths hook (no MkDocs, no plugins)."""
    import markdown
    from mkdocs.utils import yaml_load

    config = yaml_load((CONFIG / "mkdocs.yml").read_text(encoding="utf-8"))
    names, configs = [], {}
    for entry in config["markdown_extensions"]:
        name, options = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
        names.append(name)
        configs[name] = options or {}
    page_html, problems = _config_module("maths").render(markdown.markdown(text, extensions=names,
                                                                           extension_configs=configs))
    assert problems == [], problems
    return page_html


def test_maths_becomes_mathml_and_dollars_in_code_stay_as_written():
    page_html = _markdown_as_the_site_converts_it(
        "Inline $a_t * b_t$ and `echo $HOME $PATH`, then\n\n"
        "$$\n\\begin{aligned} h_t &= o \\odot \\tanh c_t \\\\ c_t &= f \\odot c_{t-1} \\end{aligned}\n$$\n\n"
        "```bash\nA=$x B=$y; echo \"$A$B\" $$\n```\n")
    assert page_html.count('<math xmlns="http://www.w3.org/1998/Math/MathML" display="inline">') == 1
    assert page_html.count('display="block"') == 1 and "<mtable" in page_html  # aligned, as split
    assert "<em>" not in page_html  # the maths' * and _ are not Markdown's emphasis
    assert "<code>echo $HOME $PATH</code>" in page_html
    assert 'A=$x B=$y; echo "$A$B" $$' in re.sub(r"<span[^>]*>|</span>", "", page_html)


@pytest.mark.parametrize("latex, why", [
    (r"\frac{a}", "needs 2"), (r"\unknownmacro x", r"unknown command \unknownmacro"),
    (r"a & b", "& outside an alignment"), (r"{a", "left open"), (r"x^", "MissingSuperScriptOrSubscriptError"),
])
def test_maths_that_cannot_be_converted_fails_the_build_naming_page_and_expression(latex, why, caplog, monkeypatch):
    # hooks.py imports maths.py as a top-level module (MkDocs puts its folder on sys.path)
    monkeypatch.setitem(sys.modules, "maths", _config_module("maths"))
    hooks = _config_module("hooks")
    page = types.SimpleNamespace(file=types.SimpleNamespace(src_uri="tutorials/some-page.md"))
    with caplog.at_level(logging.ERROR, logger="mkdocs"):
        out = hooks.on_page_content(f'<p>see <span class="arithmatex">\\({html.escape(latex)}\\)</span></p>',
                                    page=page, config=None, files=None)
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.name.startswith("mkdocs.")  # a strict build stops on it
    assert "tutorials/some-page.md" in record.getMessage() and f"${latex}$" in record.getMessage()
    assert why in record.getMessage()
    assert f"<code>{html.escape(latex)}</code>" in out


# -- the how-to guides' bash blocks -------------------------------------------------------------

#: ``<!-- needs: X -->`` -> why a block is skipped.
NEEDS = {"gpu": "needs GPUs, which a test machine may not have", "hosts": "needs several hosts"}
#: What a ``<!-- given: FILE -->`` file holds: a reader's own text.
GIVEN_TEXT = ("From fairest creatures we desire increase,\nThat thereby beauty's rose might never die,\n"
              "But as the riper should by time decease,\nHis tender heir might bear his memory:\n") * 8
#: Seconds one block may take (the slowest, `portable-rnn check`, takes about 25 on 2 cores).
BLOCK_TIMEOUT_S = 300
_MARK = re.compile(r"<!--\s*(needs|run by|given):\s*(.*?)\s*-->")


@dataclasses.dataclass
class BashBlock:
    page: Path
    line: int  # of the opening fence
    code: str
    marks: dict  # "needs" / "run by" / "given" -> the comment's text

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    def skip_reason(self) -> str | None:
        if "needs" in self.marks:
            return f"{self.where}: {NEEDS[self.marks['needs']]}"
        if "run by" in self.marks:
            return f"{self.where}: run by {self.marks['run by']} (programs side by side on free ports)"
        return None


def bash_blocks(page: Path) -> list[BashBlock]:
    """The ``bash`` fenced blocks of ``page``, each with the marks of the comments just above it."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = re.match(r"\s*(`{3,}|~{3,})\s*(\S*)", lines[i])
        if not opening:
            i += 1
            continue
        fence, language, start = opening.group(1), opening.group(2), i
        i += 1
        while i < len(lines) and not re.match(rf"\s*{fence[0]}{{{len(fence)},}}\s*$", lines[i]):
            i += 1
        if language == "bash":
            marks, above = {}, start - 1
            while above >= 0 and _MARK.fullmatch(lines[above].strip()):
                kind, text = _MARK.fullmatch(lines[above].strip()).groups()
                marks[kind] = text
                above -= 1
            blocks.append(BashBlock(page, start + 1, "\n".join(lines[start + 1 : i]), marks))
        i += 1
    return blocks


HOW_TO_BLOCKS = [block for page in sorted((DOCS / "how-to").glob("*.md")) for block in bash_blocks(page)]


def test_the_how_to_blocks_marks_are_known_and_its_shell_blocks_are_bash():
    """A mark this test does not know would skip a block silently; a ``sh`` or ``console`` block
    would not run at all."""
    for block in HOW_TO_BLOCKS:
        assert set(block.marks) <= {"needs", "run by", "given"}, block.where
        assert block.marks.get("needs", "gpu") in NEEDS, f"{block.where}: unknown need {block.marks['needs']!r}"
        if "run by" in block.marks:
            assert (ROOT / block.marks["run by"]).is_file(), f"{block.where}: no {block.marks['run by']}"
    for page in sorted((DOCS / "how-to").glob("*.md")):
        text = page.read_text(encoding="utf-8")
        other_shells = re.findall(r"^\s*```+\s*(sh|shell|console|zsh|shell-session)\b", text, re.M)
        assert other_shells == [], f"{page.name}: write shell commands as ```bash blocks, which run here"
        marks = len(_MARK.findall(text))
        assert marks == sum(len(b.marks) for b in HOW_TO_BLOCKS if b.page == page), \
            f"{page.name}: a mark that is not just above a bash block's fence"


def _run_bash(code: str, folder: Path) -> tuple[int, str]:
    """Run ``code`` with bash (-e, -u, pipefail) in ``folder``, the tools of this interpreter's
    environment first on PATH; kill whatever it started when it ends or overruns."""
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
               PYTHONPATH=os.pathsep.join(sys.path), MPLBACKEND="Agg")
    for name in ("KERAS_BACKEND", "JAX_PLATFORMS", "XLA_FLAGS", "PORTABLE_RNN_BACKEND"):
        env.pop(name, None)  # a block sets what it needs itself
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", code], cwd=folder, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return -1, f"(killed after {BLOCK_TIMEOUT_S} s)\n{output}"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # a worker or server the block left behind
        except ProcessLookupError:
            pass
    return proc.returncode, output


@pytest.mark.processes
@pytest.mark.parametrize("page", sorted({b.page for b in HOW_TO_BLOCKS if b.skip_reason() is None}),
                         ids=lambda page: page.name)
def test_the_bash_blocks_of_each_how_to_page_run(page, tmp_path):
    """Each block a reader can run here, in the page's order, in one fresh folder (a block may use
    what an earlier one wrote)."""
    for block in (b for b in HOW_TO_BLOCKS if b.page == page and b.skip_reason() is None):
        for name in block.marks.get("given", "").split():
            (tmp_path / name).write_text(GIVEN_TEXT, encoding="utf-8")
        status, output = _run_bash(block.code, tmp_path)
        assert status == 0, f"{block.where} exited with {status}:\n{block.code}\n---\n{output[-4000:]}"


@pytest.mark.parametrize("block", [b for b in HOW_TO_BLOCKS if b.skip_reason() is not None],
                         ids=lambda block: f"{block.page.name}:{block.line}")
def test_a_how_to_block_that_needs_what_this_machine_lacks_is_skipped(block):
    pytest.skip(block.skip_reason())
