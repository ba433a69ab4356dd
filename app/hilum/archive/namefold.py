"""Person names folded the way people type them: ``muller`` for Müller, ``helene`` for Hélène.

The DICOM wire keeps the standard's matching (PS3.4 C.2.2.2: a PN is
matched case-insensitively here, but "MULLER" is not "MÜLLER").  People at a
keyboard type names without their accents, in any case, with a comma or a
space between family and given name.  The study browser and ``hilum find
--local`` therefore ask the query engine for *folded* name matching
(:func:`hilum.archive.query.run_query`'s ``fold_names``): the archive keeps
each patient's name folded once (``patients.pn_fold``, written with the
other name columns by the patient registry) and compares the typed text
folded the same way.

Folding, in order:

* the alphabetic component group only (PS3.5 6.2.1.2; ideographic and
  phonetic groups are still matched as the standard says);
* Unicode compatibility decomposition (NFKD) and every combining mark
  dropped: é → e, ü → u, ﬁ → fi, full-width Ａ → A;
* letters that do not decompose spelled out: ß → ss, æ → ae, œ → oe,
  ø → o, ł → l, đ/ð → d, þ → th, ı → i, ħ → h;
* case folded (``str.casefold``);
* apostrophes and full stops dropped (``O'Brien`` → ``obrien``); the
  component separator ``^``, commas, hyphens and runs of spaces become one
  space, none at either end (``Müller-Lüdenscheidt^Hans`` → ``muller
  ludenscheidt hans``).

``*`` and ``?`` in a typed value are kept: they are the user's wildcards.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["FOLD_LENGTH", "fold_name"]

FOLD_LENGTH = 324
"""The folded name is cut to the length of its column (a PN value's own limit)."""

_SPELLED = str.maketrans(
    {
        "ß": "ss",
        "ẞ": "ss",
        "æ": "ae",
        "Æ": "ae",
        "œ": "oe",
        "Œ": "oe",
        "ø": "o",
        "Ø": "o",
        "ł": "l",
        "Ł": "l",
        "đ": "d",
        "Đ": "d",
        "ð": "d",
        "Ð": "d",
        "þ": "th",
        "Þ": "th",
        "ı": "i",
        "ħ": "h",
        "Ħ": "h",
        "ŀ": "l",
        "Ŀ": "l",
    }
)
_DROPPED = re.compile(r"['’‘`´.]")
_SEPARATORS = re.compile(r"[\s^,;\-‐‑–—_]+")


def fold_name(value: str) -> str:
    """The folded form of a person name's alphabetic group (module docstring); ``""`` for none."""
    group = (value or "").split("=", 1)[0]
    text = unicodedata.normalize("NFKD", group.translate(_SPELLED))
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    text = _DROPPED.sub("", text)
    return _SEPARATORS.sub(" ", text).strip()[:FOLD_LENGTH]
