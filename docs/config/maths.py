"""The pages' LaTeX maths as MathML, made when the site is built.

``pymdownx.arithmatex`` (generic mode, dollar syntax only; see mkdocs.yml) finds ``$...$`` and
``$$...$$`` outside code while Markdown is parsed, so emphasis and escapes never touch the
LaTeX, and leaves it as ``<span class="arithmatex">\\(...\\)</span>`` and
``<div class="arithmatex">\\[...\\]</div>``. :func:`render` replaces each with the MathML that
``latex2mathml`` makes of it. Browsers draw MathML themselves: the site loads no script or font
for its maths, and a reader offline sees the same page.

latex2mathml turns what it does not understand into text (``\\foo`` becomes the identifier
``\\foo``, a stray ``&`` the identifier ``&``) or into incomplete elements (``\\frac{a}``), so
:func:`mathml` checks its result and raises :class:`MathsError` for each of those; the hook
reports it with the page and the expression, and the strict build fails.
"""

from __future__ import annotations

import html
import re
from xml.etree.ElementTree import Element, tostring

from latex2mathml.converter import convert_to_element

#: Environments latex2mathml lacks -> one it has with the same layout (``split``: rows of
#: right- and left-aligned column pairs, no gap between them, which is ``aligned``'s).
_ENVIRONMENTS = {"aligned": "split"}
_ENVIRONMENT = re.compile(r"\\(begin|end)\{(%s)\}" % "|".join(_ENVIRONMENTS))
#: Elements and the number of children they need.
_ARITY = {"mfrac": 2, "msub": 2, "msup": 2, "msubsup": 3, "mover": 2, "munder": 2, "munderover": 3, "mroot": 2}
_TOKENS = {"mi", "mn", "mo", "mtext", "ms"}


class MathsError(ValueError):
    """A LaTeX expression that has no faithful MathML."""


def _unbalanced(latex: str) -> str | None:
    depth, i = 0, 0
    while i < len(latex):
        if latex[i] == "\\":
            i += 2  # an escaped character (\{, \}, \\) is not a group
            continue
        depth += {"{": 1, "}": -1}.get(latex[i], 0)
        if depth < 0:
            return "a } closes no group"
        i += 1
    return f"{depth} group(s) left open" if depth else None


def _flatten_tokens(element: Element) -> None:
    """A token made of tokens (``\\mathrel{+=}`` gives ``<mo><mrow><mo>+</mo><mo>=</mo></mrow></mo>``)
    becomes one token of their text (``<mo>+=</mo>``): a token holds text only."""
    for child in element:
        _flatten_tokens(child)
    if element.tag in _TOKENS and len(element):
        descendants = list(element.iter())[1:]
        if all(d.tag in _TOKENS or d.tag == "mrow" for d in descendants):
            element.text = (element.text or "") + "".join(d.text or "" for d in descendants if d.tag in _TOKENS)
            for child in list(element):
                element.remove(child)


def _check(element: Element) -> None:
    for node in element.iter():
        text = (node.text or "").strip()
        if node.tag in _TOKENS:
            if len(node):
                raise MathsError(f"<{node.tag}> holds elements, not text")
            if text.startswith("\\"):
                raise MathsError(f"unknown command {text}")
            if text == "&":
                raise MathsError("& outside an alignment environment")
        needed = _ARITY.get(node.tag)
        if needed is not None and len(node) != needed:
            raise MathsError(f"<{node.tag}> got {len(node)} argument(s), needs {needed}")


def mathml(latex: str, *, display: bool) -> str:
    """The MathML of ``latex``: ``<math display="block">`` if ``display``, else inline.

    Raises :class:`MathsError` if latex2mathml cannot convert it, or converts it to something
    that is not what the LaTeX says.
    """
    if not latex.strip():
        raise MathsError("empty")
    problem = _unbalanced(latex)
    if problem:
        raise MathsError(problem)
    source = _ENVIRONMENT.sub(lambda m: f"\\{m.group(1)}{{{_ENVIRONMENTS[m.group(2)]}}}", latex)
    try:
        element = convert_to_element(source, display="block" if display else "inline")
    except Exception as error:  # latex2mathml's own exceptions, and the parser's on odd input
        raise MathsError(f"{type(error).__name__}{f': {error}' if str(error) else ''}") from error
    _flatten_tokens(element)
    _check(element)
    # latex2mathml keeps symbols as character references in the text ("&#x0002B;"): they
    # become references again, and every other character stays escaped.
    return re.sub(r"&amp;(#x[0-9A-Fa-f]+;)", r"&\1", tostring(element, encoding="unicode"))


_INLINE = re.compile(r'(<span class="arithmatex">)\\\((.*?)\\\)(</span>)', re.S)
_BLOCK = re.compile(r'(<div class="arithmatex">)\\\[(.*?)\\\](</div>)', re.S)
#: What may hold a dollar sign that is not maths.
_NOT_TEXT = re.compile(r"<(pre|code|script|style)\b.*?</\1>", re.S)
_MATH = re.compile(r"<math\b.*?</math>", re.S)
_TAG = re.compile(r"<[^>]*>")
#: Dollars that arithmatex left in the text but a reader would take for maths: ``$$``, or
#: ``$x$`` with no space inside (its rule for inline maths; a display needs a block of its own).
_LEFT_OVER = re.compile(r"\$\$|\$(?!\s)[^$\n]+?(?<!\s)\$")


def render(page_html: str) -> tuple[str, list[str]]:
    """``page_html`` with arithmatex's maths as MathML, and a message for each problem.

    A problem is an expression that :func:`mathml` refuses (it stays on the page as code) or
    dollar maths that arithmatex did not take, left as text.
    """
    problems = []

    def convert(match: re.Match, display: bool) -> str:
        latex = html.unescape(match.group(2)).strip()
        try:
            return match.group(1) + mathml(latex, display=display) + match.group(3)
        except MathsError as why:
            problems.append(f"cannot convert the maths {'$$' if display else '$'}{latex}"
                            f"{'$$' if display else '$'} to MathML: {why}")
            return f"{match.group(1)}<code>{html.escape(latex)}</code>{match.group(3)}"

    page_html = _BLOCK.sub(lambda m: convert(m, True), page_html)
    page_html = _INLINE.sub(lambda m: convert(m, False), page_html)
    # Converted maths stays as a word, so that dollars around it (inline $$x$$) are seen.
    text = html.unescape(_TAG.sub("", _MATH.sub("[maths]", _NOT_TEXT.sub(" ", page_html))))
    for match in _LEFT_OVER.finditer(text):
        context = " ".join(text[max(0, match.start() - 40): match.end() + 40].split())
        problems.append(f"dollar maths left as text, near {context!r}: inline maths is $x$ with no space "
                        "inside the dollars, display maths a $$...$$ block with a blank line before and after "
                        "(in a list item, indented 4 spaces)")
    return page_html, problems
