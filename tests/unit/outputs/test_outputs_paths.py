"""safe_path_component: safe, deterministic, collision-resistant (SPEC section 7)."""

from __future__ import annotations

import re

import pytest

from pipeline.outputs.paths import SAFE_COMPONENT, safe_path_component

SAFE = re.compile(r"^[A-Za-z0-9._+=@-]+$")

NASTY = [
    "../x", "..", ".", "", "/", "a/b", "a\\b", "SION 007", "Müller^Jörg", "患者", "x" * 300,
    ".hidden", "..\\..\\windows", "a\x00b", "tab\there", "\udcff", "-rf", "C:\\temp",
]


@pytest.mark.parametrize("text", NASTY)
def test_result_is_safe(text: str) -> None:
    out = safe_path_component(text)
    assert SAFE.match(out), out
    assert out not in (".", "..")
    assert not out.startswith(".")
    assert len(out) <= 100
    assert safe_path_component(text) == out  # deterministic


@pytest.mark.parametrize("text", ["SION-007", "SION-007-L4", "1.2.840.113619.2.55", "A_B", "X+Y=Z@W"])
def test_safe_text_is_kept(text: str) -> None:
    assert safe_path_component(text) == text


@pytest.mark.parametrize(("a", "b"), [("sion-1", "SION-1"), ("Pat_01", "PAT_01"), ("a_b", "A_B")])
def test_identifiers_differing_only_in_case_get_distinct_folders(a: str, b: str) -> None:
    sa, sb = safe_path_component(a), safe_path_component(b)
    assert sa.lower() != sb.lower()  # distinct even on a case-insensitive file system
    assert sa.startswith(a) and SAFE_COMPONENT.match(sa)


def test_replacement_adds_hash_so_no_collision() -> None:
    assert safe_path_component("a/b") != safe_path_component("a_b")
    assert safe_path_component("a/b") != safe_path_component("a\\b")
    assert safe_path_component("a b").startswith("a_b-")
    outs = {safe_path_component(t) for t in NASTY}
    assert len(outs) == len(NASTY)


def test_dot_dot_slash() -> None:
    out = safe_path_component("../x")
    assert "/" not in out and out.startswith("_._x-")


def test_unicode_accents_are_folded() -> None:
    assert safe_path_component("Müller").startswith("Muller-")


def test_empty_string() -> None:
    out = safe_path_component("")
    assert SAFE.match(out) and out != safe_path_component("_")


def test_long_text_is_shortened_but_distinct() -> None:
    a, b = "x" * 300, "x" * 299 + "y"
    assert safe_path_component(a) != safe_path_component(b)


def test_not_a_string_raises() -> None:
    with pytest.raises(TypeError, match="text must be a str"):
        safe_path_component(7)  # type: ignore[arg-type]
