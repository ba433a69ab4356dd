"""Spell-checking of report text: pyspellchecker (English, French) + radiology words + the user's list.

:class:`Speller` is the headless part: which words of a text are misspelt
(:meth:`Speller.misspelt`: ``(start, length, word)`` in the text), suggestions
for one, and "add to dictionary" into the user's word list
(``words.<lang>.txt`` beside the user's templates, one word a line, read again
on start). pyspellchecker's dictionaries lack most radiology words, so a
shipped list per language (``resources/spelling/medical.<lang>.txt``) is added
first. What is not checked: words of one or two letters (French elisions l',
d', qu'), words with digits (T2, C5-C6), all-capital acronyms (CT, IRM,
FLAIR), and words the checker knows in lower case.

:class:`SpellHighlighter` underlines the misspelt words of a
``QTextDocument`` with a red wavy line (``QTextCharFormat.SpellCheckUnderline``).
Dictionaries load off the GUI thread (:func:`speller_async`); until then nothing
is underlined.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QColor, QSyntaxHighlighter, QTextCharFormat, QTextDocument

__all__ = ["SpellHighlighter", "Speller", "WORD_RE", "speller", "speller_async", "user_words_path"]

log = logging.getLogger(__name__)

WORD_RE = re.compile(r"[^\W\d_]+(?:[-'’][^\W\d_]+)*")
"""A word: letters, hyphenated or with an apostrophe inside (``l'épanchement`` is split below)."""
_ELISION = re.compile(r"^(?:[ldjmnst]|qu|jusqu|lorsqu|puisqu)['’]", re.IGNORECASE)


def user_words_path(language: str) -> Path:
    """The user's own words for *language* (``words.fr.txt`` in the user's config folder for hilum)."""
    from hilum.ui.report.templates import user_template_dir

    return user_template_dir().parent / f"words.{language}.txt"


def _read_words(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    return [w.strip() for w in lines if w.strip() and not w.lstrip().startswith("#")]


class Speller:
    """One language's checker (see the module docstring)."""

    def __init__(self, language: str, user_words: Path | None = None) -> None:
        from spellchecker import SpellChecker

        self.language = language
        self._checker = SpellChecker(language=language, distance=2)
        self._lock = threading.Lock()
        self.user_words = user_words if user_words is not None else user_words_path(language)
        extra: list[str] = []
        try:
            from hilum.resources import resource

            extra = _read_words(resource(f"spelling/medical.{language}.txt"))
        except FileNotFoundError:
            pass
        extra += _read_words(self.user_words)
        self._known: set[str] = set()
        self._add_known(extra)

    def _add_known(self, words: list[str]) -> None:
        for w in words:
            for part in re.split(r"[-\s]+", w.lower()):
                if part:
                    self._known.add(part)
        if words:
            self._checker.word_frequency.load_words([w.lower() for w in words])

    def _skip(self, word: str) -> bool:
        return len(word) <= 2 or word.isupper() or any(c.isdigit() for c in word)

    def is_known(self, word: str) -> bool:
        """Whether *word* (one token, no spaces) is spelt right or not checked."""
        if self._skip(word):
            return True
        low = word.lower().replace("’", "'")
        if low in self._known:
            return True
        with self._lock:
            return bool(low in self._checker)

    def misspelt(self, text: str) -> list[tuple[int, int, str]]:
        """The misspelt words of *text*: ``(start, length, word)``, in order."""
        out: list[tuple[int, int, str]] = []
        for m in WORD_RE.finditer(text):
            start, token = m.start(), m.group()
            el = _ELISION.match(token)
            if el:  # l'épanchement: check "épanchement"
                start += el.end()
                token = token[el.end() :]
            if self.is_known(token):
                continue
            # hyphenated: check each part, underline the whole word only if a part is wrong
            if "-" in token and all(self.is_known(p) for p in token.split("-") if p):
                continue
            out.append((start, len(token), token))
        return out

    def suggestions(self, word: str, limit: int = 6) -> list[str]:
        """Corrections for *word*, most likely first, in the word's case (Capitalised stays so)."""
        with self._lock:
            cands = self._checker.candidates(word.lower()) or set()
            ranked = sorted(cands, key=lambda c: (-self._checker.word_usage_frequency(c), c))
        ranked = [c for c in ranked if c != word.lower()][:limit]
        if word[:1].isupper():
            ranked = [c[:1].upper() + c[1:] for c in ranked]
        return ranked

    def add_word(self, word: str) -> None:
        """Add *word* to the user's list (kept in ``words.<lang>.txt``) and to this checker."""
        word = word.strip()
        if not word:
            return
        self._add_known([word])
        try:
            self.user_words.parent.mkdir(parents=True, exist_ok=True)
            with self.user_words.open("a", encoding="utf-8") as f:
                f.write(word + "\n")
        except OSError as exc:
            log.warning("cannot save %r to %s: %s", word, self.user_words, exc)


_cache: dict[str, Speller] = {}
_futures: dict[str, Future[Speller]] = {}
_cache_lock = threading.Lock()
_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hilum-spell")


def speller(language: str) -> Speller:
    """The checker of *language* (loaded once per process; blocks while it loads)."""
    return speller_async(language).result()


def speller_async(language: str) -> Future[Speller]:
    """The checker of *language*, loaded on a worker thread the first time."""
    with _cache_lock:
        if language in _cache:
            f: Future[Speller] = Future()
            f.set_result(_cache[language])
            return f
        fut = _futures.get(language)
        if fut is None:

            def load() -> Speller:
                s = Speller(language)
                with _cache_lock:
                    _cache[language] = s
                return s

            fut = _pool.submit(load)
            _futures[language] = fut
        return fut


def forget_spellers() -> None:
    """Drop the loaded checkers (tests that change the user's folder)."""
    with _cache_lock:
        _cache.clear()
        _futures.clear()


class _Loaded(QObject):
    ready = Signal(object)


class SpellHighlighter(QSyntaxHighlighter):
    """Underlines misspelt words of *document* in the language set by :meth:`set_language`."""

    def __init__(self, document: QTextDocument, language: str = "en") -> None:
        super().__init__(document)
        self.speller: Speller | None = None
        self.language = ""
        self.enabled = True
        self._bridge = _Loaded(self)
        self._bridge.ready.connect(self._on_loaded)
        self.misspelt_format = QTextCharFormat()
        self.misspelt_format.setUnderlineStyle(QTextCharFormat.UnderlineStyle.SpellCheckUnderline)
        self.misspelt_format.setUnderlineColor(QColor("#d01010"))
        self.set_language(language)

    def set_language(self, language: str, on_ready: Callable[[], None] | None = None) -> None:
        if language == self.language and self.speller is not None:
            return
        self.language = language
        self.speller = None
        self.rehighlight()
        bridge = self._bridge

        def done(f: Future[Speller]) -> None:
            try:
                s = f.result()
            except Exception as exc:  # noqa: BLE001 - no spell-check is better than no editor
                log.warning("no spell-checker for %s: %s", language, exc)
                return
            try:
                bridge.ready.emit(s)
            except RuntimeError:  # the editor is gone
                pass

        speller_async(language).add_done_callback(done)

    def _on_loaded(self, s: Speller) -> None:
        if s.language == self.language:
            self.speller = s
            self.rehighlight()

    def set_enabled(self, on: bool) -> None:
        self.enabled = on
        self.rehighlight()

    def highlightBlock(self, text: str) -> None:  # noqa: N802
        if self.speller is None or not self.enabled:
            return
        for start, length, _word in self.speller.misspelt(text):
            self.setFormat(start, length, self.misspelt_format)
