"""px-repack's ``%`` path templates: parsing, validation and rendering.

A field is ``%Keyword`` (a DICOM keyword), optionally after one function:
``%_name|args_Keyword``. Functions: ``pad|W,C`` (right-justify to width ``W``
with ``C``, default ``0``, never truncating), ``seahash|N`` and ``md5|N`` (the
first ``N`` lowercase hex digits; SeaHash not zero-padded, as rx-repack),
``strmsk|MASK`` (``*`` keeps a character, any other mask character replaces
it), ``nospc|C`` (runs of non-word characters become ``C``).

In the ``rx-repack`` layout (and custom templates) a function applies to its
own element, and an absent or empty element renders as its bare keyword. The
``px-repack-*`` layouts follow px-repack's substitution to the letter
(:meth:`Template.render_px`), so a site moving from px-repack keeps its tree:
``str()`` of every present element whose keyword appears in the text,
functions paired with elements by position (px's bug, kept), and a field
nobody replaced left as text. Either way an absent or empty element is
reported as missing. Templates are parsed once: an invalid one is an error
before any file is touched.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from pydicom.datadict import keyword_dict

from ._errors import TemplateError
from ._memo import Memo
from ._sanitize import sanitize_component, seahash_hex

_FIELD = re.compile(
    r"%(?:_(?P<function>[A-Za-z][A-Za-z0-9]*)(?:\|(?P<args>[^_%]*))?_)?(?P<word>[A-Za-z0-9]*)"
)


def _positive_int(text: str, what: str, source: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise TemplateError(f"{what} must be a positive whole number in {source!r}, not {text!r}")
    return int(text)


def _pad(value: str, args: str) -> str:
    if not args:
        return value
    width, _, fill = args.partition(",")
    return value.rjust(int(width), fill or "0")


def _md5(value: str, args: str) -> str:
    text = hashlib.md5(value.encode("utf-8"), usedforsecurity=False).hexdigest()
    return text[: int(args)] if args else text


def _seahash(value: str, args: str) -> str:
    text = seahash_hex(value)
    return text[: int(args)] if args else text


def _strmsk(value: str, mask: str) -> str:
    return "".join(v if m == "*" else m for v, m in zip(value, mask, strict=False))


def _nospc(value: str, joiner: str) -> str:
    return joiner.join(re.sub(r"\W+", " ", value).split())


#: The template functions, each ``(value, its arguments' text) -> value``: one table for
#: both the validated templates (:func:`_make_function`) and px's (:func:`_px_function`).
_TRANSFORMS: dict[str, Callable[[str, str], str]] = {
    "pad": _pad, "seahash": _seahash, "md5": _md5, "strmsk": _strmsk, "nospc": _nospc,
}  # fmt: skip


def _make_function(name: str, args: str | None, source: str) -> Callable[[str], str]:
    """Build the value transformation for ``_name|args_``, validating its arguments."""
    if name not in _TRANSFORMS:
        raise TemplateError(
            f"unknown function {name!r} in {source!r} (known: {', '.join(_TRANSFORMS)})"
        )
    if name == "pad":
        width_text, _, fill = (args or "").partition(",")
        width = _positive_int(width_text, "pad width", source)
        fill = fill or "0"
        if len(fill) != 1:
            raise TemplateError(f"pad fill must be one character in {source!r}, not {fill!r}")
        args = f"{width},{fill}"
    elif name in ("seahash", "md5") and args:
        _positive_int(args, f"{name} length", source)
    elif name == "strmsk" and not args:
        raise TemplateError(f"strmsk needs a mask in {source!r}")
    transform, text = _TRANSFORMS[name], args or ""
    return lambda value: transform(value, text)


@dataclass(frozen=True)
class Field:
    """One ``%`` field of a template: a keyword and an optional function."""

    keyword: str
    transform: Callable[[str], str] | None

    def render(self, value: str | None) -> str:
        """The field's text for ``value`` (``None``: absent or empty)."""
        if value is None:
            return self.keyword
        return self.transform(value) if self.transform else value


@dataclass(frozen=True)
class RenderedComponent:
    """A rendered, sanitised path component and the keywords it lacked."""

    text: str
    missing: tuple[str, ...]


#: Rendered components a template remembers (by the values it read), at most.
_RENDERED_AT_MOST = 256


@functools.cache
def _every_keyword() -> tuple[str, ...]:
    """Every keyword of pydicom's dictionary that names one tag."""
    return tuple(sorted(k for k in keyword_dict if k))


