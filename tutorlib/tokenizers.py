"""Tokenizers: turning text into ids and back.

`CharTokenizer` gives each character of a fixed alphabet an id. `BPETokenizer` is byte-level
byte-pair encoding (Sennrich et al. 2016, on bytes as in GPT-2): it starts from the 256 bytes,
so any text round-trips exactly, and learns merges of frequent adjacent pairs from a corpus.
The merge loop is spelt out with two small helpers, `pair_counts` and `merge_pair`, which the
book page uses to show it one step at a time.

Ids of a `BPETokenizer`: 0..255 are the bytes, 256.. the merges in the order they were
learnt, and the special tokens come last. Special tokens (`<pad>`, `<bos>`, ...) are never
produced from ordinary text: the string "<mask>" in a text encodes as its bytes.

`encode_batch` pads on the right and returns a padding mask that is True for real tokens, the
convention of `tutorlib.attention`.

Book: 3.6 Tokenization: byte-pair encoding.
"""

from __future__ import annotations

import heapq
import json
import operator
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import pairwise
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "BPE_SPECIAL_TOKENS",
    "CHAR_SPECIAL_TOKENS",
    "PRETOKEN_PATTERN",
    "BPETokenizer",
    "CharTokenizer",
    "merge_pair",
    "most_frequent_pair",
    "pair_counts",
    "pretokenize",
]

CHAR_SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>")
# No <unk>: a byte-level vocabulary can spell every text.
BPE_SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<mask>", "<cls>")
_REQUIRED_SPECIALS = ("<pad>", "<bos>", "<eos>")

# GPT-2's pre-tokenizer written for the standard `re` module, which has no \p{L}:
# [^\W\d_] is a letter, \d a digit, (?:[^\s\w]|_) anything else that is not a space.
# English contractions; words, numbers and punctuation runs with at most one leading space;
# runs of whitespace (all but the last space when a word follows). The alternatives cover
# every character, so joining the pieces gives the text back.
PRETOKEN_PATTERN = r"'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"
_PRETOKEN_RE = re.compile(PRETOKEN_PATTERN)


def _check_str(text: object, name: str = "text") -> None:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")


def _check_specials(special_tokens: Sequence[str]) -> tuple[str, ...]:
    if isinstance(special_tokens, str) or not isinstance(special_tokens, Sequence):
        raise TypeError(
            f"special_tokens must be a sequence of str, got {type(special_tokens).__name__}"
        )
    specials = tuple(special_tokens)
    if not all(isinstance(t, str) and t for t in specials):
        raise TypeError(f"special tokens must be non-empty str, got {specials}")
    if len(set(specials)) != len(specials):
        raise ValueError(f"special tokens must be distinct, got {specials}")
    missing = [t for t in _REQUIRED_SPECIALS if t not in specials]
    if missing:
        raise ValueError(f"special_tokens must include {_REQUIRED_SPECIALS}; missing {missing}")
    return specials


def _id_list(ids: Sequence[int] | Tensor) -> list[int]:
    """A 1-D tensor or a sequence of ints as a list of Python ints."""
    if isinstance(ids, Tensor):
        if ids.dim() != 1 or ids.is_floating_point() or ids.is_complex():
            raise ValueError(
                f"ids: expected a 1-D integer tensor (T,), got {ids.dtype} {tuple(ids.shape)}"
            )
        return ids.tolist()
    if isinstance(ids, str | bytes):
        raise TypeError(f"ids must be a sequence of ints, got {type(ids).__name__}")
    try:
        return [operator.index(i) for i in ids]
    except TypeError as error:
        raise TypeError(f"ids must be a sequence of ints ({error})") from None


# --- The pieces of byte-pair encoding ---------------------------------------------------------


def pretokenize(text: str) -> list[str]:
    """Split text into the pieces BPE works inside: merges never cross a piece's boundary.

    Words keep one leading space (" the"), numbers and punctuation runs are pieces of their
    own, and whitespace runs stay whole. `"".join(pretokenize(text)) == text`.

    Book: 3.6 Tokenization: byte-pair encoding (Pre-tokenization).
    """
    _check_str(text)
    return _PRETOKEN_RE.findall(text)


