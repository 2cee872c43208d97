"""The C extension (proxy/detectors/_native.c) computes exactly what the numpy code does.

Shingles and sketches are state that replicas share, and one replica may run without the
extension: every hash, sketch byte and similarity must be the same either way.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.detectors import (
    bag,
    bag_numpy,
    completion,
    content,
    cycle,
    progress,
    recent,
    shingles,
    shingles_numpy,
    similarity,
)
from proxy.detectors.bag import BAG_BYTES, STOPWORDS
from proxy.detectors.settings import CycleSettings, NearDuplicateSettings, NoProgressSettings

_ROOT = Path(__file__).parents[2]
_SAMPLE = _ROOT / "bench" / "detection" / "sample.jsonl"

native = pytest.mark.skipif(bag.native is None, reason="the C extension is not built")

_WORDS = [
    *STOPWORDS[:40],
    *("agent", "plan", "tool", "call", "result", "check", "goal", "retry", "deploy", "cache"),
    *("12", "3", "2400", "5%", "0x1F", "007", "v2", "x86_64", "1.5", "3,000"),
    *("Été", "naïve", "ÉCOLE", "straße", "İstanbul", "ΣΟΦΊΑ", "東京", "emoji😀"),
    *("\ud800lone", "\x00nul"),  # a lone surrogate (UTF-8 'replace' makes it "?"), a NUL
    "incomprehensibilities",  # longer than 16 bytes: hashed on its first 16
    "aaaaaaaaaaaaaaaab",  # 17 bytes, the 17th ignored
    "aaaaaaaaaaaaaaaac",
    "tab\tseparated",
    "x",
]
_SEPARATORS = [" ", " ", " ", "  ", ". ", "! ", "? ", "\n", "\n\n", ", ", " -- ", "**", "_", "\t"]


def _text(rng: random.Random, words: int, vocabulary: list[str] | None = None) -> str:
    chosen = vocabulary or _WORDS
    parts = []
    for _ in range(words):
        parts.append(rng.choice(chosen))
        parts.append(rng.choice(_SEPARATORS))
    return rng.choice(["", " ", "\n", "...", "Hi,\n"]) + "".join(parts)


def _texts() -> list[str]:
    rng = random.Random(7)
    texts = [
        "",
        " ",
        "...!?\n",
        "-- ** __ ,,, ;;",
        "OK",
        "two words",
        "Continue.",
        "3",
        "12 34",
        "12 34 56 78 90 11 22 33 44.",
        "a" * 40,
        "é" * 40,
        "\ud800",
        "İİİ ΣΣΣ",
        "first. " + "one two three four five six seven eight nine ten" + " last!",
        "No end at all " * 5,
        "Ends only at the end one two three four five six seven.",
        "one two three four five six seven eight nine\n",
        "\n\none two three four five six seven eight nine",
        "x" * 70_000,
        ("word " * 20_000),
        ("alpha beta. " * 3_000),  # many content words, two of them: the sketch's slow path
        " ".join(f"w{n}" for n in range(400)),  # more than 192 content words, all distinct
        " ".join(f"w{n % 60} {n % 7}" for n in range(1_000)),  # repeats, digits
        " ".join(STOPWORDS),  # no content word at all
        "Ω" * 40_000,  # 80 KiB of UTF-8: cut at 64 KiB, inside a word
        "ab " * 21_845 + "cdefgh",  # a word cut by the 64 KiB limit
    ]
    for size in (1, 2, 3, 4, 7, 8, 9, 12, 30, 64, 150, 260, 400, 1_500, 12_000):
        texts.extend(_text(rng, size) for _ in range(12))
    ascii_words = [word for word in _WORDS if word.isascii()]
    texts.extend(_text(rng, rng.randrange(1, 600), ascii_words) for _ in range(60))
    texts.extend(rng.choice(ascii_words) * rng.randrange(1, 40) for _ in range(20))
    # A large vocabulary: more than 48 distinct content words past the sketch's pre-filter.
    for size in (100, 193, 300, 800, 3_000, 9_000):
        vocabulary = [
            "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=rng.randrange(1, 20)))
            for _ in range(rng.choice((60, 400, 5_000)))
        ]
        texts.extend(_text(rng, size, vocabulary) for _ in range(5))
    return texts


def _corpus() -> list[str]:
    if not _SAMPLE.exists():
        return []
    lines = _SAMPLE.read_text().splitlines()
    return [json.loads(line)["text"] for line in lines if line.startswith("{")]


_ALL_TEXTS = _texts() + _corpus()


@native
def test_shingles_and_sketches_are_the_numpy_ones() -> None:
    for text in _ALL_TEXTS:
        expected, found = shingles_numpy.numpy_shingle(text), shingles.native_shingle(text)
        assert found.sketch == expected.sketch, text[:80]
        assert found.shingles.dtype == np.uint32
        assert found.shingles.tolist() == expected.shingles.tolist(), text[:80]
        assert found.empty == expected.empty
        assert found.count == expected.count


@native
def test_the_corpus_is_there_to_compare() -> None:
    assert len(_corpus()) > 50


def test_long_and_short_texts_split_into_the_same_words(monkeypatch: pytest.MonkeyPatch) -> None:
    # The numpy code splits short texts with bytes.split and long ones by scanning for edges:
    # both must find the same words (the extension has one way, checked against both).
    texts = [text for text in _ALL_TEXTS if len(shingles._encoded(text)) <= 1024]
    short = [shingles_numpy._words(shingles._encoded(text)) for text in texts]
    monkeypatch.setattr(shingles_numpy, "_SHORT", -1)
    for text, found in zip(texts, short, strict=True):
        scanned = shingles_numpy._words(shingles._encoded(text))
        assert scanned.hashes.tolist() == found.hashes.tolist(), text[:80]
        assert scanned.first == found.first


def _sketches() -> list[bytes]:
    rng = random.Random(11)
    made = [shingles_numpy.numpy_shingle(text).sketch for text in _ALL_TEXTS]
    # What a corrupt state could hold: the comparison must still agree on the others' side.
    made.extend(rng.randbytes(BAG_BYTES) for _ in range(20))
    for sketch in made[:60]:  # every weight class, class 3 too, on features the texts share
        values = np.frombuffer(sketch, dtype="<u4") ^ np.array(
            [rng.randrange(4) for _ in range(BAG_BYTES // 4)], dtype="<u4"
        )
        made.append(values.astype("<u4").tobytes())
        shuffled = [sketch[at : at + 4] for at in range(0, BAG_BYTES, 4)]
        rng.shuffle(shuffled)
        made.append(b"".join(shuffled))  # out of order
    made.extend(sorted(made[:20]))
    return made


@native
def test_similarities_are_the_numpy_ones() -> None:
    rng = random.Random(3)
    sketches = _sketches()
    mine = [shingles_numpy.numpy_shingle(text).sketch for text in _ALL_TEXTS]
    for sketch in mine:
        others = rng.sample(sketches, rng.randrange(0, 14))
        expected = bag_numpy.numpy_similarities(sketch, others)
        assert bag.native.similarities(sketch, others) == expected
    texts = [text for text in _corpus() if text] or ["one two three", "three two one"]
    for text in texts:
        others = [shingles_numpy.numpy_shingle(other).sketch for other in texts[:12]]
        sketch = shingles_numpy.numpy_shingle(text).sketch
        assert bag.native.similarities(sketch, others) == bag_numpy.numpy_similarities(
            sketch, others
        )


@native
def test_a_feature_repeated_in_order_compares_as_numpy_does() -> None:
    """A stored sketch is compared by one merge when it is in order: a feature it holds twice
    counts twice, as numpy's search finds it twice."""
    for text in _ALL_TEXTS[:20]:
        sketch = shingles_numpy.numpy_shingle(text).sketch
        values = np.frombuffer(sketch, dtype="<u4").copy()
        values[1] = values[0]
        other = values.tobytes()
        expected = bag_numpy.numpy_similarities(sketch, [other])
        assert bag.native.similarities(sketch, [other]) == expected


