"""Speech (5.7): the STFT against torch.stft, the mel filterbank against a direct computation
and Hugging Face's Whisper feature extractor, the log-mel shape, the error rates against hand
cases and a brute-force edit distance, eSpeak synthesis (non-silent, plausible length,
reproducible in a fresh process), the cached data set, the transcriber's shapes, and clear
errors at the boundary."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from tutorlib import speech
from tutorlib.decoding import encoder_decoder_step, greedy_decode
from tutorlib.models import TransformerConfig
from tutorlib.speech import (
    SpeechTransformer,
    character_error_rate,
    edit_distance,
    hz_to_mel,
    log_mel_spectrogram,
    mel_filterbank,
    mel_to_hz,
    spoken_digits,
    stft,
    synthesize,
    word_error_rate,
)

# --- STFT and log-mel -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(16_000,), (3, 4_321)])
def test_stft_equals_torch_stft(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = stft(x)
    theirs = torch.stft(
        x, 400, 160, window=torch.hann_window(400, dtype=torch.float64), return_complex=True
    )
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs)


def test_stft_other_sizes_equal_torch_stft() -> None:
    x = torch.randn(2_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    theirs = torch.stft(
        x, 64, 16, window=torch.hann_window(64, dtype=torch.float64), return_complex=True
    )
    torch.testing.assert_close(stft(x, 64, 16), theirs)


def test_mel_scale_at_known_points() -> None:
    # Slaney: linear to 1 kHz (15 mel), then 27 mel per factor 6.4; HTK: 2595 log10(1 + f/700).
    assert float(hz_to_mel(1000.0)) == pytest.approx(15.0)
    assert float(hz_to_mel(500.0)) == pytest.approx(7.5)
    assert float(hz_to_mel(6400.0)) == pytest.approx(42.0)
    assert float(hz_to_mel(1000.0, htk=True)) == pytest.approx(999.98, abs=0.01)
    assert float(hz_to_mel(700.0, htk=True)) == pytest.approx(2595 * math.log10(2))
    hz = torch.tensor([0.0, 300.0, 999.0, 1000.0, 4321.0, 8000.0], dtype=torch.float64)
    for htk in (False, True):
        torch.testing.assert_close(mel_to_hz(hz_to_mel(hz, htk), htk), hz)


def direct_filterbank(n_mels: int, n_fft: int, sr: int, normalize: bool) -> np.ndarray:
    """Each filter and each FFT bin by hand, with the Slaney formulas written again."""

    def mel(f: float) -> float:
        return 3 * f / 200 if f < 1000 else 15 + 27 * math.log(f / 1000) / math.log(6.4)

    def hz(m: float) -> float:
        return 200 * m / 3 if m < 15 else 1000 * math.exp((m - 15) * math.log(6.4) / 27)

    top = mel(sr / 2)
    points = [hz(top * i / (n_mels + 1)) for i in range(n_mels + 2)]
    weights = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        lo, mid, hi = points[m], points[m + 1], points[m + 2]
        for k in range(n_fft // 2 + 1):
            f = k * sr / n_fft
            if lo < f <= mid:
                weights[m, k] = (f - lo) / (mid - lo)
            elif mid < f < hi:
                weights[m, k] = (hi - f) / (hi - mid)
        if normalize:
            weights[m] *= 2 / (hi - lo)
    return weights


@pytest.mark.parametrize("normalize", [False, True])
def test_mel_filterbank_equals_direct_computation(normalize: bool) -> None:
    ours = mel_filterbank(normalize=normalize).double().numpy()
    np.testing.assert_allclose(ours, direct_filterbank(80, 400, 16_000, normalize), atol=1e-6)


def test_mel_filters_peak_at_one_and_cover_the_range() -> None:
    bank = mel_filterbank(n_mels=10, n_fft=4096, normalize=False)  # fine bins: peaks sampled
    points = mel_to_hz(torch.linspace(0, float(hz_to_mel(8000.0)), 12))
    bins = torch.arange(2049) * 16_000 / 4096
    for m in range(10):
        peak = int(bank[m].argmax())
        assert abs(float(bins[peak] - points[m + 1])) <= 16_000 / 4096  # the centre
        assert float(bank[m].max()) == pytest.approx(1.0, abs=0.01)
        support = bins[bank[m] > 0]
        assert float(support.min()) >= float(points[m]) and float(support.max()) <= points[m + 2]
    inside = (bins > 0) & (bins < 8000)
    assert bool((bank.sum(0)[inside] > 0).all())  # every frequency but the ends is covered
    # adjacent unnormalised triangles add up to 1 between the first and last centre
    between = (bins >= points[1]) & (bins <= points[10])
    torch.testing.assert_close(bank.sum(0)[between], torch.ones(int(between.sum())))


def test_log_mel_equals_hugging_face_whisper_features() -> None:
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor()  # no download: the defaults are Whisper's
    np.testing.assert_allclose(extractor.mel_filters.T, mel_filterbank().numpy(), atol=1e-6)
    t = torch.arange(12_345, dtype=torch.float64) / 16_000
    x = 0.3 * torch.sin(2 * math.pi * 440 * t) + 0.01 * torch.randn(
        12_345, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    theirs = extractor._np_extract_fbank_features(x.float().numpy()[None], "cpu")[0]
    np.testing.assert_allclose(log_mel_spectrogram(x).numpy(), theirs, atol=1e-4)


def test_log_mel_shape_for_one_second() -> None:
    x = torch.randn(16_000, generator=torch.Generator().manual_seed(0)) * 0.1
    features = log_mel_spectrogram(x)
    assert features.shape == (80, 100) and features.dtype == torch.float32
    assert log_mel_spectrogram(torch.stack([x, x / 2])).shape == (2, 80, 100)
    assert float(features.max() - features.min()) <= 2.0 + 1e-6  # the 80 dB floor, / 4


# --- Error rates ----------------------------------------------------------------------------------


def brute_force_edit_distance(a: str, b: str) -> int:
    """Recursion over all alignments (exponential; short strings only)."""
    if not a or not b:
        return len(a) + len(b)
    return min(
        brute_force_edit_distance(a[1:], b) + 1,
        brute_force_edit_distance(a, b[1:]) + 1,
        brute_force_edit_distance(a[1:], b[1:]) + (a[0] != b[0]),
    )


def test_edit_distance_hand_cases() -> None:
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3 and edit_distance("abc", "") == 3
    assert edit_distance("flaw", "lawn") == 2
    assert edit_distance(["one", "two"], ["one", "three", "two"]) == 1


def test_edit_distance_equals_brute_force() -> None:
    words = ["".join(p) for n in range(5) for p in itertools.product("ab", repeat=n)]
    rng = np.random.default_rng(0)
    for _ in range(200):
        a, b = (words[i] for i in rng.integers(len(words), size=2))
        assert edit_distance(a, b) == brute_force_edit_distance(a, b), (a, b)


def test_error_rates_hand_cases() -> None:
    refs = ["three seven two", "nine one"]
    hyps = ["three seven too", "nine one one"]
    # words: one substitution + one insertion over 5 reference words
    assert word_error_rate(refs, hyps) == pytest.approx(2 / 5)
    # characters: "two" -> "too" is 1 edit; " one" inserted is 4; reference characters 15 + 8
    assert character_error_rate(refs, hyps) == pytest.approx(5 / 23)
    assert word_error_rate(refs, refs) == 0.0 and character_error_rate(refs, refs) == 0.0


@pytest.mark.parametrize(
    ("refs", "hyps", "error"),
    [
        ("one", "one", TypeError),
        (["one"], ["one", "two"], ValueError),
        ([], [], ValueError),
        ([""], ["x"], ValueError),
    ],
)
def test_error_rate_bad_inputs(refs, hyps, error) -> None:
    with pytest.raises(error):
        word_error_rate(refs, hyps)


# --- Synthesis and the data set -------------------------------------------------------------------


def test_synthesize_gives_speech_of_plausible_length(capfd) -> None:
    wave = synthesize("three seven two", "en-us", rate=175, pitch=50)
    assert wave.dtype == torch.float32 and wave.dim() == 1
    seconds = len(wave) / 16_000
    assert 0.5 < seconds < 2.0  # three words at 175 words a minute
    assert float(wave.abs().max()) > 0.1 and float(wave.abs().max()) < 1.0
    loud = wave.reshape(-1)[: len(wave) // 160 * 160].reshape(-1, 160).pow(2).mean(1) > 1e-4
    assert loud.float().mean() > 0.3  # mostly speech, not silence
    slower = synthesize("three seven two", "en-us", rate=100, pitch=50)
    assert len(slower) > 1.3 * len(wave)
    assert capfd.readouterr().err == ""  # eSpeak printed nothing


def test_synthesize_is_reproducible_in_a_fresh_process() -> None:
    code = (
        "import hashlib; from tutorlib.speech import synthesize; "
        "print(hashlib.sha256(synthesize('four two', 'en+f2', 200, 40).numpy().tobytes())"
        ".hexdigest())"
    )
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        for _ in range(2)
    ]
    assert runs[0].stdout == runs[1].stdout and len(runs[0].stdout.strip()) == 64
    assert runs[0].stderr == ""


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(text=""), ValueError, "non-empty"),
        (dict(text="   "), ValueError, "non-empty"),
        (dict(text=3), ValueError, "non-empty"),
        (dict(text="one", voice="no-such-voice"), ValueError, "no voice"),
        (dict(text="one", rate=20), ValueError, "rate"),
        (dict(text="one", pitch=101), ValueError, "pitch"),
    ],
)
def test_synthesize_bad_inputs(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        synthesize(**kwargs)


def test_log_mel_bad_inputs() -> None:
    with pytest.raises(TypeError, match="torch.Tensor"):
        log_mel_spectrogram(np.zeros(16_000, np.float32))
    with pytest.raises(TypeError, match="floating point"):
        log_mel_spectrogram(torch.zeros(16_000, dtype=torch.int16))
    with pytest.raises(ValueError, match=r"\(N,\) or \(B, N\)"):
        log_mel_spectrogram(torch.zeros(1, 1, 16_000))
    with pytest.raises(ValueError, match="sample_rate must be 16000"):
        log_mel_spectrogram(torch.zeros(22_050), sample_rate=22_050)


def test_spoken_digits_cached_and_reproducible(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TUTORLIB_CACHE", str(tmp_path / "a"))
    first = spoken_digits(4, ["en-us", "en+m3"], snr_db=20.0, seed=3)
    files = list((tmp_path / "a").glob("spoken_digits-*.npz"))
    assert len(files) == 1 and "espeakng0.2.4" in files[0].name
    again = spoken_digits(4, ["en-us", "en+m3"], snr_db=20.0, seed=3)  # from the file
    assert torch.equal(first.samples, again.samples) and first.texts == again.texts
    monkeypatch.setenv("TUTORLIB_CACHE", str(tmp_path / "b"))
    rebuilt = spoken_digits(4, ["en-us", "en+m3"], snr_db=20.0, seed=3)  # synthesized again
    assert torch.equal(first.samples, rebuilt.samples)
    assert len(first) == 4 and all(len(t.split()) == 3 for t in first.texts)
    assert set(first.voices) <= {"en-us", "en+m3"}
    assert all(set(t.split()) <= set(speech.DIGIT_WORDS) for t in first.texts)
    batch = first.batch([0, 1], 20_000)
    assert batch.shape == (2, 20_000)


def test_noise_has_the_stated_snr() -> None:
    rng = np.random.default_rng(0)
    x = np.sin(np.arange(160_000) / 7).astype(np.float32)
    noise = speech._add_noise(x, 20.0, rng) - x
    assert 10 * math.log10(np.mean(x**2) / np.mean(noise**2)) == pytest.approx(20.0, abs=0.1)


def test_spoken_digits_bad_inputs(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TUTORLIB_CACHE", str(tmp_path))  # nothing may reach the real cache
    with pytest.raises(ValueError, match="voices"):
        spoken_digits(3, "en-us")
    with pytest.raises(ValueError, match="no voice"):
        spoken_digits(3, ["en-us", "no-such-voice"])
    with pytest.raises(ValueError, match="n must"):
        spoken_digits(0, ["en-us"])


# --- The transcriber ------------------------------------------------------------------------------


def tiny_model() -> SpeechTransformer:
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=20,
        context_length=16,
        d_model=32,
        n_heads=4,
        n_layers=1,
        d_ff=64,
        norm_first=True,
        activation="gelu",
        positional="learned",
    )
    return SpeechTransformer(config, n_mels=80, n_frames=40).eval()


def test_front_end_halves_the_frames_and_greedy_decoding_runs() -> None:
    model = tiny_model()
    mels = torch.randn(3, 80, 40)
    memory = model.encode(mels)
    assert memory.shape == (3, 20, 32)
    assert model(mels, torch.zeros(3, 5, dtype=torch.long)).shape == (3, 5, 20)
    step = encoder_decoder_step(model, mels)
    out = greedy_decode(step, torch.ones(3, 1, dtype=torch.long), 6, eos_id=2)
    assert out.shape[0] == 3 and 2 <= out.shape[1] <= 7
    # the second convolution has stride 2, as Whisper's
    assert model.conv2.stride == (2,) and model.conv1.stride == (1,)


def test_transcriber_bad_inputs() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match=r"\(batch, 80, 40\)"):
        model.encode(torch.randn(3, 40, 80))
    with pytest.raises(TypeError, match="floating-point"):
        model.encode(torch.zeros(3, 80, 40, dtype=torch.long))
    with pytest.raises(ValueError, match="padding_mask must be None"):
        model.encode(torch.randn(1, 80, 40), torch.ones(1, 40, dtype=torch.bool))
    with pytest.raises(ValueError, match="even"):
        SpeechTransformer(model.config, n_frames=41)