#: px-repack's functions, in the order it applies them (``name`` is not supported).
PX_FUNCTIONS = {
    "px-repack-3.10": ("md5", "strmsk", "nospc", "pad"),
    "px-repack-3.12": ("seahash", "md5", "strmsk", "nospc", "pad"),
}


def _px_function(astr: str, func: str, value: str, functions: tuple[str, ...]) -> tuple[str, str]:
    """px-repack's function processing for one field: the template without the
    function's ``_name|args_`` text, and the value it makes. ``func`` is the text
    after the field's ``%`` (px's token), whichever element it was paired with;
    each of ``functions`` whose name is in it applies, in that order."""
    for name in functions:
        if name not in func:
            continue
        spec = func.split("_")[1:][0] if "_" in func else func
        args = spec.split("|")
        value = _TRANSFORMS[name](value, args[1] if len(args) > 1 else "")
        astr = astr.replace(f"_{spec}_", "")
    return astr, value


@dataclass(frozen=True)
class Template:
    """A parsed template: literal strings and :class:`Field` objects in order.

    Rendering is pure, and the root, study and series templates see the
    same values in every instance of a series: each template remembers what
    it rendered for the last few sets of values (the hashes and the
    sanitising are done once per series).
    """

    source: str
    parts: tuple[str | Field, ...]
    #: The px-repack functions it applies, in order, when it renders by px-repack's
    #: rules (:meth:`render_px`); empty: rendered field by field.
    px_functions: tuple[str, ...] = ()
    _rendered: Memo[tuple[object, ...], RenderedComponent] = field(
        default_factory=lambda: Memo(_RENDERED_AT_MOST), compare=False, repr=False
    )

    @functools.cached_property
    def fields(self) -> tuple[str, ...]:
        """The keywords of the template's own fields, in order."""
        return tuple(p.keyword for p in self.parts if isinstance(p, Field))

    @functools.cached_property
    def px_tokens(self) -> tuple[str, ...]:
        """px's view of the template: the text after each ``%``."""
        return tuple(self.source.split("%")[1:])

    @property
    def px(self) -> bool:
        """Whether it renders by px-repack's rules."""
        return bool(self.px_functions)

    @functools.cached_property
    def keywords(self) -> tuple[str, ...]:
        """The DICOM keywords the template reads: its fields, and (px rules) every
        keyword that appears anywhere in a field's text, which px replaces too."""
        if not self.px:
            return self.fields
        tokens = self.px_tokens
        found = (k for k in _every_keyword() if any(k in token for token in tokens))
        return tuple(dict.fromkeys((*self.fields, *found)))

    def render_px(
        self, present: Mapping[str, str], missing: tuple[str, ...] = ()
    ) -> RenderedComponent:
        """Render as px-repack 3.10 did (``tagsInString_process``), then sanitise.

        ``present`` maps each of :attr:`keywords` that the instance has to
        ``str()`` of its value as pydicom 2.4 gave it; ``missing`` is what to
        report as missing.
        """
        key = (*sorted(present.items()), missing)
        return self._rendered.made(key, lambda: self._render_px(present, missing))

    def _render_px(self, present: Mapping[str, str], missing: tuple[str, ...]) -> RenderedComponent:
        astr = self.source
        tokens = self.px_tokens
        # px: the dataset's keywords (sorted, as Dataset.dir() lists them) that
        # appear in a token, in the order of the first token each appears in.
        substituted = [k for k in sorted(present) if any(k in token for token in tokens)]
        substituted.sort(key=lambda k: next(i for i, t in enumerate(tokens) if k in t))
        for keyword, func in zip(substituted, tokens, strict=False):
            astr, value = _px_function(astr, func, present[keyword], self.px_functions)
            astr = astr.replace("%" + keyword, value)
        return RenderedComponent(sanitize_component(astr), missing)

    def render(self, values: Mapping[str, str | None]) -> RenderedComponent:
        """Render with ``values`` (keyword -> text or ``None``) and sanitise."""
        key = tuple(values.get(keyword) for keyword in self.keywords)
        return self._rendered.made(key, lambda: self._render(values))

    def _render(self, values: Mapping[str, str | None]) -> RenderedComponent:
        pieces: list[str] = []
        missing: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                pieces.append(part)
                continue
            value = values.get(part.keyword)
            if value is None:
                missing.append(part.keyword)
            pieces.append(part.render(value))
        return RenderedComponent(sanitize_component("".join(pieces)), tuple(missing))


def _longest_keyword(word: str) -> str | None:
    for end in range(len(word), 0, -1):
        if word[:end] in keyword_dict:
            return word[:end]
    return None


