"""Normalisation that keeps meaning: what the exact fingerprint ignores, and what it keeps."""

from __future__ import annotations

from proxy.detectors.normalise import exact_text
from proxy.providers.base import Output


def test_case_punctuation_spacing_and_markdown_do_not_count() -> None:
    plain = "The build fails on step 3. Retry after the cache is cleared."
    variants = [
        "the build fails on step 3 -- retry after the cache is cleared!",
        "**The build fails on step 3.**\n\n> Retry after the `cache` is cleared.",
        "# The build fails on step 3\n- Retry after the _cache_ is cleared...",
        "  THE BUILD FAILS ON STEP 3;   retry after the cache is cleared  ",
    ]
    assert all(exact_text(v) == exact_text(plain) for v in variants)
    assert all(Output(v).fingerprint() == Output(plain).fingerprint() for v in variants)


def test_numbers_and_words_count() -> None:
    assert exact_text("12 tests failing (was 13)") == "12 tests failing was 13"
    assert Output("12 tests failing").fingerprint() != Output("11 tests failing").fingerprint()
    assert Output("Build passed").fingerprint() != Output("Build failed").fingerprint()


def test_other_scripts_are_lower_cased_and_kept() -> None:
    assert exact_text("Ärger über die STRASSE!") == "ärger über die strasse"
    assert exact_text("") == "" and Output("...").fingerprint() == Output("!!").fingerprint()


def test_a_long_answer_folds_as_its_parts_do() -> None:
    # Long texts take another path through the folding: the same words, one space apart.
    parts = [f"Step {n}:  **Check** the  cache -- then   retry (#{n})!\n\n" for n in range(400)]
    whole = "".join(parts)
    assert len(whole) > 10_000
    assert exact_text(whole) == " ".join(exact_text(part) for part in parts)
    assert exact_text("  ...  " + whole + "  ...  ") == exact_text(whole)
    assert Output(whole).fingerprint() == Output(whole.upper().replace(" ", "   ")).fingerprint()