def pair_counts(
    sequences: Iterable[Sequence[int]], weights: Iterable[int] | None = None
) -> Counter[tuple[int, int]]:
    """How often each pair of adjacent ids occurs, summed over `sequences` (each counted
    `weights[i]` times if given: the number of times that word occurs in the corpus).

    Overlapping occurrences count: [5, 5, 5] holds the pair (5, 5) twice.

    Shapes:
        sequences: N sequences of ids; weights: N ints  ->  Counter {(a, b): count}

    Book: 3.6 Tokenization: byte-pair encoding (The merge loop).
    """
    sequences = list(sequences)
    if sequences and not isinstance(sequences[0], Sequence | Tensor):
        raise TypeError(
            "pair_counts takes a list of id sequences (words); for one sequence write "
            f"pair_counts([ids]). Got a sequence of {type(sequences[0]).__name__}"
        )
    weights = [1] * len(sequences) if weights is None else list(weights)
    if len(weights) != len(sequences):
        raise ValueError(f"got {len(sequences)} sequences but {len(weights)} weights")
    counts: Counter[tuple[int, int]] = Counter()
    for ids, weight in zip(sequences, weights, strict=True):
        ids = _id_list(ids)
        for pair in pairwise(ids):
            counts[pair] += weight
    return counts


def most_frequent_pair(counts: dict[tuple[int, int], int]) -> tuple[int, int]:
    """The pair with the largest count; ties go to the smallest pair (a, b), so the choice
    does not depend on the order the pairs were counted in.

    Book: 3.6 Tokenization: byte-pair encoding (The merge loop).
    """
    if not counts:
        raise ValueError("no pairs to choose from: every sequence is shorter than 2 ids")
    return min(counts, key=lambda pair: (-counts[pair], pair))


