"""CLIP byte-level BPE tokenizer, id-for-id compatible with the one DETRIS was trained with.

DETRIS feeds referring expressions to the CLIP text transformer, whose embedding table is indexed by
the ids of OpenAI's CLIP tokenizer (vocabulary ``bpe_simple_vocab_16e6``, 49408 entries). Any
difference in pre-processing or merge order changes the ids and silently degrades a trained model,
so this module reproduces that tokenizer's behaviour exactly:

1. text clean-up: ``ftfy.fix_text``, HTML entities unescaped twice, whitespace runs folded to one
   space, ends stripped, lower-cased;
2. pre-tokenisation with CLIP's regular expression (letters runs, single digits, punctuation runs,
   English contractions, the two special-token strings);
3. each pre-token's UTF-8 bytes spelled with printable stand-in characters, the last one marked
   with ``</w>``, then merged greedily by merge rank.

The vocabulary file is OpenAI's (MIT licence, see ``assets/LICENSE-CLIP-BPE``).
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.resources
from collections.abc import Sequence
from pathlib import Path

import ftfy
import regex
import torch

__all__ = ["Tokenizer", "shared_tokenizer", "tokenize"]

_VOCAB_ASSET = "bpe_simple_vocab_16e6.txt.gz"
# CLIP keeps only the first 49152 - 256 - 2 merges of the file so that bytes, end-of-word bytes,
# merges and the two special tokens add up to a 49408-entry embedding table.
_NUM_MERGES = 49152 - 256 - 2
_SOT = "<|startoftext|>"
_EOT = "<|endoftext|>"
_END_OF_WORD = "</w>"

# The stdlib ``re`` has no \p{..} classes, and its \s differs from ``regex``'s on a few code points;
# CLIP used ``regex`` for both expressions, so we do too.
_PRE_TOKEN = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>"
    r"|'s|'t|'re|'ve|'m|'ll|'d"
    r"|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
)
_SPACE_RUN = regex.compile(r"\s+")

# A long-running server would otherwise grow the per-word cache without bound on adversarial input.
_MAX_CACHED_WORDS = 200_000


@functools.lru_cache(maxsize=1)
def _byte_alphabet() -> dict[int, str]:
    """Byte value -> one printable character, in CLIP's vocabulary order.

    Bytes that are visible Latin-1 characters stand for themselves; the other 68 (controls, space,
    NBSP, soft hyphen) are moved to U+0100.. so that every BPE symbol is printable. The insertion
    order of the returned dict is the order of the first 256 vocabulary entries.
    """
    visible = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    visible_set = set(visible)
    alphabet = {b: chr(b) for b in visible}
    hidden = (b for b in range(256) if b not in visible_set)
    alphabet.update({b: chr(0x100 + k) for k, b in enumerate(hidden)})
    return alphabet


def _clean(text: str) -> str:
    """Normalise ``text`` the way CLIP did before pre-tokenisation."""
    text = ftfy.fix_text(text)
    # ftfy leaves entities alone in text containing "<", and scraped captions are often escaped
    # twice ("&amp;lt;"), so CLIP unescapes twice more on top of it.
    text = html.unescape(html.unescape(text))
    # Pre-tokenisation drops whitespace anyway; folding and stripping only keep the cleaned string
    # identical to CLIP's.
    return _SPACE_RUN.sub(" ", text.strip()).strip().lower()


class Tokenizer:
    """CLIP BPE tokenizer.

    Args:
        vocab_path: gzip-compressed merges file in CLIP's format (first line a header, then one
            ``"left right"`` merge per line). Defaults to the vocabulary bundled with ``detris``.

    Attributes:
        sot_token_id: id of ``<|startoftext|>`` (49406).
        eot_token_id: id of ``<|endoftext|>`` (49407).
        vocab_size: number of ids (49408).
    """

    def __init__(self, vocab_path: str | Path | None = None) -> None:
        merges = _read_merges(vocab_path)
        alphabet = _byte_alphabet()
        symbols = list(alphabet.values())
        vocab = symbols + [s + _END_OF_WORD for s in symbols] + ["".join(m) for m in merges]
        vocab += [_SOT, _EOT]

        # Built from enumerations (later entries win) to behave like CLIP if the file repeats a line.
        self._token_to_id: dict[str, int] = {tok: i for i, tok in enumerate(vocab)}
        self._id_to_token: dict[int, str] = {i: tok for tok, i in self._token_to_id.items()}
        self._merge_rank: dict[tuple[str, str], int] = {pair: r for r, pair in enumerate(merges)}
        self._byte_to_char = alphabet
        self._char_to_byte = {c: b for b, c in alphabet.items()}

        self.sot_token_id: int = self._token_to_id[_SOT]
        self.eot_token_id: int = self._token_to_id[_EOT]
        self.vocab_size: int = len(vocab)
        self._word_cache: dict[str, tuple[int, ...]] = {}
        self._reset_cache()

    def _reset_cache(self) -> None:
        self._word_cache.clear()
        # The special strings survive pre-tokenisation whole and must map to their own ids rather
        # than be spelled out byte by byte.
        self._word_cache[_SOT] = (self.sot_token_id,)
        self._word_cache[_EOT] = (self.eot_token_id,)

    def _merge(self, word: str) -> tuple[int, ...]:
        """Ids of one pre-token already spelled in the byte alphabet."""
        cached = self._word_cache.get(word)
        if cached is not None:
            return cached

        parts = list(word[:-1])
        parts.append(word[-1] + _END_OF_WORD)
        ranks = self._merge_rank
        while len(parts) > 1:
            best_rank = None
            best_pair = None
            for pair in zip(parts, parts[1:]):
                rank = ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best_pair = rank, pair
            if best_pair is None:
                break
            left, right = best_pair
            # All non-overlapping occurrences, scanning left to right, merge in the same step.
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == left and parts[i + 1] == right:
                    merged.append(left + right)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged

        ids = tuple(self._token_to_id[p] for p in parts)
        if len(self._word_cache) >= _MAX_CACHED_WORDS:
            self._reset_cache()
        self._word_cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` without start/end tokens or padding."""
        if not isinstance(text, str):
            raise TypeError(f"Tokenizer.encode expects a str, got {type(text).__name__}")
        ids: list[int] = []
        to_char = self._byte_to_char
        for piece in _PRE_TOKEN.findall(_clean(text)):
            ids.extend(self._merge("".join(to_char[b] for b in piece.encode("utf-8"))))
        return ids

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of a sequence of ids.

        Every id is decoded, special tokens included (as their literal strings) and padding zeros
        too (id 0 is ``"!"``), so pass only the ids between the start and end tokens. Word ends
        become spaces, so the result usually ends with one; invalid UTF-8 becomes U+FFFD.
        """
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        joined = "".join(self._id_to_token[int(i)] for i in ids)
        # Special-token strings are plain ASCII, so they round-trip through the byte alphabet.
        raw = bytes(self._char_to_byte[c] for c in joined)
        return raw.decode("utf-8", errors="replace").replace(_END_OF_WORD, " ")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


def _read_merges(vocab_path: str | Path | None) -> list[tuple[str, str]]:
    if vocab_path is None:
        resource = importlib.resources.files("detris") / "assets" / _VOCAB_ASSET
        with resource.open("rb") as fh, gzip.open(fh) as gz:
            data = gz.read()
    else:
        with gzip.open(vocab_path) as gz:
            data = gz.read()
    lines = data.decode("utf-8").split("\n")
    # Line 0 is the "#version" header.
    return [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]  # type: ignore[misc]


@functools.lru_cache(maxsize=1)
def shared_tokenizer() -> Tokenizer:
    # Reading and indexing the vocabulary takes ~0.1 s; do it once, and only when first needed.
    return Tokenizer()


def tokenize(
    texts: str | Sequence[str],
    context_length: int = 17,
    truncate: bool = True,
) -> torch.LongTensor:
    """Token ids for the CLIP text tower.

    Each row is ``[SOT] + bpe ids + [EOT]`` followed by zeros up to ``context_length``.

    Args:
        texts: one string or a sequence of ``N`` strings.
        context_length: row length ``L``; at least 2. DETRIS uses 17 (``word_len`` in the
            official configs, 22 for some variants).
        truncate: when a row is longer than ``L``, keep its first ``L`` ids and overwrite the last
            with EOT. When false, raise instead.

    Returns:
        ``torch.long`` tensor of shape ``(N, L)`` (``N = 1`` for a single string).

    Raises:
        TypeError: ``texts`` is neither a string nor a sequence of strings.
        ValueError: ``context_length < 2``, or a text is too long and ``truncate`` is false.
    """
    if isinstance(texts, str):
        texts = [texts]
    elif not isinstance(texts, Sequence):
        raise TypeError(f"tokenize expects a str or a sequence of str, got {type(texts).__name__}")
    for k, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"tokenize expects strings, but item {k} is a {type(text).__name__}: {text!r}")
    if context_length < 2:
        raise ValueError(f"context_length must be at least 2 (room for SOT and EOT), got {context_length}")

    tok = shared_tokenizer()
    out = torch.zeros(len(texts), context_length, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [tok.sot_token_id, *tok.encode(text), tok.eot_token_id]
        if len(ids) > context_length:
            if not truncate:
                raise ValueError(
                    f"text {text!r} is {len(ids)} tokens long (with SOT/EOT), more than "
                    f"context_length={context_length}; use truncate=True or a larger context_length"
                )
            ids = ids[:context_length]
            ids[-1] = tok.eot_token_id
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out  # type: ignore[return-value]
