"""tutorlib.tokenizers: characters and byte-level BPE."""

from __future__ import annotations

import json
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tutorlib.tokenizers import (
    BPE_SPECIAL_TOKENS,
    BPETokenizer,
    CharTokenizer,
    merge_pair,
    most_frequent_pair,
    pair_counts,
    pretokenize,
)

TEXT = (
    "The lower layers learn the lowest-level patterns; the newest, widest layers learn more.\n"
    "    def encode(self, text):\n        return [self.ids[c] for c in text]\n"
    "Tokenizers turn text into ids, and ids back into text. It's 2016 and we're lowering "
    "the vocabulary size to 1,000 tokens; the tokenizer's merges are learnt, not written.\n"
) * 3
HELD_OUT = (
    "The tokenizer learns the lower layers of the text, and the newest merges are the widest.\n"
    "    def decode(self, ids):\n        return ''.join(self.chars[i] for i in ids)\n"
)


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(TEXT, 256 + len(BPE_SPECIAL_TOKENS) + 120)


def naive_train(text: str, n_merges: int) -> list[tuple[int, int]]:
    """BPE by the book: recount every pair after every merge."""
    words = [list(w.encode("utf-8")) for w in pretokenize(text)]
    merges = []
    for step in range(n_merges):
        counts = pair_counts(words)
        if not counts:
            break
        pair = most_frequent_pair(counts)
        merges.append(pair)
        words = [merge_pair(w, pair, 256 + step) for w in words]
    return merges


# --- The pieces of the merge loop -------------------------------------------------------------


@pytest.mark.parametrize(
    "ids, pair, expected",
    [
        ([1, 2, 3, 1, 2], (1, 2), [9, 3, 9]),
        ([5, 5, 5], (5, 5), [9, 5]),  # left to right, no overlap
        ([5, 5, 5, 5], (5, 5), [9, 9]),
        ([1, 3, 2], (1, 2), [1, 3, 2]),
        ([2, 1], (1, 2), [2, 1]),
        ([], (1, 2), []),
        ([1], (1, 2), [1]),
    ],
)
def test_merge_pair(ids, pair, expected) -> None:
    assert merge_pair(ids, pair, 9) == expected


def test_merge_pair_rejects_a_pair_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="two ids"):
        merge_pair([1, 2], (1, 2, 3), 9)


def test_pair_counts_counts_overlaps_and_weights() -> None:
    counts = pair_counts([[5, 5, 5], [1, 2]], weights=[3, 2])
    assert counts == {(5, 5): 6, (1, 2): 2}
    assert pair_counts([torch.tensor([1, 2, 1, 2])]) == {(1, 2): 2, (2, 1): 1}


def test_pair_counts_errors() -> None:
    with pytest.raises(TypeError, match=r"pair_counts\(\[ids\]\)"):
        pair_counts([1, 2, 3])
    with pytest.raises(ValueError, match="2 sequences but 1 weights"):
        pair_counts([[1, 2], [3, 4]], weights=[1])


def test_most_frequent_pair_breaks_ties_by_the_smallest_pair() -> None:
    assert most_frequent_pair({(7, 1): 3, (2, 9): 3, (2, 3): 1}) == (2, 9)
    assert most_frequent_pair({(7, 1): 4, (2, 9): 3}) == (7, 1)
    with pytest.raises(ValueError, match="no pairs"):
        most_frequent_pair({})


@given(st.text())
def test_pretokenize_covers_every_character(text) -> None:
    assert "".join(pretokenize(text)) == text


def test_pretokenize_splits_like_gpt2() -> None:
    assert pretokenize("Hello world, it's 2016!  ok") == [
        "Hello",
        " world",
        ",",
        " it",
        "'s",
        " 2016",
        "!",
        " ",
        " ok",
    ]
    assert pretokenize("snake_case") == ["snake", "_", "case"]


# --- Training ---------------------------------------------------------------------------------


def test_first_merge_is_the_most_frequent_pair_by_brute_force(bpe) -> None:
    counts: dict[tuple[int, int], int] = {}
    for word in pretokenize(TEXT):
        data = word.encode("utf-8")
        for i in range(len(data) - 1):
            pair = (data[i], data[i + 1])
            counts[pair] = counts.get(pair, 0) + 1
    best = max(counts.values())
    expected = min(pair for pair, count in counts.items() if count == best)
    assert bpe.merges[0] == expected