@native
def test_scores_are_the_numpy_ones() -> None:
    rng = random.Random(5)
    sketches = _sketches()
    keys = [0, 1, 7, 0xFFFFFFFF]
    for text in _ALL_TEXTS[::3]:
        sketch = shingles_numpy.numpy_shingle(text).sketch
        count = rng.randrange(0, 13)
        owners = [rng.choice(keys[: rng.randrange(1, 5)]) for _ in range(count)]
        entries = b"".join(recent.entry(key, rng.choice(sketches)) for key in owners)
        for key in (*keys, -1, 1 << 40):
            expected = recent.numpy_scores(sketch, entries, key)
            assert bag.native.scores(sketch, entries, key) == expected
            assert bag.native.scores(sketch, entries, key, owners) == expected


@native
def test_the_no_progress_merge_is_the_numpy_one() -> None:
    rng = random.Random(9)
    for _ in range(400):
        size = rng.choice((0, 1, 7, 100, 512, 3_000))
        sample = completion.sorted_unique(
            np.array([rng.randrange(1 << 32) for _ in range(size)], dtype=np.uint32)
        )
        pool = [*sample.tolist()[:50], *(rng.randrange(1 << 32) for _ in range(50))]
        count = rng.choice((0, 1, 2, 16, 17, 63, 64, 65, 200, 5_000))
        hashes = np.array([rng.choice(pool) for _ in range(count)], dtype=np.uint32)
        if rng.random() < 0.3:
            hashes = np.repeat(hashes, 2)[::2]  # strided, as the numpy shingles are
        packed = sample.astype("<u4").tobytes()
        assert bag.native.merge(packed, hashes) == progress._merge_many(packed, hashes)
        assert progress._merge_native(packed, hashes) == progress._merge_numpy(packed, hashes)
    # A sample that is not sorted and distinct is left to the numpy code.
    unsorted = np.array([5, 3], dtype="<u4").tobytes()
    assert bag.native.merge(unsorted, np.array([4], dtype=np.uint32)) is None
    assert progress._merge_native(unsorted, np.array([4], dtype=np.uint32)) == (
        progress._merge_many(unsorted, np.array([4], dtype=np.uint32))
    )
    with pytest.raises(ValueError):
        bag.native.merge(b"abc", np.array([4], dtype=np.uint32))
    with pytest.raises(ValueError):
        bag.native.merge(b"", np.array([4], dtype=np.uint64))