def parse_template(source: str, *, px: str | None = None) -> Template:
    """Parse a px-repack ``%`` template, raising :class:`TemplateError` if invalid.

    ``px``: render it by the rules of that px-repack layout
    (``"px-repack-3.10"``, ``"px-repack-3.12"``; :meth:`Template.render_px`).

    The keyword after ``%`` is the longest prefix of the following letters and
    digits that is a DICOM keyword, as px-repack matched it; the rest is text.
    """
    if not source.strip():
        raise TemplateError("a template cannot be empty")
    parts: list[str | Field] = []
    position = 0
    for match in _FIELD.finditer(source):
        if match.start() > position:
            parts.append(source[position : match.start()])
        word = match["word"]
        keyword = _longest_keyword(word)
        if keyword is None:
            raise TemplateError(
                f"{match.group(0)!r} in template {source!r} does not name a DICOM keyword"
                " (keywords are spelled as in the standard, e.g. %PatientID)"
            )
        function = match["function"]
        transform = _make_function(function, match["args"], source) if function else None
        parts.append(Field(keyword, transform))
        if len(word) > len(keyword):
            parts.append(word[len(keyword) :])
        position = match.end()
    if position < len(source):
        parts.append(source[position:])
    return Template(source, tuple(parts), PX_FUNCTIONS[px] if px else ())


class NamedLayout(StrEnum):
    """The layouts that users migrate from, by name."""

    RX_REPACK = "rx-repack"
    PX_REPACK_3_10 = "px-repack-3.10"
    PX_REPACK_3_12 = "px-repack-3.12"


_ROOT = "%PatientID-%PatientName-%PatientBirthDate"
_STUDY = "%StudyDescription-%AccessionNumber-%StudyDate"
_IMAGE = "%_pad|4,0_InstanceNumber-%SOPInstanceUID.dcm"
_SERIES = {
    NamedLayout.RX_REPACK: (
        "%_pad|5,0_SeriesNumber-%SeriesDescription-%_seahash|7_SeriesInstanceUID"
    ),
    NamedLayout.PX_REPACK_3_10: "%_pad|5,0_SeriesNumber-%SeriesDescription",
    NamedLayout.PX_REPACK_3_12: "%SeriesDescription-%_seahash|7_SeriesInstanceUID",
}


@dataclass(frozen=True)
class Layout:
    """The four templates that place an instance: root/study/series/image."""

    root: Template
    study: Template
    series: Template
    image: Template
    name: str = "custom"

    @classmethod
    def named(
        cls,
        name: str = NamedLayout.RX_REPACK.value,
        *,
        root: str | None = None,
        study: str | None = None,
        series: str | None = None,
        image: str | None = None,
    ) -> Layout:
        """A named layout, with any of its four templates overridden."""
        try:
            layout = NamedLayout(name)
        except ValueError:
            known = ", ".join(n.value for n in NamedLayout)
            raise TemplateError(f"unknown layout {name!r} (known: {known})") from None
        overridden = any(t is not None for t in (root, study, series, image))
        px = None if layout is NamedLayout.RX_REPACK else layout.value
        return cls(
            root=parse_template(root or _ROOT, px=px),
            study=parse_template(study or _STUDY, px=px),
            series=parse_template(series or _SERIES[layout], px=px),
            image=parse_template(image or _IMAGE, px=px),
            name=layout.value + ("+custom" if overridden else ""),
        )

    @property
    def px(self) -> bool:
        """Whether the templates follow px-repack's rules (a ``px-repack-*`` layout)."""
        return self.root.px

    @classmethod
    def from_sources(cls, sources: tuple[str, str, str, str], name: str = "custom") -> Layout:
        """A layout from its four template strings (how it crosses a process boundary)."""
        px = next((n for n in PX_FUNCTIONS if name.startswith(n)), None)
        root, study, series, image = (parse_template(s, px=px) for s in sources)
        return cls(root, study, series, image, name)

    @property
    def sources(self) -> tuple[str, str, str, str]:
        """The four template strings, outermost first."""
        return (self.root.source, self.study.source, self.series.source, self.image.source)

    @functools.cached_property
    def templates(self) -> tuple[Template, Template, Template, Template]:
        """The four templates, outermost first."""
        return (self.root, self.study, self.series, self.image)

    @functools.cached_property
    def keywords(self) -> frozenset[str]:
        """Every keyword any of the templates reads."""
        return frozenset(k for t in self.templates for k in t.keywords)