def test_incremental_training_equals_naive_training(bpe) -> None:
    assert bpe.merges == naive_train(TEXT, len(bpe.merges))


def test_training_is_deterministic(bpe) -> None:
    again = BPETokenizer.train(TEXT, bpe.vocab_size)
    assert again.merges == bpe.merges
    assert again.encode(HELD_OUT) == bpe.encode(HELD_OUT) == bpe.encode(HELD_OUT)


def test_smaller_vocabularies_learn_a_prefix_of_the_merges(bpe) -> None:
    small = BPETokenizer.train(TEXT, bpe.vocab_size - 50)
    assert small.merges == bpe.merges[: len(small.merges)]
    assert len(small.merges) == len(bpe.merges) - 50


def test_training_stops_when_no_pair_is_left() -> None:
    tok = BPETokenizer.train("ab ab", 1000)
    assert tok.merges == [(97, 98), (32, 256)]
    assert tok.vocab_size == 256 + 2 + len(BPE_SPECIAL_TOKENS)


def test_vocab_size_counts_bytes_merges_and_specials(bpe) -> None:
    assert bpe.vocab_size == 256 + 120 + len(BPE_SPECIAL_TOKENS)
    assert len(bpe.merges) == 120
    for rank, (a, b) in enumerate(bpe.merges):
        assert bpe.token_bytes(256 + rank) == bpe.token_bytes(a) + bpe.token_bytes(b)


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((b"bytes", 300), TypeError, "text must be a str"),
        (("", 300), ValueError, "text is empty"),
        (("abc", 260), ValueError, "at least 256 bytes"),
        (("abc", 300.0), TypeError, "vocab_size must be an int"),
        (("abc", 300, ("<bos>", "<eos>")), ValueError, "missing"),
        (("abc", 300, ("<pad>", "<bos>", "<eos>", "<pad>")), ValueError, "distinct"),
        (("abc", 300, "<pad>"), TypeError, "sequence of str"),
    ],
)
def test_train_errors(args, error, match) -> None:
    with pytest.raises(error, match=match):
        BPETokenizer.train(*args)


def test_constructor_checks_merges() -> None:
    assert BPETokenizer([(104, 105), (256, 33)]).decode([257]) == "hi!"
    with pytest.raises(ValueError, match="merge 0"):
        BPETokenizer([(256, 1)])  # id 256 does not exist before merge 0
    with pytest.raises(ValueError, match="merge 1"):
        BPETokenizer([(1, 2), (1, 2, 3)])


def test_training_on_the_whole_corpus_is_fast() -> None:
    from tutorlib.corpus import corpus_text

    text = corpus_text()
    start = time.perf_counter()
    tok = BPETokenizer.train(text, 256 + len(BPE_SPECIAL_TOKENS) + 1000)
    seconds = time.perf_counter() - start
    assert len(tok.merges) == 1000
    assert seconds < 20, f"1000 merges on the corpus took {seconds:.1f} s"


# --- Encoding and decoding --------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_round_trip_of_arbitrary_text(bpe, text) -> None:
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert len(ids) <= len(text.encode("utf-8"))
    assert all(0 <= i < 256 + len(bpe.merges) for i in ids)  # no special from text


def test_round_trip_of_unicode_and_how_bytes_split(bpe) -> None:
    text = "naïve café — 東京 🙂"
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert b"".join(bpe.token_bytes(i) for i in ids) == text.encode("utf-8")
    emoji = BPETokenizer([]).encode("🙂")
    assert emoji == list("🙂".encode()) and len(emoji) == 4


def test_compression_ratio_on_held_out_text(bpe) -> None:
    ids = bpe.encode(HELD_OUT)
    ratio = len(HELD_OUT.encode("utf-8")) / len(ids)
    assert ratio > 1.5, ratio
    assert BPETokenizer([]).encode(HELD_OUT) == list(HELD_OUT.encode("utf-8"))


