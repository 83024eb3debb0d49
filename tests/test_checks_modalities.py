"""The checks of the exercises on windows, sound and proteins (solutions/05_vision/
03_windows_sound_proteins): right answers written differently pass, every likely mistake gets
its own hint whatever the hidden tests draw, tutorlib's references (and the libraries that
compute the same thing: Hugging Face's Swin and audio utilities, RapidFuzz) cannot stand in for
the learner's code, hidden failures show no hidden value, and the checks' written-out references
agree with tutorlib's."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from tests.conftest import expect_hint, expect_named_alone, expect_pass, expect_refused
from tests.grading import solution_namespace
from tutorlib import proteins, speech, swin
from tutorlib.checks import ExerciseError, draw
from tutorlib.checks import modalities as checks
from tutorlib.checks.draw import Draw

MANY_SEEDS = [f"many-{i}" for i in range(10)]
DRAWS = range(100)  # for properties of the hidden draws, which cost no check call
F64 = torch.float64


@pytest.fixture(scope="module")
def solution() -> dict:
    return solution_namespace("05_vision")


@pytest.mark.parametrize(
    "name, check",
    [
        ("shifted_window_mask", checks.check_shifted_window_mask),
        ("mel_filterbank", checks.check_mel_filterbank),
        ("word_error_rate", checks.check_word_error_rate),
        ("contact_precision", checks.check_contact_precision),
        ("apc", checks.check_apc),
    ],
)
def test_the_solutions_pass_under_many_seeds(solution, name: str, check) -> None:
    expect_pass(check, solution[name], seeds=MANY_SEEDS)


# --- 1. The mask of shifted windows --------------------------------------------------------------


def window_mask(kind: str = ""):
    """The mask as learners write it: Swin's original slices of a label image, rolled or not."""

    def shifted_window_mask(height, width, window, shift):
        img = torch.zeros(height, width, dtype=torch.long)
        if kind == "wrapped_first":
            slices = (slice(0, shift), slice(shift, window), slice(window, None))
        else:
            slices = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
        if shift == 0:
            slices = (slice(0, None),)
        label = 0
        for h in slices:
            for w in slices if kind != "rows_only" else (slice(0, None),):
                img[h, w] = label
                label += 1
        if kind == "sum_labels" and shift:  # a region number per axis, added
            rows, cols = torch.zeros(height, dtype=torch.long), torch.zeros(width, dtype=torch.long)
            for n, part in enumerate(slices):
                rows[part], cols[part] = n, n
            img = rows[:, None] + cols[None, :]
        nH, nW = height // window, width // window
        grid = img.view(nH, window, nW, window)
        if kind == "windows_by_column":
            grid = grid.permute(2, 0, 1, 3)
        elif kind == "tokens_by_column":
            grid = grid.permute(0, 2, 3, 1)
        else:
            grid = grid.permute(0, 2, 1, 3)
        labels = grid.reshape(nH * nW, window * window)
        mask = labels.unsqueeze(1) == labels.unsqueeze(2)
        if kind == "inverted":
            return ~mask
        if kind == "additive":
            return torch.zeros(mask.shape).masked_fill(~mask, -100.0)
        if kind == "as_float":
            return mask.float()
        return mask

    return shifted_window_mask