def _replayed() -> list[tuple[bytes, list[str]]]:
    """Every state and trip of the content detectors over the corpus and the test texts."""
    conversations: dict[str, list[tuple[str, str]]] = {}
    if _SAMPLE.exists():
        for line in _SAMPLE.read_text().splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                conversations.setdefault(record["task"], []).append(
                    (record["agent"], record["text"])
                )
    rng = random.Random(13)
    texts = [text for text in _ALL_TEXTS if len(text) < 5_000]
    conversations["texts"] = [(f"agent-{rng.randrange(3)}", text) for text in texts]
    # A small sample, so that it fills and its threshold drops.
    stalled = NoProgressSettings(completions=3, min_sampled=4, sample_size=64)
    seen = []
    for outputs in conversations.values():
        state = content.ContentState()
        for agent, text in outputs:
            state, trips = content.observe_content(
                state,
                agent,
                text,
                cycle=CycleSettings(),
                near_duplicate=NearDuplicateSettings(),
                no_progress=stalled,
            )
            seen.append((state.to_bytes(), [trip.to_json() for trip in trips]))
    return seen


def _without_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    """The content detectors as they run where the extension was not built."""
    monkeypatch.setattr(content, "shingle", shingles.numpy_shingle)
    monkeypatch.setattr(recent, "scores", recent.numpy_scores)
    monkeypatch.setattr(progress, "_merge", progress._merge_numpy)
    for module in (content, cycle, similarity, progress):
        monkeypatch.setattr(module, "native", None)


@native
def test_the_detectors_keep_the_same_state_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    found = _replayed()
    _without_extension(monkeypatch)
    assert _replayed() == found
    assert any(trips for _, trips in found)


def _steps(
    outputs: list[tuple[str, str]],
    cycle_settings: CycleSettings,
    near: NearDuplicateSettings,
    stalled: NoProgressSettings,
) -> list[tuple[bytes, list[str]]]:
    state = content.ContentState()
    seen = []
    for agent, text in outputs:
        state, trips = content.observe_content(
            state, agent, text, cycle=cycle_settings, near_duplicate=near, no_progress=stalled
        )
        seen.append((state.to_bytes(), [trip.to_json() for trip in trips]))
    return seen


# A few words, so that tasks repeat themselves, go round cycles and stall.
_FEW = ["plan", "check", "retry", "deploy", "the", "cache", "tool", "42", "7", "result"]


