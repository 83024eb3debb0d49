"""Speech as a sequence: synthesized audio, the log-mel spectrogram, a Whisper-style transcriber.

A waveform is a long sequence of air-pressure samples (16,000 a second here). Whisper (Radford
et al., 2023) turns it into a log-mel spectrogram: short-time Fourier transform with a 25 ms
Hann window every 10 ms (n_fft = 400, hop = 160 at 16 kHz), power spectrum, 80 triangular mel
filters (librosa's Slaney-style filterbank), log10, a floor 8 below the maximum, and a rescale.
Two 1-D convolutions (the second with stride 2, GELU after each) shorten the 100 frames a
second to 50; a transformer encoder reads them and a decoder writes the transcript.

The audio comes from the eSpeak NG synthesizer shipped inside the `espeakng-loader` wheel,
driven through ctypes: no download, several voices, speeds and pitches. `spoken_digits` builds a
data set of digit strings read aloud, with white noise at a stated signal-to-noise ratio, cached
on disk under `$TUTORLIB_CACHE` keyed by its parameters and the wheel's version. Character and
word error rates count Levenshtein edits.

Book: 5.7 Speech: a Whisper-style transcriber.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import importlib.metadata
import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.signal import resample_poly
from torch import Tensor, nn

from tutorlib.embeddings import sinusoidal_encoding
from tutorlib.layers import EncoderLayer, LayerNorm
from tutorlib.models import Decoder, TransformerConfig

__all__ = [
    "DIGIT_WORDS",
    "HOP_LENGTH",
    "N_FFT",
    "N_MELS",
    "PITCH_RANGE",
    "RATE_RANGE",
    "SAMPLE_RATE",
    "SpeechDataset",
    "SpeechTransformer",
    "character_error_rate",
    "edit_distance",
    "hz_to_mel",
    "log_mel_spectrogram",
    "mel_filterbank",
    "mel_to_hz",
    "pad_or_trim",
    "spoken_digits",
    "stft",
    "synthesize",
    "word_error_rate",
]

SAMPLE_RATE = 16_000  # samples per second, Whisper's rate
N_FFT = 400  # 25 ms window
HOP_LENGTH = 160  # 10 ms hop: 100 frames a second
N_MELS = 80  # mel bins of Whisper (large-v3 uses 128)
RATE_RANGE = (170, 250)  # speaking rates of `spoken_digits`, words per minute (eSpeak: 175)
PITCH_RANGE = (30, 70)  # base pitches of `spoken_digits`, on eSpeak's 0-100 scale (default 50)
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

_FORMAT_VERSION = 3  # bump when the cached data set's layout or recipe changes


# --- eSpeak NG through ctypes -------------------------------------------------------------------

_AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: synthesize inside espeak_Synth
_POS_CHARACTER = 1  # espeak_POSITION_TYPE
_CHARS_UTF8 = 1  # espeak_Synth flag: the text is UTF-8
_RATE, _PITCH = 1, 3  # espeak_PARAMETER: words per minute, base pitch 0..100
_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)  # int callback(short *wav, int n_samples, espeak_EVENT *events); return 0 to continue


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the duration: eSpeak writes its warnings there
    directly, past Python's sys.stderr."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


class _ESpeak:
    """The few eSpeak NG calls we need; one instance per process (the library is global)."""

    def __init__(self) -> None:
        import espeakng_loader  # the wheel bundles libespeak-ng and its data

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,  # text
            ctypes.c_size_t,  # its size in bytes, with the terminating zero
            ctypes.c_uint,  # start position
            ctypes.c_int,  # position type
            ctypes.c_uint,  # end position (0: none)
            ctypes.c_uint,  # flags
            ctypes.c_void_p,  # unique identifier (unused)
            ctypes.c_void_p,  # user data (unused)
        ]
        data_path = espeakng_loader.get_data_path().encode()
        with _quiet_stderr():
            self.sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, 0)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed (returned {self.sample_rate})")
        self._chunks: list[np.ndarray] = []
        self._callback = _SynthCallback(self._collect)  # kept alive as long as the library
        lib.espeak_SetSynthCallback(self._callback)
        self.lib = lib

    def _collect(self, wav, n_samples, events) -> int:  # noqa: ANN001 (ctypes arguments)
        if n_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
        return 0

    def check_voice(self, voice: str) -> None:
        with _quiet_stderr():
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"eSpeak NG has no voice {voice!r} (try 'en-us' or 'en+f2')")

    def speak(self, text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
        """int16 samples at `self.sample_rate`."""
        encoded = text.encode("utf-8")
        self.check_voice(voice)
        with _quiet_stderr():
            self.lib.espeak_SetParameter(_RATE, rate, 0)
            self.lib.espeak_SetParameter(_PITCH, pitch, 0)
            self.lib.espeak_ng_SetRandSeed(0)  # the breathy variants (f1-f5) add random noise
            self._chunks = []
            status = self.lib.espeak_Synth(
                encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
            )
        if status != 0:
            raise RuntimeError(f"espeak_Synth failed with status {status}")
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


@functools.cache
def _espeak() -> _ESpeak:
    return _ESpeak()


def synthesize(text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50) -> Tensor:
    """Speak `text` with eSpeak NG and return the waveform at 16 kHz, float32 in [-1, 1).

    `voice` is an eSpeak voice, optionally with a variant after "+": "en-us", "en" (British),
    "en-gb-scotland", "en-029" (Caribbean), "en-us+m3", "en+f2", ... `rate` is in words per
    minute (80 to 450), `pitch` the base pitch on eSpeak's 0 to 100 scale. eSpeak writes
    16-bit samples at 22,050 Hz; they are resampled to 16,000 Hz by polyphase filtering
    (scipy.signal.resample_poly, up 320, down 441, with its default Kaiser-windowed
    anti-aliasing filter).

    eSpeak carries a little state from one utterance to the next (the phase of its pitch
    "flutter", a static variable in its wave generator), so the same call made twice in one
    process gives slightly different samples; a fresh process making the same calls in the
    same order gives exactly the same ones. `spoken_digits` therefore synthesizes in a fresh
    interpreter.

    Shapes:
        text  ->  waveform (N,) float32, N about 16,000 per second of speech

    Book: 5.7 Speech: a Whisper-style transcriber.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    if not isinstance(voice, str) or not voice:
        raise ValueError(f"voice must be a non-empty string such as 'en-us', got {voice!r}")
    for name, value, low, high in (("rate", rate, 80, 450), ("pitch", pitch, 0, 100)):
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")
    engine = _espeak()
    samples = engine.speak(text, voice, rate, pitch).astype(np.float64) / 32768.0
    g = math.gcd(SAMPLE_RATE, engine.sample_rate)
    resampled = resample_poly(samples, SAMPLE_RATE // g, engine.sample_rate // g)
    return torch.from_numpy(resampled.astype(np.float32))  # (N,)


# --- From waveform to log-mel spectrogram ---------------------------------------------------------


def _check_waveform(waveform: object, sample_rate: int) -> Tensor:
    if not isinstance(waveform, Tensor):
        raise TypeError(f"waveform must be a torch.Tensor, got {type(waveform).__name__}")
    if not waveform.is_floating_point():
        raise TypeError(f"waveform must be floating point in [-1, 1], got {waveform.dtype}")
    if waveform.dim() not in (1, 2):
        raise ValueError(f"waveform: expected (N,) or (B, N) samples, got {tuple(waveform.shape)}")
    if sample_rate != SAMPLE_RATE:
        raise ValueError(
            f"sample_rate must be {SAMPLE_RATE} (the filterbank and hop assume it), got "
            f"{sample_rate}; resample first"
        )
    return waveform


def stft(waveform: Tensor, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH) -> Tensor:
    """The short-time Fourier transform, written out: pad n_fft // 2 samples at both ends by
    reflection, cut frames of n_fft samples every hop_length, multiply each by a periodic Hann
    window, and take the discrete Fourier transform of each frame (rfft: the n_fft // 2 + 1
    non-negative frequencies).

    Equals torch.stft(waveform, n_fft, hop_length, window=torch.hann_window(n_fft),
    center=True, pad_mode="reflect", return_complex=True), which is what Whisper calls.

    Shapes:
        waveform (N,) or (B, N)  ->  complex (n_fft // 2 + 1, 1 + N // hop_length),
        with a leading B if given

    Book: 5.7 Speech: a Whisper-style transcriber.
    """
    if not isinstance(waveform, Tensor) or waveform.dim() not in (1, 2):
        raise ValueError("waveform: expected a tensor of shape (N,) or (B, N)")
    if waveform.shape[-1] <= n_fft // 2:
        raise ValueError(f"waveform needs more than {n_fft // 2} samples to pad by reflection")
    x = waveform.unsqueeze(0) if waveform.dim() == 1 else waveform  # (B, N)
    x = nn.functional.pad(x.unsqueeze(1), (n_fft // 2, n_fft // 2), mode="reflect")[:, 0]
    frames = x.unfold(-1, n_fft, hop_length)  # (B, F, n_fft)
    window = 0.5 - 0.5 * torch.cos(2 * math.pi * torch.arange(n_fft, dtype=x.dtype) / n_fft)
    spectrum = torch.fft.rfft(frames * window.to(x.device), dim=-1)  # (B, F, n_fft // 2 + 1)
    spectrum = spectrum.transpose(1, 2)  # (B, n_fft // 2 + 1, F)
    return spectrum[0] if waveform.dim() == 1 else spectrum


def hz_to_mel(hz: Tensor | float, htk: bool = False) -> Tensor:
    """The mel scale. Slaney (the default, librosa's and Whisper's): linear below 1 kHz,
    mel = 3 hz / 200, so 1 kHz is 15 mel, and logarithmic above, 27 mel for every factor 6.4.
    HTK: mel = 2595 log10(1 + hz / 700), so 1 kHz is about 1000 mel.

    Book: 5.7 Speech: a Whisper-style transcriber.
    """
    hz = torch.as_tensor(hz, dtype=torch.float64)
    if htk:
        return 2595.0 * torch.log10(1.0 + hz / 700.0)
    linear = 3.0 * hz / 200.0
    log = 15.0 + torch.log(hz.clamp(min=1e-10) / 1000.0) * 27.0 / math.log(6.4)
    return torch.where(hz >= 1000.0, log, linear)


def mel_to_hz(mel: Tensor | float, htk: bool = False) -> Tensor:
    """The inverse of `hz_to_mel`.

    Book: 5.7 Speech: a Whisper-style transcriber.
    """
    mel = torch.as_tensor(mel, dtype=torch.float64)
    if htk:
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    linear = 200.0 * mel / 3.0
    log = 1000.0 * torch.exp((mel - 15.0) * math.log(6.4) / 27.0)
    return torch.where(mel >= 15.0, log, linear)


def mel_filterbank(
    n_mels: int = N_MELS,
    n_fft: int = N_FFT,
    sample_rate: int = SAMPLE_RATE,
    htk: bool = False,
    normalize: bool = True,
) -> Tensor:
    """Triangular filters evenly spaced on the mel scale from 0 Hz to sample_rate / 2.

    Filter m rises linearly from 0 at the frequency of mel point m to 1 at point m + 1 and
    falls to 0 at point m + 2, where the n_mels + 2 points are evenly spaced in mel. With
    `normalize` (Slaney's, as librosa and Whisper) filter m is divided by half its width in
    Hz, (f[m + 2] - f[m]) / 2, so that every filter has about the same area, not the same peak.

    Shapes:
        ->  (n_mels, n_fft // 2 + 1) float32; row m weights the FFT bins k * sample_rate / n_fft

    Book: 5.7 Speech: a Whisper-style transcriber.
    """
    for name, value in (("n_mels", n_mels), ("n_fft", n_fft), ("sample_rate", sample_rate)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    bins = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft  # (K,) Hz
    top = hz_to_mel(sample_rate / 2, htk)
    points = mel_to_hz(torch.linspace(0.0, float(top), n_mels + 2, dtype=torch.float64), htk)
    left, centre, right = points[:-2, None], points[1:-1, None], points[2:, None]  # (M, 1)
    rising = (bins - left) / (centre - left)  # (M, K)
    falling = (right - bins) / (right - centre)  # (M, K)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)  # (M, K)
    if normalize:
        weights = weights * 2.0 / (right - left)
    return weights.float()


def pad_or_trim(waveform: Tensor, length: int) -> Tensor:
    """Cut or zero-pad the last dimension to `length` samples (Whisper uses 30 s).

    Shapes:
        (..., N)  ->  (..., length)

    Book: 5.7 Speech: a Whisper-style transcriber.
    """
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive int, got {length!r}")
    if waveform.shape[-1] >= length:
        return waveform[..., :length]
    return nn.functional.pad(waveform, (0, length - waveform.shape[-1]))


def log_mel_spectrogram(
    waveform: Tensor, sample_rate: int = SAMPLE_RATE, n_mels: int = N_MELS
) -> Tensor:
    """Whisper's input features: the power spectrum |STFT|^2 (the last frame dropped, as
    Whisper does), the mel filterbank, log10 with a floor of 1e-10, everything more than 8
    (that is 80 dB) below the loudest value raised to it, then (x + 4) / 4 to bring the values
    to about [-1, 1].

    Shapes:
        waveform (N,) or (B, N) float at 16 kHz  ->  (n_mels, N // 160) or (B, n_mels, N // 160)

    Book: 5.7 Speech: a Whisper-style transcriber.
    """
    waveform = _check_waveform(waveform, sample_rate)
    power = stft(waveform).abs()[..., :-1] ** 2  # (..., K, F)
    mel = mel_filterbank(n_mels).to(power.device, power.dtype) @ power  # (..., n_mels, F)
    log_spec = torch.log10(mel.clamp(min=1e-10))
    peak = log_spec.amax(dim=(-2, -1), keepdim=True)  # one floor per utterance
    log_spec = torch.maximum(log_spec, peak - 8.0)
    return (log_spec + 4.0) / 4.0


# --- The data set: digit strings read aloud -------------------------------------------------------


@dataclass(frozen=True)
class SpeechDataset:
    """Utterances and their transcripts: waveform i is samples offsets[i]:offsets[i + 1].

    Shapes:
        samples (total,) float32 at 16 kHz; offsets (n + 1,) int64; n texts and voices

    Book: 5.7 Speech: a Whisper-style transcriber.
    """

    samples: Tensor  # (total,) float32, every waveform one after the other, 16 kHz
    offsets: Tensor  # (n + 1,) int64
    texts: tuple[str, ...]  # the transcripts, "three seven two"
    voices: tuple[str, ...]  # the eSpeak voice of each utterance

    def __len__(self) -> int:
        return len(self.texts)

    def waveform(self, i: int) -> Tensor:
        """Utterance i: (N_i,) float32."""
        return self.samples[self.offsets[i] : self.offsets[i + 1]]

    def batch(self, indices: Sequence[int], length: int) -> Tensor:
        """Utterances padded or trimmed to `length` samples: (len(indices), length)."""
        return torch.stack([pad_or_trim(self.waveform(i), length) for i in indices])


def _check_voices(voices: object) -> tuple[str, ...]:
    if isinstance(voices, str) or not isinstance(voices, Sequence) or not voices:
        raise ValueError(f"voices must be a non-empty list of eSpeak voice names, got {voices!r}")
    if not all(isinstance(v, str) and v for v in voices):
        raise ValueError(f"every voice must be a non-empty string, got {voices!r}")
    return tuple(voices)


def _add_noise(x: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """White Gaussian noise whose power is the utterance's mean power / 10^(snr_db / 10)."""
    noise_power = np.mean(x.astype(np.float64) ** 2) / 10 ** (snr_db / 10)
    return x + rng.normal(0.0, math.sqrt(noise_power), x.shape).astype(np.float32)


def _synthesize_all(
    n: int, voices: tuple[str, ...], n_digits: int, snr_db: float, seed: int
) -> SpeechDataset:
    rng = np.random.default_rng(seed)
    texts, who, waves = [], [], []
    for _ in range(n):
        text = " ".join(DIGIT_WORDS[d] for d in rng.integers(0, 10, n_digits))
        voice = voices[rng.integers(len(voices))]
        rate = int(rng.integers(RATE_RANGE[0], RATE_RANGE[1] + 1))
        pitch = int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))
        wave = synthesize(text, voice, rate, pitch).numpy()
        waves.append(_add_noise(wave, snr_db, rng))
        texts.append(text)
        who.append(voice)
    offsets = np.concatenate([[0], np.cumsum([len(w) for w in waves])])
    return SpeechDataset(
        torch.from_numpy(np.concatenate(waves)),
        torch.from_numpy(offsets.astype(np.int64)),
        tuple(texts),
        tuple(who),
    )


def _build(recipe: list, path: Path) -> None:
    """`_synthesize_all(*recipe)` in a fresh interpreter, written to `path`.

    eSpeak keeps state from one utterance to the next (the phase of its pitch flutter is a
    static variable in its wave generator that nothing resets), so a data set synthesized in
    the calling process would depend on what that process had spoken before.
    """
    code = (
        "import json, sys; from pathlib import Path; from tutorlib import speech; "
        "speech._write(Path(sys.argv[2]), speech._synthesize_all(*json.loads(sys.argv[1])))"
    )
    package_root = str(Path(__file__).resolve().parent.parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(recipe), str(path)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"synthesizing the data set failed:\n{result.stderr[-2000:]}")


def _cache_file(recipe: list) -> Path:
    wheel = importlib.metadata.version("espeakng-loader")
    key = json.dumps([_FORMAT_VERSION, wheel, RATE_RANGE, PITCH_RANGE, *recipe])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    root = os.environ.get("TUTORLIB_CACHE") or Path.home() / ".cache" / "tutorlib"
    return Path(root) / f"spoken_digits-espeakng{wheel}-{digest}.npz"


def _read(path: Path) -> SpeechDataset | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            samples, offsets = data["samples"], data["offsets"]
    except (OSError, KeyError, ValueError):
        return None
    return SpeechDataset(
        torch.from_numpy(samples).float().div_(32767.0),  # (total,) float32
        torch.from_numpy(offsets),
        tuple(meta["texts"]),
        tuple(meta["voices"]),
    )


def _write(path: Path, data: SpeechDataset) -> None:
    """Store 16-bit samples (half the space of float32), atomically."""
    samples = np.round(data.samples.clamp(-1, 1).numpy() * 32767).astype(np.int16)
    meta = json.dumps({"texts": data.texts, "voices": data.voices})
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as f:
        np.savez(f, samples=samples, offsets=data.offsets.numpy(), meta=np.array(meta))
    os.replace(f.name, path)


def spoken_digits(
    n: int, voices: Sequence[str], n_digits: int = 3, snr_db: float = 20.0, seed: int = 0
) -> SpeechDataset:
    """`n` random strings of `n_digits` digits read aloud as words ("three seven two"), each by
    a voice drawn from `voices` at a rate drawn from RATE_RANGE (words per minute) and a pitch
    from PITCH_RANGE, plus white Gaussian noise `snr_db` decibels below the utterance's power.

    The samples are cached on disk as 16-bit integers under `$TUTORLIB_CACHE` (default
    ~/.cache/tutorlib), keyed by the arguments and the espeakng-loader version; a second call
    reads the file instead of synthesizing again.

    Shapes:
        ->  a `SpeechDataset` of n utterances (about 1 s each at 16 kHz)

    Book: 5.7 Speech: a Whisper-style transcriber.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not isinstance(n_digits, int) or isinstance(n_digits, bool) or n_digits < 1:
        raise ValueError(f"n_digits must be a positive int, got {n_digits!r}")
    voices = _check_voices(voices)
    for voice in voices:  # fail here, not in the subprocess
        _espeak().check_voice(voice)
    recipe = [n, list(voices), n_digits, float(snr_db), seed]
    path = _cache_file(recipe)
    data = _read(path)
    if data is None:
        try:
            _build(recipe, path)
        except OSError:  # a read-only cache: build into a temporary directory instead
            with tempfile.TemporaryDirectory() as tmp:
                _build(recipe, Path(tmp) / path.name)
                return _read(Path(tmp) / path.name)
        data = _read(path)
    if data is None:
        raise RuntimeError(f"the synthesized data set at {path} could not be read back")
    return data


# --- The transcriber ------------------------------------------------------------------------------


class SpeechTransformer(nn.Module):
    """A small Whisper: log-mel frames -> two convolutions -> transformer encoder; a decoder
    cross-attends to it and writes the transcript character by character.

    The front end is Whisper's: Conv1d(n_mels, C, 3, padding 1), GELU, Conv1d(C, C, 3,
    stride 2, padding 1), GELU, so n_frames frames become n_frames / 2 vectors; sinusoidal
    positions are added. The encoder is `config.n_layers` `EncoderLayer`s with the config's
    choices (Whisper: pre-norm, GELU) and a final LayerNorm when pre-norm; the decoder is
    `tutorlib.models.Decoder` (Whisper: learned positions), its output tied to its embedding
    when `config.tie_weights`. `encode` and `decode` have `Transformer`'s signatures, so
    `tutorlib.decoding.encoder_decoder_step` and `greedy_decode` drive it unchanged.

    Shapes:
        mels (B, n_mels, n_frames); tokens (B, T) ids  ->  logits (B, T, V)

    Book: 5.7 Speech: a Whisper-style transcriber.
    """

    def __init__(self, config: TransformerConfig, n_mels: int = N_MELS, n_frames: int = 100):
        super().__init__()
        if not isinstance(n_frames, int) or n_frames < 2 or n_frames % 2:
            raise ValueError(f"n_frames must be an even int >= 2, got {n_frames!r}")
        self.config, self.n_mels, self.n_frames = config, n_mels, n_frames
        C = config.d_model
        self.conv1 = nn.Conv1d(n_mels, C, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(C, C, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positions", sinusoidal_encoding(n_frames // 2, C), persistent=False)
        self.layers = nn.ModuleList(
            EncoderLayer(
                C,
                config.n_heads,
                config.d_ff,
                config.dropout,
                config.activation,
                config.norm_first,
                bias=config.bias,
                norm_eps=config.norm_eps,
            )
            for _ in range(config.n_layers)
        )
        self.final_norm = LayerNorm(C, config.norm_eps) if config.norm_first else nn.Identity()
        self.decoder = Decoder(config)
        self.output = nn.Linear(C, config.vocab_size, bias=False)
        if config.tie_weights:
            self.output.weight = self.decoder.embed.tokens.weight

    def encode(self, mels: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """The audio encoder's output, the memory the decoder attends to: (B, n_frames / 2, C).
        `padding_mask` is accepted for `encoder_decoder_step` and must be None: like Whisper,
        utterances are padded with silence to one length and attended to in full."""
        if not isinstance(mels, Tensor) or not mels.is_floating_point():
            raise TypeError("mels must be a floating-point tensor of log-mel features")
        if mels.dim() != 3 or mels.shape[1:] != (self.n_mels, self.n_frames):
            raise ValueError(
                f"mels: expected (batch, {self.n_mels}, {self.n_frames}), got {tuple(mels.shape)}"
            )
        if padding_mask is not None:
            raise ValueError("padding_mask must be None: pad the audio, not the features")
        x = nn.functional.gelu(self.conv1(mels))  # (B, C, n_frames)
        x = nn.functional.gelu(self.conv2(x))  # (B, C, n_frames / 2)
        x = x.transpose(1, 2) + self.positions.to(x.dtype)  # (B, n_frames / 2, C)
        for layer in self.layers:
            x = layer(x)
        return self.final_norm(x)  # (B, n_frames / 2, C)

    def decode(self, tokens: Tensor, memory: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Next-character logits for every position of `tokens`: (B, T, V)."""
        return self.output(self.decoder(tokens, memory))

    def forward(self, mels: Tensor, tokens: Tensor) -> Tensor:
        return self.decode(tokens, self.encode(mels))  # (B, T, V)


# --- Error rates ----------------------------------------------------------------------------------


def edit_distance(reference: Sequence, hypothesis: Sequence) -> int:
    """Levenshtein distance: the fewest substitutions, deletions and insertions that turn
    `reference` into `hypothesis`, by dynamic programming over prefixes, one row at a time:
    d[i][j] = min(d[i-1][j] + 1, d[i][j-1] + 1, d[i-1][j-1] + (reference[i-1] != hypothesis[j-1])).

    Book: 5.7 Speech: a Whisper-style transcriber.
    """
    previous = list(range(len(hypothesis) + 1))  # d[0][j] = j insertions
    for i, r in enumerate(reference, start=1):
        current = [i]  # d[i][0] = i deletions
        for j, h in enumerate(hypothesis, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def _error_rate(references: Sequence[str], hypotheses: Sequence[str], split: bool) -> float:
    if isinstance(references, str) or isinstance(hypotheses, str):
        raise TypeError("references and hypotheses must be lists of strings, not one string")
    if len(references) != len(hypotheses) or not references:
        raise ValueError(
            f"need as many hypotheses as references (and at least one), got {len(references)} "
            f"references and {len(hypotheses)} hypotheses"
        )
    units = (lambda s: s.split()) if split else (lambda s: s)
    edits = sum(
        edit_distance(units(r), units(h)) for r, h in zip(references, hypotheses, strict=True)
    )
    total = sum(len(units(r)) for r in references)
    if total == 0:
        raise ValueError("the references are empty: an error rate needs something to get wrong")
    return edits / total


def character_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Character edits over all pairs divided by the references' total characters (spaces
    count). Can exceed 1 when the hypotheses are longer than the references.

    Book: 5.7 Speech: a Whisper-style transcriber.
    """
    return _error_rate(references, hypotheses, split=False)


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Word edits (words split at white space) divided by the references' total words.

    Book: 5.7 Speech: a Whisper-style transcriber.
    """
    return _error_rate(references, hypotheses, split=True)