def test_masks_written_other_ways_pass(solution) -> None:
    def by_rolling_positions(height, width, window, shift):
        # label the unrolled image by its window of the unshifted grid ... of the shifted one:
        # roll the region labels of the original positions, as the blocks roll the tokens
        rows = torch.arange(height)
        cols = torch.arange(width)
        r = ((rows + shift) % height < shift).long() * 2  # wrapped rows
        r = torch.where((r == 0) & (rows >= height - window), 1, r)
        c = ((cols + shift) % width < shift).long() * 2
        c = torch.where((c == 0) & (cols >= width - window), 1, c)
        labels = r[:, None] * 10 + c[None, :]
        windows = labels.unfold(0, window, window).unfold(1, window, window)  # (nH, nW, w, w)
        flat = windows.reshape(-1, window * window)
        return flat[:, :, None] == flat[:, None, :]

    def by_loops(height, width, window, shift):
        def region(p, n):
            return 0 if p < n - window else (1 if p < n - shift else 2)

        masks = []
        for wi in range(height // window):
            for wj in range(width // window):
                tokens = [
                    (region(wi * window + r, height), region(wj * window + c, width))
                    for r in range(window)
                    for c in range(window)
                ]
                masks.append([[a == b for b in tokens] for a in tokens])
        return torch.tensor(masks, dtype=torch.bool)

    for fn in (by_rolling_positions, by_loops, window_mask()):
        expect_pass(checks.check_shifted_window_mask, fn)


@pytest.mark.parametrize(
    "kind, hint, visible",
    [
        ("inverted", "True and False are swapped", 1),
        ("wrapped_first", "the regions are at the start of each axis", 1),
        ("rows_only", "only the rows are labelled", 1),
        ("sum_labels", "the row and column labels are added", 1),
        ("windows_by_column", "the windows are in the wrong order", 1),
        ("tokens_by_column", "read column by column", 1),
        ("additive", "not an additive mask", 1),
        ("as_float", "return a bool tensor", 1),
    ],
)
def test_mask_mistakes_are_named(kind: str, hint: str, visible: bool) -> None:
    if visible:
        expect_hint(checks.check_shifted_window_mask, window_mask(kind), hint, hidden=False)
    expect_named_alone(checks.check_shifted_window_mask, window_mask(kind), hint)


def test_the_first_hidden_mask_tells_every_mistake_apart() -> None:
    for seed in DRAWS:
        case = checks._mask_hidden(Draw(seed))[0]
        values = [checks._mask(*case), *(checks._mask(*case, k) for k in checks.MASK_MISTAKES)]
        for a in range(len(values)):
            for b in range(a + 1, len(values)):
                assert not torch.equal(values[a], values[b]), (seed, case, a, b)


def test_the_mask_reference_agrees_with_tutorlib_swin() -> None:
    for seed in range(30):
        for case in checks._mask_hidden(Draw(seed)) + checks._visible_mask():
            assert torch.equal(checks._mask(*case), swin.shifted_window_mask(*case)), case


def test_tutorlib_swin_and_hugging_face_are_refused() -> None:
    mask = swin.shifted_window_mask
    expect_refused(checks.check_shifted_window_mask, lambda h, w, n, s: mask(h, w, n, s))

    def through_window_partition(height, width, window, shift):
        rows = torch.arange(height)
        labels = (rows >= height - window).long() + (rows >= height - shift).long()
        cols = torch.arange(width)
        c = (cols >= width - window).long() + (cols >= width - shift).long()
        grid = (3 * labels[:, None] + c[None, :])[None, :, :, None]
        flat = swin.window_partition(grid, window)[..., 0]
        return flat[:, :, None] == flat[:, None, :]

    expect_refused(checks.check_shifted_window_mask, through_window_partition)

    from transformers.models.swin.modeling_swin import window_partition

    def through_hugging_face(height, width, window, shift):
        img = torch.zeros(1, height, width, 1)
        count = 0
        for h in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            for w in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
                img[:, h, w, :] = count
                count += 1
        flat = window_partition(img, window).view(-1, window * window)
        return flat[:, :, None] == flat[:, None, :]

    expect_refused(checks.check_shifted_window_mask, through_hugging_face)


# --- 2. The mel filterbank -----------------------------------------------------------------------


def filterbank(kind: str = ""):
    """The bank as learners write it: a loop over the filters, in numpy's order of operations."""

    def mel_filterbank(n_mels, n_fft, sample_rate):
        def hz_to_mel(f):
            if kind == "htk":
                return 2595.0 * math.log10(1.0 + f / 700.0)
            return 3.0 * f / 200.0 if f < 1000 else 15.0 + math.log(f / 1000.0) * 27 / math.log(6.4)

        def mel_to_hz(m):
            if kind == "htk":
                return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
            return 200.0 * m / 3.0 if m < 15 else 1000.0 * math.exp((m - 15.0) * math.log(6.4) / 27)

        K = n_fft // 2 + 1
        if kind == "linspace_bins":
            freqs = torch.linspace(0, sample_rate / 2, K, dtype=torch.float64)
        else:
            freqs = torch.arange(K, dtype=torch.float64) * sample_rate / n_fft
        top = sample_rate if kind == "to_sample_rate" else sample_rate / 2
        if kind == "linear_hz":
            f = [top * m / (n_mels + 1) for m in range(n_mels + 2)]
        else:
            step = hz_to_mel(top) / (n_mels + 1)
            f = [mel_to_hz(step * m) for m in range(n_mels + 2)]
        bank = torch.zeros(n_mels, K, dtype=torch.float64)
        for m in range(n_mels):
            up = (freqs - f[m]) / (f[m + 1] - f[m])
            down = (f[m + 2] - freqs) / (f[m + 2] - f[m + 1])
            tri = torch.minimum(up, down)
            if kind != "no_clamp":
                tri = torch.clamp(tri, min=0)
            if kind == "full_width":
                tri = tri / (f[m + 2] - f[m])
            elif kind == "unit_sum":
                tri = tri / tri.sum()
            elif kind == "float32":
                tri = (tri * 2 / (f[m + 2] - f[m])).float()
            elif kind != "no_normalise":
                tri = tri * 2 / (f[m + 2] - f[m])
            bank[m] = tri
        return bank.float() if kind == "float32" else bank

    return mel_filterbank


def test_filterbanks_written_other_ways_pass(solution) -> None:
    def in_float32(n_mels, n_fft, sample_rate):
        return filterbank("float32")(n_mels, n_fft, sample_rate).float()

    def with_where(n_mels, n_fft, sample_rate):
        bins = torch.arange(n_fft // 2 + 1, dtype=F64) * (sample_rate / n_fft)
        nyquist = torch.tensor(sample_rate / 2, dtype=F64)
        top = torch.where(
            nyquist < 1000, 3 * nyquist / 200, 15 + 27 * torch.log(nyquist / 1000) / math.log(6.4)
        )
        mels = torch.linspace(0, 1, n_mels + 2, dtype=F64) * top
        hz = torch.where(mels < 15, 200 * mels / 3, 1000 * (6.4 ** ((mels - 15) / 27)))
        lower, centre, upper = hz[:-2].unsqueeze(1), hz[1:-1].unsqueeze(1), hz[2:].unsqueeze(1)
        rising = (bins - lower) / (centre - lower)
        falling = (upper - bins) / (upper - centre)
        tri = torch.relu(torch.min(rising, falling))
        return tri / ((upper - lower) / 2)

    for fn in (in_float32, with_where, filterbank()):
        expect_pass(checks.check_mel_filterbank, fn)


@pytest.mark.parametrize(
    "kind, hint, visible",
    [
        ("htk", "this is the HTK mel scale", 1),
        ("no_normalise", "the triangles are not area-normalised", 1),
        ("full_width", "divided by its full width", 1),
        ("unit_sum", "each filter is scaled to sum to 1", 1),
        ("linear_hz", "evenly spaced in Hz", 1),
        ("to_sample_rate", "the filters reach the sample rate", 1),
        ("no_clamp", "the triangles go negative", 1),
        ("linspace_bins", "the frequencies of the FFT bins", 1),
    ],
)
def test_filterbank_mistakes_are_named(kind: str, hint: str, visible: bool) -> None:
    if visible:
        expect_hint(checks.check_mel_filterbank, filterbank(kind), hint, hidden=False)
    expect_named_alone(checks.check_mel_filterbank, filterbank(kind), hint)


def test_a_transposed_filterbank_is_told_so() -> None:
    def transposed(n_mels, n_fft, sample_rate):
        return filterbank()(n_mels, n_fft, sample_rate).T

    expect_hint(checks.check_mel_filterbank, transposed, "one column per filter", hidden=False)
    expect_named_alone(checks.check_mel_filterbank, transposed, "one column per filter")


def test_the_hidden_filterbanks_tell_every_mistake_apart() -> None:
    for seed in DRAWS:
        odd, even, single = checks._mel_hidden(Draw(seed))
        assert odd[1] % 2 == 1 and even[1] % 2 == 0 and single[0] == 1
        assert checks._mel_told_apart(odd) and checks._mel_told_apart(even), seed


def test_the_filterbank_reference_agrees_with_tutorlib_speech() -> None:
    for seed in range(20):
        for case in checks._mel_hidden(Draw(seed)) + checks._visible_mel():
            torch.testing.assert_close(
                checks._filterbank(*case).float(), speech.mel_filterbank(*case)
            )


def test_tutorlib_speech_and_hugging_face_audio_are_refused() -> None:
    bank = speech.mel_filterbank
    expect_refused(checks.check_mel_filterbank, lambda m, n, r: bank(m, n, r).double())

    def through_tutorlib_scale(n_mels, n_fft, sample_rate):
        f = speech.mel_to_hz(
            torch.linspace(0, float(speech.hz_to_mel(sample_rate / 2)), n_mels + 2)
        )
        bins = torch.arange(n_fft // 2 + 1, dtype=F64) * sample_rate / n_fft
        left, centre, right = f[:-2, None], f[1:-1, None], f[2:, None]
        tri = torch.minimum((bins - left) / (centre - left), (right - bins) / (right - centre))
        return tri.clamp(min=0) * 2 / (right - left)

    expect_refused(checks.check_mel_filterbank, through_tutorlib_scale)

    from transformers.audio_utils import mel_filter_bank

    def through_hugging_face(n_mels, n_fft, sample_rate):
        bank = mel_filter_bank(
            n_fft // 2 + 1, n_mels, 0.0, sample_rate / 2, sample_rate, "slaney", "slaney"
        )
        return torch.from_numpy(bank).T

    expect_refused(checks.check_mel_filterbank, through_hugging_face)


# --- 3. The word error rate ----------------------------------------------------------------------


def error_rate(kind: str = ""):
    """The rate as learners write it: a full table of distances."""

    def word_error_rate(references, hypotheses):
        total_edits, total_words, rates = 0, 0, []
        for ref, hyp in zip(references, hypotheses, strict=True):
            if kind == "characters":
                r, h = list(ref), list(hyp)
            elif kind == "split_space":
                r, h = ref.split(" "), hyp.split(" ")
            else:
                r, h = ref.split(), hyp.split()
            if kind == "positional":
                edits = sum(a != b for a, b in zip(r, h, strict=False)) + abs(len(r) - len(h))
            else:
                d = [[0] * (len(h) + 1) for _ in range(len(r) + 1)]
                for i in range(len(r) + 1):
                    d[i][0] = i
                for j in range(len(h) + 1):
                    d[0][j] = j
                for i in range(1, len(r) + 1):
                    for j in range(1, len(h) + 1):
                        cost = (
                            0 if r[i - 1] == h[j - 1] else (2 if kind == "substitution_two" else 1)
                        )
                        d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
                edits = d[len(r)][len(h)]
            total_edits += edits
            total_words += len(h) if kind == "by_hypothesis" else len(r)
            rates.append(edits / len(r))
        if kind == "mean_of_rates":
            return sum(rates) / len(rates)
        rate = total_edits / total_words
        return min(1.0, rate) if kind == "capped" else rate

    return word_error_rate


def test_error_rates_written_other_ways_pass(solution) -> None:
    from functools import cache

    def recursive(references, hypotheses):
        def distance(r, h):
            @cache
            def d(i, j):
                if i == 0 or j == 0:
                    return i + j
                return min(
                    d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (r[i - 1] != h[j - 1])
                )

            return d(len(r), len(h))

        pairs = [(r.split(), h.split()) for r, h in zip(references, hypotheses, strict=True)]
        return sum(distance(r, h) for r, h in pairs) / sum(len(r) for r, _ in pairs)

    def with_a_tensor_table(references, hypotheses):
        edits = torch.tensor(0)
        n = 0
        for ref, hyp in zip(references, hypotheses, strict=True):
            r, h = ref.split(), hyp.split()
            d = torch.zeros(len(r) + 1, len(h) + 1, dtype=torch.long)
            d[:, 0] = torch.arange(len(r) + 1)
            d[0, :] = torch.arange(len(h) + 1)
            for i in range(1, len(r) + 1):
                for j in range(1, len(h) + 1):
                    d[i, j] = min(
                        d[i - 1, j] + 1,
                        d[i, j - 1] + 1,
                        d[i - 1, j - 1] + int(r[i - 1] != h[j - 1]),
                    )
            edits = edits + d[-1, -1]
            n += len(r)
        return edits / n  # a 0-d tensor

    for fn in (recursive, with_a_tensor_table, error_rate()):
        expect_pass(checks.check_word_error_rate, fn)


@pytest.mark.parametrize(
    "kind, hint, visible",
    [
        ("mean_of_rates", "this is the mean of the sentences' error rates", 1),
        ("by_hypothesis", "divided by the number of words in the hypotheses", 1),
        ("characters", "these are character edits", 1),
        ("substitution_two", "a substitution costs 2 here", 1),
        ("positional", "the words are compared position by position", 1),
        ("capped", "the rate is capped at 1", 1),
        ("split_space", "the words are split at single spaces", 1),
    ],
)
def test_error_rate_mistakes_are_named(kind: str, hint: str, visible: bool) -> None:
    if visible:
        expect_hint(checks.check_word_error_rate, error_rate(kind), hint, hidden=False)
    expect_named_alone(checks.check_word_error_rate, error_rate(kind), hint)


def test_the_hidden_transcripts_do_what_they_say() -> None:
    for seed in DRAWS:
        (refs, hyps), (refs2, hyps2), (refs3, hyps3) = checks._wer_hidden(Draw(seed))
        assert checks._wer(refs, hyps) < 1 < checks._wer(refs2, hyps2)
        assert any("  " in h for h in hyps) and hyps3[1] == ""
        assert checks._wer_told_apart(refs, hyps, ("capped",))
        assert checks._wer_told_apart(refs2, hyps2, ())
        assert len({len(r.split()) for r in refs}) > 1  # sentences of different lengths


def test_the_error_rate_reference_agrees_with_tutorlib_speech() -> None:
    for seed in range(30):
        for refs, hyps in checks._wer_hidden(Draw(seed)) + checks._visible_wer():
            assert checks._wer(refs, hyps) == pytest.approx(speech.word_error_rate(refs, hyps))


def test_tutorlib_speech_and_edit_distance_libraries_are_refused() -> None:
    wer = speech.word_error_rate
    expect_refused(checks.check_word_error_rate, lambda refs, hyps: wer(refs, hyps))

    distance = speech.edit_distance

    def through_edit_distance(references, hypotheses):
        pairs = list(zip(references, hypotheses, strict=True))
        return sum(distance(r.split(), h.split()) for r, h in pairs) / sum(
            len(r.split()) for r in references
        )

    expect_refused(checks.check_word_error_rate, through_edit_distance)

    from rapidfuzz.distance import Levenshtein

    def through_rapidfuzz(references, hypotheses):
        edits = sum(
            Levenshtein.distance(r.split(), h.split())
            for r, h in zip(references, hypotheses, strict=True)
        )
        return edits / sum(len(r.split()) for r in references)

    expect_refused(checks.check_word_error_rate, through_rapidfuzz)

    lev = Levenshtein.distance  # a compiled function, bound to a name of its own

    def helper(r, h):
        return lev(r.split(), h.split())

    def through_a_helper(references, hypotheses):
        pairs = zip(references, hypotheses, strict=True)
        return sum(helper(r, h) for r, h in pairs) / sum(len(r.split()) for r in references)

    expect_refused(checks.check_word_error_rate, through_a_helper)

    table = {"distance": functools.partial(Levenshtein.distance)}  # in a container, wrapped

    def through_a_table(references, hypotheses):
        pairs = zip(references, hypotheses, strict=True)
        edits = sum(table["distance"](r.split(), h.split()) for r, h in pairs)
        return edits / sum(len(r.split()) for r in references)

    expect_refused(checks.check_word_error_rate, through_a_table)

    def imported_inside(references, hypotheses):
        from rapidfuzz.distance.Levenshtein import distance as d

        pairs = zip(references, hypotheses, strict=True)
        return sum(d(r.split(), h.split()) for r, h in pairs) / sum(
            len(r.split()) for r in references
        )

    expect_refused(checks.check_word_error_rate, imported_inside)


def test_a_learner_function_named_like_a_library_is_not_refused() -> None:
    def Levenshtein(r, h):  # noqa: N802 - the learner's own function, named after the library
        previous = list(range(len(h) + 1))
        for i, a in enumerate(r, 1):
            current = [i]
            for j, b in enumerate(h, 1):
                current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a != b)))
            previous = current
        return previous[-1]

    def word_error_rate(references, hypotheses):
        pairs = zip(references, hypotheses, strict=True)
        edits = sum(Levenshtein(r.split(), h.split()) for r, h in pairs)
        return edits / sum(len(r.split()) for r in references)

    expect_pass(checks.check_word_error_rate, word_error_rate)


# --- 4. Precision at k of predicted contacts -----------------------------------------------------


def precision(kind: str = ""):
    def contact_precision(scores, contacts, k, min_separation=6):
        L = scores.shape[0]
        pairs = []
        for i in range(L):
            for j in range(L):
                gap = j - i if kind != "both_triangles" else abs(j - i)
                low = {"no_separation": 1, "strict": min_separation + 1}.get(kind, min_separation)
                if gap >= low:
                    pairs.append((float(scores[i, j]), i, j))
        pairs.sort(key=lambda p: p[0], reverse=kind != "lowest")
        hits = sum(bool(contacts[i, j]) for _, i, j in pairs[:k])
        if kind == "recall":
            i, j = torch.triu_indices(L, L, offset=min_separation)
            return hits / contacts[i, j].sum().item()
        if kind == "tensor":
            return torch.tensor(hits / k)
        return hits / k

    return contact_precision


def test_precisions_written_other_ways_pass(solution) -> None:
    def with_topk_and_mask(scores, contacts, k, min_separation=6):
        L = scores.shape[0]
        idx = torch.arange(L)
        far = (idx[None, :] - idx[:, None]) >= min_separation
        ranked = scores.masked_fill(~far, float("-inf")).flatten()
        top = torch.topk(ranked, k).indices
        return contacts.flatten()[top].double().mean().item()

    def with_numpy(scores, contacts, k, min_separation=6):
        import numpy as np

        s, c = scores.numpy(), contacts.numpy()
        i, j = np.triu_indices(len(s), k=min_separation)
        best = np.argsort(-s[i, j])[:k]
        return float(c[i[best], j[best]].mean())

    for fn in (with_topk_and_mask, with_numpy, precision(), precision("tensor")):
        expect_pass(checks.check_contact_precision, fn)


@pytest.mark.parametrize(
    "kind, hint, visible",
    [
        ("no_separation", "pairs closer than min_separation are ranked too", 1),
        ("strict", "the pairs at exactly min_separation are left out", 1),
        ("both_triangles", "each pair is ranked twice", 1),
        ("lowest", "these are the k lowest-scoring pairs", 1),
        ("recall", "this is the recall", 1),
    ],
)
def test_precision_mistakes_are_named(kind: str, hint: str, visible: bool) -> None:
    if visible:
        expect_hint(checks.check_contact_precision, precision(kind), hint, hidden=False)
    expect_named_alone(checks.check_contact_precision, precision(kind), hint)


def test_the_hidden_contact_maps_tell_every_mistake_apart() -> None:
    for seed in DRAWS:
        cases = checks._contacts_hidden(Draw(seed))
        assert [case[3] is None for case in cases] == [False, False, True]
        for case in cases:
            scores, contacts, k, sep = case
            assert torch.equal(scores, scores.T) and torch.equal(contacts, contacts.T)
            assert checks._contacts_told_apart(case), seed


def test_the_precision_reference_agrees_with_tutorlib_proteins() -> None:
    for seed in range(30):
        for scores, contacts, k, sep in (
            checks._contacts_hidden(Draw(seed)) + checks._visible_contacts()
        ):
            ours = checks._precision(scores, contacts, k, sep or 6)
            assert ours == proteins.precision_at_k(scores, contacts.numpy(), k, sep or 6)


def test_tutorlib_proteins_is_refused() -> None:
    renamed = proteins.precision_at_k
    expect_refused(
        checks.check_contact_precision,
        lambda s, c, k, min_separation=6: renamed(s, c.numpy(), k, min_separation),
    )


def test_the_visible_values_are_the_ones_the_notebook_quotes() -> None:
    (s, c, k, sep), (s2, c2, k2, sep2) = checks._visible_contacts()
    assert checks._precision(s, c, k) == 0.75 and checks._precision(s2, c2, k2, sep2) == 0.4
    (refs, hyps), (refs2, hyps2) = checks._visible_wer()
    assert checks._wer(refs, hyps) == 0.4 and checks._wer(refs2, hyps2) == 1.25
    assert round(float(checks._apc(checks._visible_apc()[0])[0, 1]), 10) == 0.18
    mask = checks._mask(4, 4, 2, 1)
    assert torch.equal(mask[3], torch.eye(4, dtype=torch.bool))  # four regions, one token each


# --- 5. The average product correction -----------------------------------------------------------


def correction(kind: str = ""):
    def apc(x):
        L = x.shape[-1]
        keep = ~torch.eye(L, dtype=torch.bool)
        off = x if kind == "diagonal_in_means" else torch.where(keep, x, torch.zeros_like(x))
        n = L if kind in ("diagonal_in_means", "divide_by_L") else L - 1
        row = off.sum(-1, keepdim=True) / n
        col = off.sum(-2, keepdim=True) / n
        if kind == "rows_twice":
            col = row.transpose(-1, -2)
        total = off.sum((-1, -2), keepdim=True) / (L * n)
        product = row * col if kind == "no_division" else row * col / total
        out = x + product if kind == "added" else x - product
        if kind == "float32":
            out = out.float()
        return out if kind == "diagonal_kept" else torch.where(keep, out, torch.zeros_like(out))

    return apc


def test_corrections_written_other_ways_pass(solution) -> None:
    def with_loops(x):
        if x.dim() > 2:
            return torch.stack([with_loops(m) for m in x])
        L = len(x)
        out = torch.zeros_like(x)
        rows = [sum(x[i, j] for j in range(L) if j != i) / (L - 1) for i in range(L)]
        cols = [sum(x[i, j] for i in range(L) if i != j) / (L - 1) for j in range(L)]
        total = sum(rows) / L
        for i in range(L):
            for j in range(L):
                if i != j:
                    out[i, j] = x[i, j] - rows[i] * cols[j] / total
        return out

    def with_fill_diagonal(x):
        L = x.shape[-1]
        off = x.clone()
        off.diagonal(dim1=-2, dim2=-1).zero_()  # a copy: the input is untouched
        row = off.sum(-1) / (L - 1)
        col = off.sum(-2) / (L - 1)
        total = off.sum((-1, -2)) / (L * L - L)
        out = off - torch.einsum("...i,...j->...ij", row, col) / total[..., None, None]
        out.diagonal(dim1=-2, dim2=-1).zero_()
        return out

    for fn in (with_loops, with_fill_diagonal, correction()):
        expect_pass(checks.check_apc, fn)


@pytest.mark.parametrize(
    "kind, hint, visible",
    [
        ("diagonal_in_means", "the diagonal is counted in the means", 1),
        ("divide_by_L", "the means divide by L", 1),
        ("no_division", "is not divided by the overall mean", 1),
        ("rows_twice", "the row means are used twice", 1),
        ("diagonal_kept", "the diagonal of the result is not 0", 1),
        ("added", "the correction is added", 1),
    ],
)
def test_correction_mistakes_are_named(kind: str, hint: str, visible: bool) -> None:
    if visible:
        expect_hint(checks.check_apc, correction(kind), hint, hidden=False)
    expect_named_alone(checks.check_apc, correction(kind), hint)


def test_a_correction_in_float32_of_float64_scores_is_told_so() -> None:
    expect_hint(checks.check_apc, correction("float32"), "has dtype torch.float32", hidden=False)


def test_the_first_hidden_map_tells_every_mistake_apart() -> None:
    for seed in DRAWS:
        x = checks._apc_hidden(Draw(seed))[0]
        values = [checks._apc(x), *(checks._apc(x, k) for k in checks.APC_MISTAKES)]
        for a in range(len(values)):
            for b in range(a + 1, len(values)):
                assert not torch.allclose(values[a], values[b], atol=1e-6), (seed, a, b)


def test_the_correction_reference_agrees_with_tutorlib_proteins() -> None:
    for seed in range(30):
        for x in checks._apc_hidden(Draw(seed)) + checks._visible_apc():
            torch.testing.assert_close(checks._apc(x), proteins.apc(x))


def test_tutorlib_proteins_apc_is_refused() -> None:
    correct = proteins.apc
    expect_refused(checks.check_apc, lambda x: correct(x))
    expect_refused(
        checks.check_apc,
        lambda x: (
            proteins.attention_contact_scores(x[..., None, None, :, :] / 2)[..., 0, :, :]
            if torch.equal(x, x.transpose(-1, -2))
            else correct(x)
        ),
    )


# --- Hidden failures and the guard ---------------------------------------------------------------


@pytest.mark.parametrize(
    "check, wrong",
    [
        (checks.check_shifted_window_mask, window_mask("rows_only")),
        (checks.check_mel_filterbank, filterbank("htk")),
        (checks.check_word_error_rate, error_rate("mean_of_rates")),
        (checks.check_contact_precision, precision("strict")),
        (checks.check_apc, correction("rows_twice")),
    ],
)
def test_a_hidden_failure_shows_no_expected_value(check, wrong) -> None:
    draw._use_seed("course-a")
    with pytest.raises(ExerciseError) as error:
        check(wrong, hidden=True)
    assert error.value.expected is None and error.value.hidden
    assert "expected" not in str(error.value).lower().replace("expected values", "")


def test_the_checks_own_references_are_refused() -> None:
    expect_refused(
        checks.check_contact_precision,
        lambda s, c, k, min_separation=6: checks._precision(s, c, k, min_separation),
    )
    expect_refused(checks.check_word_error_rate, lambda r, h: checks._wer(r, h))


def test_a_spy_that_caches_the_references_answers_fails_the_hidden_tests() -> None:
    """Run the hidden check with a spy that records its inputs, answer them with the reference
    outside the check, and hand in the cache: the hidden inputs change from run to run."""
    answers, asked = {}, []

    def spy(references, hypotheses):
        key = (tuple(references), tuple(hypotheses))
        asked.append(key)
        return answers.get(key, 0.0)

    for _ in range(5):
        try:
            checks.check_word_error_rate(spy, hidden=True)
        except ExerciseError:
            pass
        for key in asked:
            answers[key] = speech.word_error_rate(list(key[0]), list(key[1]))
        asked.clear()
    with pytest.raises(ExerciseError, match="word_error_rate on"):
        checks.check_word_error_rate(spy, hidden=True)


def test_every_check_runs_well_under_a_second(solution) -> None:
    import time

    for name, check in [
        ("shifted_window_mask", checks.check_shifted_window_mask),
        ("mel_filterbank", checks.check_mel_filterbank),
        ("word_error_rate", checks.check_word_error_rate),
        ("contact_precision", checks.check_contact_precision),
        ("apc", checks.check_apc),
    ]:
        start = time.perf_counter()
        check(solution[name])
        check(solution[name], hidden=True)
        assert time.perf_counter() - start < 1.0, name  # visible and hidden together
