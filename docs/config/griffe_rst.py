"""Griffe extensions for the reference pages.

:class:`RstToMarkdown`: the package's reStructuredText markup as the site's Markdown. The
docstrings are numpydoc with Sphinx roles (``:func:`apply```) and ``.. math::`` blocks. For
the reference pages:

- a role naming a documented object becomes a cross-reference to its entry (the strict
  build fails if that entry does not exist); one naming something the reference does
  not render (a private helper, the ``app`` programs) becomes plain code;
- ``.. math::`` blocks become LaTeX code blocks and ``:math:`x``` inline code;
- the type of a section's entry (``name : type``, or a Returns line's type alone) is shown
  as code, so it keeps its ``*`` as written and drops rST's double backquotes around literals.

:class:`HideSpecialMembers`: classes' special methods (``__post_init__``, ``__repr__``) get
no entry. mkdocstrings' ``filters: public`` counts them as public, and its regular-expression
filters would drop the modules' ``__all__``, which decides what else is public.
"""

from __future__ import annotations

import re
import textwrap

import griffe

#: The modules the reference renders (their public members get entries).
RENDERED = {
    "portable_rnn", "portable_rnn.layers", "portable_rnn.torch", "portable_rnn.jax", "portable_rnn.stepbystep",
    "portable_rnn.cs231n", "portable_rnn.model", "portable_rnn.losses", "portable_rnn.optim",
    "portable_rnn.activations", "portable_rnn.dense", "portable_rnn.init", "portable_rnn.backends", "portable_rnn.io",
    "portable_rnn.interop", "portable_rnn.interop.torch", "portable_rnn.interop.keras", "portable_rnn.interop.flax",
    "portable_rnn.interop.courses", "portable_rnn.parallel", "portable_rnn.dask", "portable_rnn.engine.cells",
    "portable_rnn.engine.sequence", "portable_rnn.engine.loop", "portable_rnn.course_layouts", "portable_rnn.testing",
    "portable_rnn.testing.fixtures", "portable_rnn.testing.gradcheck", "portable_rnn.minimal",
}
_ROLE = re.compile(r":(?:func|meth|class|mod|data|attr|obj|exc):`(~?)([^`<]+?)(?:\(\))?`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")


def _member(obj, name):
    members = obj.all_members if obj.is_class else obj.members
    return members.get(name)


def _exists(pkg, path: str) -> bool:
    if not path.startswith(pkg.name + ".") and path != pkg.name:
        return False
    obj = pkg
    for part in path.split(".")[1:]:
        member = _member(obj, part)
        if member is None:
            return False
        obj = member.final_target if member.is_alias else member
    return True


def _entry(pkg: griffe.Module, path: str):
    """The identifier of the reference entry that documents ``path``, or None if none does."""
    obj, entry = pkg, pkg.name
    for part in path.split(".")[1:]:
        member = _member(obj, part)
        if member is None or part.startswith("_"):
            return None
        if obj.is_module and obj.exports is not None and part not in obj.exports:
            return None
        if member.is_alias and obj.is_module:
            # a re-export: the package page only lists its names, other modules render theirs
            if obj.path == pkg.name:
                return _entry(pkg, member.final_target.path)
        member = member.final_target if member.is_alias else member
        obj, entry = member, f"{entry}.{part}"
        if obj.is_module and obj.path not in RENDERED:
            return None
    return entry


def _resolve(pkg, owner, name: str):
    """The entry of the documented object that ``name``, in ``owner``'s docstring, means; or None."""
    scopes = []
    scope = owner
    while scope is not None:
        scopes.append(scope.path)
        scope = scope.parent
    for path in [name] + [f"{s}.{name}" for s in scopes]:
        try:
            if _exists(pkg, path):
                return _entry(pkg, path)
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
    return None


_PARAM_LINE = re.compile(r"^\*{0,2}\w+(\s*,\s*\*{0,2}\w+)*(\s+:(\s+.*)?)?$")
_PARAM_SECTIONS = {"Parameters", "Other Parameters"}


def _close_parameter_sections(text: str) -> str:
    """Prose after a Parameters section's entries, set off by a blank line, goes under Notes.

    numpydoc would read each such line as one more parameter.
    """
    lines = text.splitlines()
    out, in_params, indent = [], False, ""
    for i, line in enumerate(lines):
        stripped = line.strip()
        header = i + 1 < len(lines) and stripped and set(lines[i + 1].strip()) == {"-"}
        if header:
            in_params = stripped in _PARAM_SECTIONS
            indent = line[: len(line) - len(line.lstrip())]
        elif (in_params and stripped and out and not out[-1].strip()
              and line[: len(line) - len(line.lstrip())] == indent and not _PARAM_LINE.match(stripped)):
            out += [f"{indent}Notes", f"{indent}-----"]
            in_params = False
        out.append(line)
    return "\n".join(out)