def merge_pair(ids: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """One BPE merge on one sequence: every occurrence of `pair`, read left to right, becomes
    `new_id`. merge_pair([1, 2, 3, 1, 2], (1, 2), 9) == [9, 3, 9].

    Shapes:
        ids (T,)  ->  (T',) with T' = T - (number of occurrences merged)

    Book: 3.6 Tokenization: byte-pair encoding (The merge loop).
    """
    if len(pair) != 2:
        raise ValueError(f"pair must hold two ids, got {pair!r}")
    first, second = pair
    out: list[int] = []
    i, n = 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == first and ids[i + 1] == second:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


# --- What both tokenizers share ---------------------------------------------------------------


class _Tokenizer:
    """Special-token ids and batching, shared by the character and BPE tokenizers."""

    _special_ids: dict[str, int]

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """The special tokens, in the order of their ids."""
        return tuple(self._special_ids)

    def token_to_id(self, token: str) -> int:
        """The id of a special token such as "<mask>"."""
        if token not in self._special_ids:
            raise KeyError(
                f"{token!r} is not a special token of this tokenizer; it has {self.special_tokens}"
            )
        return self._special_ids[token]

    def _special(self, token: str) -> int:
        if token not in self._special_ids:
            raise AttributeError(
                f"this {type(self).__name__} has no {token} token; build it with {token!r} "
                f"among special_tokens (it has {self.special_tokens})"
            )
        return self._special_ids[token]

    pad_id = property(lambda self: self._special("<pad>"), doc="Id of <pad>.")
    bos_id = property(lambda self: self._special("<bos>"), doc="Id of <bos>, begin of sequence.")
    eos_id = property(lambda self: self._special("<eos>"), doc="Id of <eos>, end of sequence.")
    unk_id = property(lambda self: self._special("<unk>"), doc="Id of <unk>, if there is one.")
    mask_id = property(lambda self: self._special("<mask>"), doc="Id of <mask>, if there is one.")
    cls_id = property(lambda self: self._special("<cls>"), doc="Id of <cls>, if there is one.")

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        raise NotImplementedError

    def encode_batch(
        self,
        texts: Sequence[str],
        add_bos: bool = False,
        add_eos: bool = False,
        max_length: int | None = None,
        truncate: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Encode several texts and pad them on the right with `<pad>` to one length: the
        longest sequence's, or `max_length` if given. A sequence longer than `max_length`
        raises ValueError unless `truncate=True`, which keeps its first `max_length` ids.

        Shapes:
            texts: B strings  ->  ids (B, T) int64, padding_mask (B, T) bool, True = real token

        Book: 3.6 Tokenization: byte-pair encoding.
        """
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError(
                f"texts must be a list of str, got {type(texts).__name__}; "
                "for one text write encode_batch([text])"
            )
        if len(texts) == 0:
            raise ValueError("texts is empty: nothing to encode")
        if max_length is not None and (
            not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1
        ):
            raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")
        encoded = [self.encode(t, add_bos=add_bos, add_eos=add_eos) for t in texts]
        if max_length is not None:
            for i, ids in enumerate(encoded):
                if len(ids) > max_length and not truncate:
                    raise ValueError(
                        f"text {i} is {len(ids)} tokens long, more than max_length={max_length}; "
                        "pass truncate=True to cut it"
                    )
            encoded = [ids[:max_length] for ids in encoded]
            T = max_length
        else:
            T = max(len(ids) for ids in encoded)
        ids = torch.full((len(texts), T), self.pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros(len(texts), T, dtype=torch.bool)  # (B, T)
        for row, seq in enumerate(encoded):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = True
        return ids, mask


# --- Characters -------------------------------------------------------------------------------


class CharTokenizer(_Tokenizer):
    """One id per character of a fixed alphabet, after the special tokens.

    Ids 0..S-1 are the special tokens in the order given (so `<pad>` is 0 by default), then
    the characters of `chars` in order. A character outside the alphabet raises ValueError
    naming it and its position, unless `<unk>` is among the special tokens.

    Shapes:
        encode: text of T characters  ->  T ids (plus <bos>/<eos> if asked)

    Book: 3.6 Tokenization: byte-pair encoding (Characters, words or subwords).
    """

    def __init__(self, chars: str, special_tokens: Sequence[str] = CHAR_SPECIAL_TOKENS) -> None:
        _check_str(chars, "chars")
        if not chars:
            raise ValueError("chars is empty: a CharTokenizer needs at least one character")
        repeated = sorted({c for c in chars if chars.count(c) > 1})
        if repeated:
            raise ValueError(f"chars must not repeat a character; repeated: {repeated}")
        specials = _check_specials(special_tokens)
        self.chars = chars
        self._special_ids = {t: i for i, t in enumerate(specials)}
        self._char_ids = {c: len(specials) + i for i, c in enumerate(chars)}
        self._id_to_piece = [*specials, *chars]

    @classmethod
    def from_text(
        cls, text: str, special_tokens: Sequence[str] = CHAR_SPECIAL_TOKENS
    ) -> CharTokenizer:
        """A tokenizer for exactly the characters that occur in `text`, in sorted order."""
        _check_str(text)
        return cls("".join(sorted(set(text))), special_tokens)

    @property
    def vocab_size(self) -> int:
        """Special tokens plus characters."""
        return len(self._id_to_piece)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """The id of each character, optionally between <bos> and <eos>."""
        _check_str(text)
        unk = self._special_ids.get("<unk>")
        ids = [self.bos_id] if add_bos else []
        for position, char in enumerate(text):
            i = self._char_ids.get(char, unk)
            if i is None:
                raise ValueError(
                    f"character {char!r} at position {position} is not in this CharTokenizer's "
                    f"{len(self.chars)} characters; add it to chars, or include '<unk>' in "
                    "special_tokens"
                )
            ids.append(i)
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Sequence[int] | Tensor, skip_special: bool = True) -> str:
        """The text of `ids`; special tokens are dropped, or written out as "<eos>" etc."""
        pieces = []
        for position, i in enumerate(_id_list(ids)):
            if not 0 <= i < self.vocab_size:
                raise ValueError(
                    f"id {i} at position {position} is outside the vocabulary "
                    f"[0, {self.vocab_size})"
                )
            if i < len(self._special_ids) and skip_special:
                continue
            pieces.append(self._id_to_piece[i])
        return "".join(pieces)

    def __repr__(self) -> str:
        return f"CharTokenizer({len(self.chars)} characters, specials={self.special_tokens})"


# --- Byte-level BPE ---------------------------------------------------------------------------


class BPETokenizer(_Tokenizer):
    """Byte-level byte-pair encoding: the 256 bytes, then learnt merges, then special tokens.

    Build one with `BPETokenizer.train(text, vocab_size)`, or from a list of merges. Merge
    i joins the pair `merges[i]` into the new id 256 + i; encoding applies, inside each
    pre-token, the earliest-learnt merge present until none applies. The first k merges of
    a tokenizer are exactly what training to 256 + k (+ specials) tokens would have learnt.

    Shapes:
        encode: text  ->  T ids, T <= number of UTF-8 bytes of the text (plus <bos>/<eos>)

    Book: 3.6 Tokenization: byte-pair encoding.
    """

    _CACHE_LIMIT = 100_000  # pre-tokens remembered by encode

    def __init__(
        self,
        merges: Sequence[tuple[int, int]],
        special_tokens: Sequence[str] = BPE_SPECIAL_TOKENS,
    ) -> None:
        specials = _check_specials(special_tokens)
        vocab = [bytes([b]) for b in range(256)]
        checked: list[tuple[int, int]] = []
        for rank, pair in enumerate(merges):
            if (
                not isinstance(pair, Sequence)
                or len(pair) != 2
                or not all(isinstance(i, int) and 0 <= i < 256 + rank for i in pair)
            ):
                raise ValueError(
                    f"merge {rank} must be a pair of ids in [0, {256 + rank}) (bytes and earlier "
                    f"merges), got {pair!r}"
                )
            a, b = pair
            checked.append((a, b))
            vocab.append(vocab[a] + vocab[b])
        self._merges = checked
        self._ranks = {pair: rank for rank, pair in enumerate(checked)}
        self._vocab = vocab  # id -> bytes, for bytes and merges
        first_special = 256 + len(checked)
        self._special_ids = {t: first_special + i for i, t in enumerate(specials)}
        self._cache: dict[str, list[int]] = {}

    # -- training --

    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        special_tokens: Sequence[str] = BPE_SPECIAL_TOKENS,
    ) -> BPETokenizer:
        """Learn `vocab_size - 256 - len(special_tokens)` merges from `text`.

        Pre-tokenize, count each distinct pre-token once with its frequency, then repeat:
        merge the most frequent adjacent pair (ties: the smallest pair) everywhere. Pair counts
        are updated only in the words that contain the merged pair, and a heap finds the most
        frequent pair, so a merge costs time in proportion to the words it changes, not to the
        corpus. Stops early if no pair is left (a tiny text), with a smaller vocabulary.

        Book: 3.6 Tokenization: byte-pair encoding (Training on the corpus).
        """
        _check_str(text)
        if not text:
            raise ValueError("text is empty: BPE needs a corpus to learn merges from")
        specials = _check_specials(special_tokens)
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
            raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
        smallest = 256 + len(specials)
        if vocab_size < smallest:
            raise ValueError(
                f"vocab_size must be at least 256 bytes + {len(specials)} special tokens = "
                f"{smallest}, got {vocab_size}"
            )
        word_freqs = Counter(_PRETOKEN_RE.findall(text))
        words = [list(word.encode("utf-8")) for word in word_freqs]
        freqs = list(word_freqs.values())
        counts = pair_counts(words, freqs)
        where: dict[tuple[int, int], set[int]] = {}  # pair -> indices of the words holding it
        for index, word in enumerate(words):
            for pair in pairwise(word):
                where.setdefault(pair, set()).add(index)
        # A max-heap of (-count, pair). Counts of old pairs only ever fall, so an entry is an
        # upper bound: a popped entry whose count is out of date goes back in, corrected.
        heap = [(-count, pair) for pair, count in counts.items()]
        heapq.heapify(heap)
        merges: list[tuple[int, int]] = []
        while len(merges) < vocab_size - smallest and heap:
            negative, pair = heapq.heappop(heap)
            count = counts.get(pair, 0)
            if count <= 0:
                continue
            if count != -negative:
                heapq.heappush(heap, (-count, pair))
                continue
            new_id = 256 + len(merges)
            merges.append(pair)
            born: set[tuple[int, int]] = set()
            for index in sorted(where.pop(pair)):
                old, freq = words[index], freqs[index]
                new = merge_pair(old, pair, new_id)
                words[index] = new
                old_pairs = list(pairwise(old))
                new_pairs = list(pairwise(new))
                for p in old_pairs:
                    counts[p] -= freq
                for p in new_pairs:
                    counts[p] += freq
                for p in set(old_pairs) - set(new_pairs):
                    if p in where:
                        where[p].discard(index)
                for p in new_pairs:
                    if new_id in p:
                        where.setdefault(p, set()).add(index)
                        born.add(p)
            del counts[pair]
            for p in sorted(born):
                heapq.heappush(heap, (-counts[p], p))
        return cls(merges, specials)

    # -- the vocabulary --

    @property
    def merges(self) -> list[tuple[int, int]]:
        """The learnt merges in order; merge i created id 256 + i."""
        return list(self._merges)

    @property
    def vocab_size(self) -> int:
        """256 bytes + merges + special tokens."""
        return len(self._vocab) + len(self._special_ids)

    def _check_id(self, i: int) -> int:
        if not isinstance(i, int) or isinstance(i, bool):
            raise TypeError(f"an id must be an int, got {type(i).__name__}")
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"id {i} is outside the vocabulary [0, {self.vocab_size})")
        return i

    def token_bytes(self, i: int) -> bytes:
        """The bytes that id `i` stands for (special tokens stand for none: ValueError)."""
        self._check_id(i)
        if i >= len(self._vocab):
            special = self.special_tokens[i - len(self._vocab)]
            raise ValueError(f"id {i} is the special token {special}, which stands for no bytes")
        return self._vocab[i]

    def id_to_token(self, i: int) -> str:
        """A printable form of id `i`: its bytes as text (invalid UTF-8 as \\x escapes), or the
        special token's name."""
        self._check_id(i)
        if i >= len(self._vocab):
            return self.special_tokens[i - len(self._vocab)]
        return self._vocab[i].decode("utf-8", errors="backslashreplace")

    # -- encoding and decoding --

    def _encode_piece(self, piece: str) -> list[int]:
        ids = list(piece.encode("utf-8"))
        ranks = self._ranks
        while len(ids) >= 2:
            pair = min(pairwise(ids), key=lambda p: ranks.get(p, len(ranks)))
            if pair not in ranks:
                break
            ids = merge_pair(ids, pair, 256 + ranks[pair])
        return ids

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Pre-tokenize, then merge inside each piece by rank; optionally add <bos>/<eos>.

        Book: 3.6 Tokenization: byte-pair encoding (Encoding new text).
        """
        _check_str(text)
        ids = [self.bos_id] if add_bos else []
        cache = self._cache
        for piece in _PRETOKEN_RE.findall(text):
            encoded = cache.get(piece)
            if encoded is None:
                encoded = self._encode_piece(piece)
                if len(cache) >= self._CACHE_LIMIT:
                    cache.clear()
                cache[piece] = encoded
            ids.extend(encoded)
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Sequence[int] | Tensor, skip_special: bool = True) -> str:
        """Join the ids' bytes and decode them as UTF-8. Encoded text comes back exactly; an
        arbitrary id sequence may cut a character, whose bytes then read as U+FFFD.
        Special tokens are dropped, or written out as "<eos>" etc. with skip_special=False.
        """
        pieces: list[str] = []
        buffer = bytearray()
        n_bytes_and_merges = len(self._vocab)
        for position, i in enumerate(_id_list(ids)):
            if not 0 <= i < self.vocab_size:
                raise ValueError(
                    f"id {i} at position {position} is outside the vocabulary "
                    f"[0, {self.vocab_size})"
                )
            if i < n_bytes_and_merges:
                buffer += self._vocab[i]
            elif not skip_special:
                pieces.append(buffer.decode("utf-8", errors="replace"))
                buffer.clear()
                pieces.append(self.special_tokens[i - n_bytes_and_merges])
        pieces.append(buffer.decode("utf-8", errors="replace"))
        return "".join(pieces)

    # -- saving --

    def save(self, path: str | Path) -> None:
        """Write the merges and special tokens as JSON."""
        data = {
            "format": "tutorlib.BPETokenizer",
            "version": 1,
            "pretoken_pattern": PRETOKEN_PATTERN,
            "special_tokens": list(self.special_tokens),
            "merges": [list(pair) for pair in self._merges],
        }
        Path(path).write_text(json.dumps(data), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        """Read a tokenizer written by `save`."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != "tutorlib.BPETokenizer":
            raise ValueError(f"{path} is not a tutorlib BPETokenizer file")
        if data.get("pretoken_pattern") != PRETOKEN_PATTERN:
            raise ValueError(f"{path} was saved with a different pre-tokenizer pattern")
        return cls([tuple(pair) for pair in data["merges"]], data["special_tokens"])

    def __repr__(self) -> str:
        return (
            f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self._merges)}, "
            f"specials={self.special_tokens})"
        )
