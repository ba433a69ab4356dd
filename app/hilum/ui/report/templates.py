"""Report templates: sections per modality / exam, in English and French, shipped and the user's own.

A template is a TOML file (``resources/report_templates/*.toml``, and the
user's folder :func:`user_template_dir`, whose files of the same name win)::

    name = "CT chest"
    language = "en"                     # en | fr: also the spell-checker's language
    modalities = ["CT"]                 # empty: any
    body_parts = ["CHEST", "THORAX"]    # Body Part Examined values it fits; empty: any
    keywords = ["chest", "thorax"]      # words of the Study Description it fits
    [[sections]]
    key = "findings"                    # indication | technique | comparison | findings | impression | any other
    title = "Findings"
    text = "Lungs: ..."                 # what the section starts with

The sections are the report's (20a stores them as the ordered list of
``{key, title, text}``). :func:`choose_template` picks the best one for a
study: same language, then modality, body part and description words.
Headless (no Qt): the editor and the tests use the same code.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hilum.archive.reports import Section
from hilum.errors import HilumError

__all__ = [
    "LANGUAGES",
    "SECTION_KEYS",
    "ReportTemplate",
    "Section",
    "TemplateError",
    "choose_template",
    "load_template",
    "load_templates",
    "shipped_template_dir",
    "user_template_dir",
]

log = logging.getLogger(__name__)

LANGUAGES = {"en": "English", "fr": "Français"}
SECTION_KEYS = ("indication", "technique", "comparison", "findings", "impression")
"""The usual sections, in order; a template may name others (kept in its order)."""
_KEY_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_TOP_KEYS = {"name", "language", "modalities", "body_parts", "keywords", "sections"}
_SECTION_FIELDS = {"key", "title", "text"}


class TemplateError(HilumError, ValueError):
    """A template file that cannot be used: the file, the key and why."""


@dataclass(frozen=True)
class ReportTemplate:
    """A template read from a file; ``id`` is the file name without ``.toml`` (``ct_chest.en``)."""

    id: str
    name: str
    language: str
    sections: tuple[Section, ...]
    modalities: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()
    path: Path | None = field(default=None, compare=False)
    user: bool = False

    @property
    def label(self) -> str:
        """What the template combo shows: ``CT chest (EN)``, ``… (mine)`` for the user's own."""
        return f"{self.name} ({self.language.upper()})" + (" — mine" if self.user else "")

    def score(self, modality: str, body_part: str, description: str) -> int:
        """How well this template fits a study (higher is better; a generic one scores 1)."""
        mods = {m.upper() for m in self.modalities}
        if mods and modality.upper() not in mods:
            return 0
        s = 1 + (4 if mods else 0)
        if self.body_parts and body_part.upper() in {b.upper() for b in self.body_parts}:
            s += 8
        words = set(re.findall(r"[^\W\d_]+", description.lower()))
        s += 3 * len(words & {k.lower() for k in self.keywords})
        return s


def shipped_template_dir() -> Path:
    from hilum.resources import resource

    return resource("report_templates")


def user_template_dir() -> Path:
    """The user's own templates: ``report_templates/`` in the platform's user config folder for hilum
    (``HILUM_CONFIG_DIR`` overrides the folder, for tests and portable installs)."""
    env = os.environ.get("HILUM_CONFIG_DIR")
    if env:
        return Path(env).expanduser() / "report_templates"
    import platformdirs

    return Path(platformdirs.user_config_dir("hilum", appauthor=False)) / "report_templates"


def _strings(doc: dict[str, object], key: str, where: str) -> tuple[str, ...]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TemplateError(f"{where}: {key} must be a list of strings")
    return tuple(value)


def load_template(path: str | os.PathLike[str], *, user: bool = False) -> ReportTemplate:
    """Read and check one template file; raises :class:`TemplateError` naming the file and the key."""
    p = Path(path)
    where = p.name
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TemplateError(f"{where}: cannot read it ({exc})") from exc
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise TemplateError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    name = doc.get("name")
    if not isinstance(name, str) or not name.strip():
        raise TemplateError(f"{where}: name must be a non-empty string")
    language = doc.get("language", "en")
    if language not in LANGUAGES:
        raise TemplateError(f"{where}: language must be one of {', '.join(LANGUAGES)}, not {language!r}")
    raw = doc.get("sections")
    if not isinstance(raw, list) or not raw:
        raise TemplateError(f"{where}: sections must be a non-empty list of [[sections]] tables")
    sections: list[Section] = []
    for i, s in enumerate(raw, start=1):
        if not isinstance(s, dict):
            raise TemplateError(f"{where}: sections[{i}] must be a table")
        extra = set(s) - _SECTION_FIELDS
        if extra:
            raise TemplateError(f"{where}: sections[{i}]: unknown key(s) {', '.join(sorted(extra))}")
        key, title, text = s.get("key"), s.get("title"), s.get("text", "")
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise TemplateError(f"{where}: sections[{i}].key must be lower-case letters, digits or _")
        if any(x.key == key for x in sections):
            raise TemplateError(f"{where}: sections[{i}].key {key!r} appears twice")
        if not isinstance(title, str) or not title.strip():
            raise TemplateError(f"{where}: sections[{i}].title must be a non-empty string")
        if not isinstance(text, str):
            raise TemplateError(f"{where}: sections[{i}].text must be a string")
        sections.append(Section(key, title.strip(), text.strip("\n")))
    return ReportTemplate(
        id=p.name.removesuffix(".toml"),
        name=name.strip(),
        language=str(language),
        sections=tuple(sections),
        modalities=_strings(doc, "modalities", where),
        body_parts=_strings(doc, "body_parts", where),
        keywords=_strings(doc, "keywords", where),
        path=p,
        user=user,
    )


def load_templates(
    folders: Iterable[str | os.PathLike[str]] | None = None, *, problems: list[str] | None = None
) -> list[ReportTemplate]:
    """Every template: the shipped ones, then the user's (a user file of the same name replaces the
    shipped one). A bad file is skipped and its error appended to *problems* (and logged)."""
    if folders is None:
        dirs: list[tuple[Path, bool]] = [(shipped_template_dir(), False), (user_template_dir(), True)]
    else:
        dirs = [(Path(f), i > 0) for i, f in enumerate(folders)]
    by_id: dict[str, ReportTemplate] = {}
    for folder, user in dirs:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            try:
                t = load_template(path, user=user)
            except TemplateError as exc:
                log.warning("report template skipped: %s", exc)
                if problems is not None:
                    problems.append(str(exc))
                continue
            by_id[t.id] = t
    return sorted(by_id.values(), key=lambda t: (t.language, t.name.lower(), t.user))


def choose_template(
    templates: Sequence[ReportTemplate],
    *,
    modality: str = "",
    body_part: str = "",
    description: str = "",
    language: str = "en",
) -> ReportTemplate | None:
    """The template that fits a study best, in *language* if there is one (else any language)."""
    for pool in ([t for t in templates if t.language == language], list(templates)):
        scored = [(t.score(modality, body_part, description), -i, t) for i, t in enumerate(pool)]
        scored = [s for s in scored if s[0] > 0]
        if scored:
            return max(scored, key=lambda s: (s[0], s[1]))[2]
    return None