def test_encode_is_the_same_with_and_without_the_cache(bpe) -> None:
    fresh = BPETokenizer(bpe.merges)
    assert fresh.encode(HELD_OUT) == bpe.encode(HELD_OUT)
    assert fresh.encode(HELD_OUT) == bpe.encode(HELD_OUT)  # now from the cache


def test_training_text_is_encoded_as_the_merges_left_it(bpe) -> None:
    # Encoding by rank reproduces training's segmentation of the training words.
    words = [list(w.encode("utf-8")) for w in pretokenize(TEXT)]
    for rank, pair in enumerate(bpe.merges):
        words = [merge_pair(w, pair, 256 + rank) for w in words]
    assert bpe.encode(TEXT) == [i for w in words for i in w]


def test_special_tokens_are_never_made_from_text(bpe) -> None:
    ids = bpe.encode("<mask> <cls><pad>")
    specials = {bpe.pad_id, bpe.bos_id, bpe.eos_id, bpe.mask_id, bpe.cls_id}
    assert not specials & set(ids)
    assert bpe.decode(ids) == "<mask> <cls><pad>"


def test_special_token_ids_and_decoding(bpe) -> None:
    first = 256 + len(bpe.merges)
    assert [bpe.token_to_id(t) for t in BPE_SPECIAL_TOKENS] == list(range(first, first + 5))
    assert (bpe.pad_id, bpe.bos_id, bpe.eos_id, bpe.mask_id, bpe.cls_id) == tuple(
        range(first, first + 5)
    )
    ids = bpe.encode("the text", add_bos=True, add_eos=True)
    assert ids[0] == bpe.bos_id and ids[-1] == bpe.eos_id
    assert bpe.decode(ids) == "the text"
    assert bpe.decode(ids, skip_special=False) == "<bos>the text<eos>"
    assert bpe.decode([bpe.mask_id, *bpe.encode("é")], skip_special=False) == "<mask>é"
    with pytest.raises(AttributeError, match="no <unk> token"):
        _ = bpe.unk_id
    with pytest.raises(KeyError, match="not a special token"):
        bpe.token_to_id("<sep>")


def test_decode_of_arbitrary_ids_replaces_broken_characters(bpe) -> None:
    assert bpe.decode([0xE6, 0x9D]) == "\ufffd"  # the first two bytes of 東
    assert bpe.decode(torch.tensor(list("東".encode()))) == "東"


def test_token_bytes_and_id_to_token(bpe) -> None:
    assert bpe.token_bytes(65) == b"A"
    assert bpe.id_to_token(65) == "A"
    assert bpe.id_to_token(0xE6) == "\\xe6"
    assert bpe.id_to_token(bpe.mask_id) == "<mask>"
    with pytest.raises(ValueError, match="stands for no bytes"):
        bpe.token_bytes(bpe.mask_id)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        bpe.id_to_token(bpe.vocab_size)
    with pytest.raises(TypeError, match="must be an int"):
        bpe.token_bytes("A")


def test_encode_and_decode_errors(bpe) -> None:
    with pytest.raises(TypeError, match="text must be a str"):
        bpe.encode(b"bytes")
    with pytest.raises(TypeError, match="text must be a str"):
        bpe.encode(None)
    with pytest.raises(ValueError, match="id 9999 at position 1 is outside"):
        bpe.decode([65, 9999])
    with pytest.raises(ValueError, match="1-D integer tensor"):
        bpe.decode(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="1-D integer tensor"):
        bpe.decode(torch.zeros(3))
    with pytest.raises(TypeError, match="sequence of ints"):
        bpe.decode("abc")
    with pytest.raises(TypeError, match="sequence of ints"):
        bpe.decode([1.5])


def test_save_and_load_round_trip(bpe, tmp_path) -> None:
    path = tmp_path / "bpe.json"
    bpe.save(path)
    loaded = BPETokenizer.load(path)
    assert loaded.merges == bpe.merges
    assert loaded.special_tokens == bpe.special_tokens
    assert loaded.encode(HELD_OUT) == bpe.encode(HELD_OUT)
    assert loaded.vocab_size == bpe.vocab_size


def test_load_rejects_other_files(bpe, tmp_path) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"merges": []}))
    with pytest.raises(ValueError, match="not a tutorlib BPETokenizer file"):
        BPETokenizer.load(path)
    bpe.save(path)
    data = json.loads(path.read_text())
    data["pretoken_pattern"] = r"\S+|\s+"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="different pre-tokenizer"):
        BPETokenizer.load(path)