@native
@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.lists(st.sampled_from(_FEW), min_size=0, max_size=40).map(" ".join),
        ),
        max_size=30,
    ),
    st.integers(2, 6),
    st.integers(2, 4),
    # 1.0: identical outputs score exactly the threshold
    st.one_of(st.sampled_from([0.5, 1.0]), st.floats(0.05, 1.0)),
    st.integers(2, 12),
    st.integers(2, 5),
    st.integers(1, 12),
    st.integers(2, 6),
    st.integers(64, 80),
)
def test_each_detector_step_is_the_python_one_under_any_settings(
    outputs: list[tuple[str, str]],
    max_period: int,
    rounds: int,
    similarity: float,
    window: int,
    repeats: int,
    min_shingles: int,
    completions: int,
    sample_size: int,
) -> None:
    cycle_settings = CycleSettings(max_period=max_period, rounds=rounds, similarity=similarity)
    near = NearDuplicateSettings(
        window=window, repeats=repeats, similarity=similarity, min_shingles=min_shingles
    )
    stalled = NoProgressSettings(completions=completions, min_sampled=1, sample_size=sample_size)
    found = _steps(outputs, cycle_settings, near, stalled)
    with pytest.MonkeyPatch.context() as monkeypatch:
        _without_extension(monkeypatch)
        assert _steps(outputs, cycle_settings, near, stalled) == found


@native
def test_a_state_the_steps_cannot_read_is_left_to_the_python_code() -> None:
    hashes = np.array([5, 1, 9], dtype=np.uint32)
    # A sample out of order, or not of whole uint32: a corrupt state, not the extension's call.
    assert bag.native.progress_step(1 << 32, b"\x09\0\0\0\x01\0\0\0", b"", hashes, 64, 4) is None
    assert bag.native.progress_step(1 << 32, b"abc", b"", hashes, 64, 4) is None
    assert bag.native.progress_step(1 << 32, b"", b"abc", hashes, 64, 4) is None
    state = progress.NoProgressState(1 << 32, b"\x09\0\0\0\x01\0\0\0", b"")
    fed = shingles.Shingles(hashes, shingles.shingle("one two three").sketch)
    observed, _ = progress.observe_shingles(state, "a", fed, NoProgressSettings())
    assert observed.sample  # the Python code merged it all the same


@native
def test_the_modules_use_the_extension() -> None:
    assert shingles.shingle is shingles.native_shingle
    assert shingles.similarities is bag.native.similarities
    assert recent.scores is bag.native.scores
    assert progress._merge is progress._merge_native


@native
def test_bad_arguments_raise_rather_than_read_past_them() -> None:
    module = bag.native
    sketch = shingles.shingle("one two three four").sketch
    with pytest.raises(ValueError):
        module.similarities(sketch[:-1], [])
    with pytest.raises(ValueError):
        module.similarities(sketch, [sketch, b"short"])
    with pytest.raises(ValueError):
        module.scores(sketch, b"x" * 195, 0)
    with pytest.raises(TypeError):
        module.similarities(sketch, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        module.shingle("text", b"short", shingles._CONTENT_BITS, 10)
    assert module.shingle("one two", bytes(256), shingles._CONTENT_BITS, -5)[0] == bytearray()
    hashes = np.array([1, 2, 3], dtype=np.uint32)
    with pytest.raises(ValueError):
        module.cycle_step(b"x" * 195, (0,) * 6, 0, sketch, 0.5)
    with pytest.raises(ValueError):
        module.cycle_step(b"", (0,) * 5, 0, sketch, 0.5)
    with pytest.raises(ValueError):
        module.near_step(b"", 0, sketch[:-1], hashes, 10, 0.7, 8)
    with pytest.raises(ValueError):
        module.near_step(b"", 0, sketch, np.array([1], dtype=np.uint64), 10, 0.7, 8)
    with pytest.raises(ValueError):
        module.progress_step(1 << 32, b"", b"", np.array([1.0]), 64, 4)
    with pytest.raises(OverflowError):
        module.progress_step(-1, b"", b"", hashes, 64, 4)


@pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler"
)
def test_the_extension_is_built_where_a_compiler_is() -> None:
    # setup.py marks it optional: an install without it still works, so nothing else would say
    # it went missing.
    importlib.import_module("proxy.detectors._native")
    assert bag.native is not None


