"""Turn identifiers from DICOM headers or the registry into safe path components.

SPEC section 7: identifiers never become raw path components. The result matches
``^[A-Za-z0-9._+=@-]+$``, is never ``.`` or ``..``, never starts with ``.`` (no hidden
files), and is deterministic. When any character had to be changed (or the text was
shortened), a short hash of the original text is appended, so two different identifiers
never share a folder (``a/b`` and ``a_b`` stay apart). Text holding lower-case letters also
gets the hash, so that identifiers differing only in case (``sion-1``, ``SION-1``) stay apart on
case-insensitive file systems.

Example
-------
>>> safe_path_component("SION-007")
'SION-007'
>>> safe_path_component("../x")
'_._x-d6b96a97'
>>> safe_path_component("sion-1") != safe_path_component("SION-1").lower()
True
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

__all__ = ["SAFE_COMPONENT", "safe_path_component"]

#: What a path component written by the pipeline looks like (the checker's rule).
SAFE_COMPONENT = re.compile(r"^[A-Za-z0-9._+=@-]+$")

_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9._+=@-]")
_MAX_LEN = 100  # well under the 255-byte limit of common file systems, hash included
_HASH_LEN = 8


def _digest(text: str) -> str:
    raw = text.encode("utf-8", errors="surrogatepass")
    return hashlib.sha256(raw).hexdigest()[:_HASH_LEN]


def safe_path_component(text: str) -> str:
    """Return a deterministic, collision-resistant, file-system-safe version of ``text``.

    Parameters
    ----------
    text
        Any identifier (PatientID, lesion_id, SeriesInstanceUID...).

    Returns
    -------
    str
        ``text`` itself when it is already safe and has no lower-case letter; otherwise the text with every other
        character replaced by ``_`` (accents dropped first: ``é`` -> ``e``), a leading
        ``.`` replaced, shortened to 100 characters, plus ``-`` and 8 hex digits of the
        SHA-256 of the original text.

    Raises
    ------
    TypeError
        If ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if (SAFE_COMPONENT.match(text) and not text.startswith(".") and len(text) <= _MAX_LEN
            and text == text.upper()):
        return text
    # Drop accents (é -> e) so names stay readable; everything else non-ASCII becomes '_'.
    folded = unicodedata.normalize("NFKD", text)
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch))
    body = _UNSAFE_CHAR.sub("_", folded)
    if body.startswith("."):
        body = "_" + body[1:]
    body = body[: _MAX_LEN - _HASH_LEN - 1]
    return f"{body}-{_digest(text)}" if body else f"_-{_digest(text)}"