# --- Batches ----------------------------------------------------------------------------------


def test_bpe_encode_batch_pads_on_the_right(bpe) -> None:
    texts = ["the lower layers", "ids", ""]
    ids, mask = bpe.encode_batch(texts, add_eos=True)
    lengths = [len(bpe.encode(t, add_eos=True)) for t in texts]
    assert ids.shape == mask.shape == (3, max(lengths))
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == lengths
    assert (ids[~mask] == bpe.pad_id).all()
    for row, text in enumerate(texts):
        assert bpe.decode(ids[row][mask[row]]) == text


def test_encode_batch_max_length_and_truncation(bpe) -> None:
    # "Q", "~" and "Z" are separate pre-tokens of one byte each: one token apiece.
    ids, mask = bpe.encode_batch(["Q~", "Q"], max_length=6)
    assert ids.shape == (2, 6) and mask.sum(dim=1).tolist() == [2, 1]
    with pytest.raises(ValueError, match="text 1 is 3 tokens long, more than max_length=2"):
        bpe.encode_batch(["Q", "Q~Z"], max_length=2)
    ids, mask = bpe.encode_batch(["Q", "Q~Z"], max_length=2, truncate=True)
    assert ids.shape == (2, 2) and mask.all(dim=1).tolist() == [False, True]
    assert bpe.decode(ids[1]) == "Q~"


@pytest.mark.parametrize(
    "texts, kwargs, error, match",
    [
        ("one text", {}, TypeError, r"encode_batch\(\[text\]\)"),
        ([], {}, ValueError, "texts is empty"),
        (["a"], {"max_length": 0}, ValueError, "max_length must be a positive int"),
        (["a", 3], {}, TypeError, "text must be a str"),
    ],
)
def test_encode_batch_errors(bpe, texts, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        bpe.encode_batch(texts, **kwargs)


# --- Characters -------------------------------------------------------------------------------


def test_char_tokenizer_round_trip_and_ids() -> None:
    tok = CharTokenizer("abc ")
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.vocab_size == 7
    assert tok.encode("cab a") == [5, 3, 4, 6, 3]
    assert tok.encode("ab", add_bos=True, add_eos=True) == [1, 3, 4, 2]
    assert tok.decode([1, 3, 4, 2]) == "ab"
    assert tok.decode([1, 3, 4, 2], skip_special=False) == "<bos>ab<eos>"


def test_char_tokenizer_unknown_character_names_it_and_its_position() -> None:
    tok = CharTokenizer("abc")
    with pytest.raises(ValueError, match=r"character 'z' at position 2 is not in"):
        tok.encode("abz")
    with_unk = CharTokenizer("abc", ("<pad>", "<bos>", "<eos>", "<unk>"))
    assert with_unk.encode("azb") == [4, with_unk.unk_id, 5]


def test_char_tokenizer_padding_mask() -> None:
    tok = CharTokenizer.from_text("hello world")
    ids, mask = tok.encode_batch(["hello", "lo", "world!!"[:5]], add_bos=True)
    assert ids.shape == (3, 6)
    assert mask.tolist()[1] == [True, True, True, False, False, False]
    assert (ids[~mask] == tok.pad_id).all()
    assert ids[:, 0].eq(tok.bos_id).all()


def test_char_tokenizer_errors() -> None:
    with pytest.raises(ValueError, match="repeated: \\['a'\\]"):
        CharTokenizer("aba")
    with pytest.raises(ValueError, match="chars is empty"):
        CharTokenizer("")
    with pytest.raises(TypeError, match="chars must be a str"):
        CharTokenizer(["a", "b"])
    with pytest.raises(ValueError, match="missing \\['<pad>'\\]"):
        CharTokenizer("ab", ("<bos>", "<eos>"))
    tok = CharTokenizer("ab")
    with pytest.raises(ValueError, match="id 7 at position 0 is outside"):
        tok.decode([7])
    with pytest.raises(AttributeError, match="no <mask> token"):
        _ = tok.mask_id
    with pytest.raises(TypeError, match="text must be a str"):
        tok.encode(3)