# Generated inputs, on every run: any text the provider may send, and any bytes a corrupt or
# hostile state may hold. The texts mix words, digits, sentence ends, separators and
# characters from every plane (lone surrogates included).
_PIECES = st.one_of(
    st.sampled_from(_WORDS),
    st.sampled_from(_SEPARATORS),
    st.text(max_size=24),
    st.text(alphabet="abcdefghij0123456789 .!?\n\t-", max_size=40),
)


@native
@settings(max_examples=400, deadline=None)
@given(st.lists(_PIECES, max_size=400).map("".join))
def test_any_text_shingles_as_numpy_does(text: str) -> None:
    expected, found = shingles_numpy.numpy_shingle(text), shingles.native_shingle(text)
    assert found.sketch == expected.sketch
    assert found.shingles.tolist() == expected.shingles.tolist()


@native
@settings(max_examples=300, deadline=None)
@given(
    st.lists(_PIECES, min_size=1, max_size=200).map("".join),
    st.lists(st.binary(min_size=BAG_BYTES, max_size=BAG_BYTES), max_size=14),
)
def test_any_stored_sketches_compare_as_numpy_does(text: str, others: list[bytes]) -> None:
    sketch = shingles_numpy.numpy_shingle(text).sketch
    assert bag.native.similarities(sketch, others) == bag_numpy.numpy_similarities(sketch, others)
    entries = b"".join(recent.entry(n % 3, other) for n, other in enumerate(others))
    for key in (0, 1, 2):
        assert bag.native.scores(sketch, entries, key) == recent.numpy_scores(sketch, entries, key)


@native
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.binary(max_size=2000), st.integers(-(2**64), 2**64))
def test_hostile_arguments_raise_or_answer(sketch: bytes, entries: bytes, key: int) -> None:
    """Any bytes where a sketch or a window goes: a ValueError, or an answer (never a read
    past them, which the sanitizer runs of the extension check; here, never a crash)."""
    hashes = memoryview(sketch[: len(sketch) // 4 * 4]).cast("I")
    for call in (
        lambda: bag.native.scores(sketch, entries, key),
        lambda: bag.native.similarities(sketch, [entries]),
        lambda: bag.native.merge(entries, np.frombuffer(sketch[: len(sketch) // 4 * 4], "<u4")),
        lambda: bag.native.cycle_step(entries, (key,) * 6, key, sketch, 0.5),
        lambda: bag.native.near_step(entries, key, sketch, hashes, key % 100, 0.7, key % 50),
        lambda: bag.native.progress_step(key, entries, sketch, hashes, key % 1000, key % 70),
    ):
        with contextlib.suppress(ValueError, OverflowError, TypeError):
            call()


def test_the_extensions_stopword_table_is_the_numpy_one() -> None:
    # Built word by word in pure Python, so that the server need not load numpy for it.
    numpy_bits = np.packbits(shingles_numpy._CONTENT, bitorder="little").tobytes()
    assert numpy_bits == shingles._CONTENT_BITS
    assert numpy_bits.count(0xFF) < len(numpy_bits)  # some stopwords are in it


@native
def test_the_detectors_never_load_numpy_with_the_extension() -> None:
    # numpy is about 19 MiB of a server's memory: with the extension it is the reference only.
    probe = """
import sys
from proxy.detectors.content import ContentState, observe_content
from proxy.detectors.settings import CycleSettings, NearDuplicateSettings, NoProgressSettings
from proxy.providers.base import Output
state, trips = ContentState(), []
for n in range(40):
    text = "plan the deploy, check the cache and retry the tool " * (1 + n % 3) + str(n % 2)
    state, found = observe_content(
        state, "a", text, cycle=CycleSettings(), near_duplicate=NearDuplicateSettings(),
        no_progress=NoProgressSettings(min_sampled=4),
    )
    trips += found
Output("word " * 3000).fingerprint()  # a long output's fingerprint
print(sorted({t.reason.value for t in trips}), "numpy" in sys.modules)
"""
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=_ROOT
    )
    assert done.returncode == 0, done.stderr
    reasons, loaded = done.stdout.rsplit(" ", 1)
    assert "near_duplicate" in reasons  # the steps ran and decided
    assert loaded.strip() == "False"