def _math_blocks(text: str) -> str:
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        if line.strip() == ".. math::":
            indent = line[: len(line) - len(line.lstrip())]
            i += 1
            body = []
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
                body.append(lines[i])
                i += 1
            while body and not body[-1].strip():
                body.pop()
            out += [f"{indent}```latex", *(indent + b for b in textwrap.dedent("\n".join(body)).strip("\n").splitlines()),
                    f"{indent}```", ""]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


_ENTRY = re.compile(r"^\s*\*{0,2}\w+(\s*,\s*\*{0,2}\w+)* : ")  # "name : type", whose type shows as code
#: Sections whose lines at the section's own indentation are entries: ``name : type``, or (Returns,
#: Yields, Raises...) a type alone. griffe shows the type as code, where Markdown means nothing.
_ENTRY_SECTIONS = {"Parameters", "Other Parameters", "Returns", "Yields", "Receives", "Raises", "Warns",
                   "Attributes"}
_CODE_SPAN = re.compile(r"(`+[^`]*`+)")
_STAR = re.compile(r"(?<=[\w)])\*(?=[\w(])")
_LITERAL = re.compile(r"``([^`]+)``")


def _plain_text(text: str) -> str:
    """reStructuredText's plain ``a*b`` and ``text::`` as Markdown would show them.

    A ``*`` between two words (``dirs*H``) is escaped, else Markdown reads emphasis; a
    paragraph ending ``::`` (the literal block marker) ends ``:``. Code spans, fenced and
    indented blocks are left alone. An entry line of a section, whose type is shown as code,
    keeps its ``*`` and drops the double backquotes around its literals.
    """
    lines = text.splitlines()
    out, fenced, section, indent = [], False, None, ""
    for i, line in enumerate(lines):
        stripped = line.strip()
        if i + 1 < len(lines) and stripped and set(lines[i + 1].strip()) == {"-"}:
            section, indent = stripped, line[: len(line) - len(line.lstrip())]
        at_entry = (section in _ENTRY_SECTIONS and stripped and set(stripped) != {"-"}
                    and line[: len(line) - len(line.lstrip())] == indent)
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced:
            pass
        elif at_entry or _ENTRY.match(line):
            line = _LITERAL.sub(r"\1", line)
        elif not line.startswith("    "):
            parts = _CODE_SPAN.split(line)  # code spans at the odd indices
            parts[::2] = [_STAR.sub(r"\\*", part) for part in parts[::2]]
            line = "".join(parts)
            if line.endswith("::") and not line.endswith(" ::"):
                line = line[:-1]
        out.append(line)
    return "\n".join(out)


def markdown(pkg, owner, text: str) -> str:
    """``text`` (a docstring of ``owner``) with its reStructuredText markup as Markdown."""
    text = _plain_text(_close_parameter_sections(_math_blocks(text)))
    text = _MATH_ROLE.sub(lambda m: f"`{m.group(1)}`", text)

    def role(m):
        short, name = m.group(1), m.group(2).strip()
        shown = name.rsplit(".", 1)[-1] if short else name
        entry = _resolve(pkg, owner, name)
        return f"[`{shown}`][{entry}]" if entry is not None else f"`{shown}`"

    return _ROLE.sub(role, text)


class RstToMarkdown(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        seen = set()

        def walk(obj):
            if id(obj) in seen or obj.is_alias:
                return
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = markdown(pkg, obj, obj.docstring.value)
            for member in obj.members.values():
                walk(member)

        walk(pkg)


#: The special methods that keep an entry: the constructor (merged into its class's entry) and
#: a call, which is how an instance is used.
_SHOWN_SPECIAL = {"__init__", "__call__"}


class HideSpecialMembers(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        seen = set()

        def walk(obj):
            if id(obj) in seen or obj.is_alias:
                return
            seen.add(id(obj))
            for name, member in obj.members.items():
                if (obj.is_class and not member.is_alias and name.startswith("__") and name.endswith("__")
                        and name not in _SHOWN_SPECIAL):
                    member.public = False
                walk(member)

        walk(pkg)
