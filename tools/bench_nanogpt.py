"""Train tutorlib's GPT and nanoGPT's `model.py` side by side on the same batches.

The question it answers: is the training step of tutorlib's `DecoderOnly` as fast as that of
nanoGPT's `model.py` (Karpathy), and does it reach as low a validation loss? Everything but
the model code is shared, so only the model code can make a difference:

- the configuration of nanoGPT's README for a CPU (4 layers, 4 heads, width 128, context 64,
  batch 12, no dropout, no biases), on the docstring corpus of `char_lm_data()`, one
  character per token;
- one stream of training batches from `window_batches`: each batch is drawn once and fed to
  every model, and every model starts from `torch.manual_seed(0)`;
- the same optimiser: nanoGPT's shakespeare_char recipe, AdamW with lr 1e-3, betas
  (0.9, 0.99), weight decay 0.1 on the parameters with two or more dimensions only (the rule
  of nanoGPT's `configure_optimizers`, which builds nanoGPT's optimiser; tutorlib's gets the
  same two groups here), 100 linear warm-up steps, a cosine decay to 1e-4 at the last step
  (nanoGPT's `get_lr`) and gradients clipped to norm 1.0;
- the same loop: forward, cross-entropy, backward, clip, step, `zero_grad(set_to_none=True)`;
- the models take turns in chunks of `--chunk` steps (the first model changes from chunk to
  chunk), so a slow spell of a shared machine hits all of them; only the training steps are
  timed, not drawing the batches nor evaluating, in wall-clock time and in process CPU time
  (which other load on a shared machine disturbs less);
- the validation loss (nats per character) on the same 20 held-out batches of 12 windows of
  64 characters, at initialisation, every `--eval-every` steps and at the end.

tutorlib's variants: "gpt2" (nanoGPT's layout: pre-norm, GELU, learned positions, tied
output, no biases) and "llama" (RMSNorm, SwiGLU with d_ff 344, rotary positions, two
key-value heads, no biases). An option `TransformerConfig` does not have (or rejects) is left
out, and the script says which, so it runs against any version of tutorlib.

nanoGPT is not part of this repository: pass the path of a local copy of its `model.py`
(https://github.com/karpathy/nanoGPT), which the script imports from that path.

Usage (from the repository root):
    .venv/bin/python tools/bench_nanogpt.py --nanogpt /tmp/nanogpt/model.py \
        [--steps 2000] [--chunk 100] [--threads 2] [--variants gpt2,llama] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib.util
import io
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tutorlib from this checkout

from tutorlib.generation import char_lm_data, window_batches  # noqa: E402
from tutorlib.models import DecoderOnly, TransformerConfig  # noqa: E402

# nanoGPT's README, "I only have a macbook": train.py config/train_shakespeare_char.py
# --device=cpu --compile=False --block_size=64 --batch_size=12 --n_layer=4 --n_head=4
# --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0 (bias=False: train.py's
# default).
N_LAYERS, N_HEADS, D_MODEL, BLOCK_SIZE, BATCH_SIZE = 4, 4, 128, 64, 12

# nanoGPT's config/train_shakespeare_char.py and train.py defaults.
LR, MIN_LR, BETAS, WEIGHT_DECAY, WARMUP_STEPS, GRAD_CLIP = 1e-3, 1e-4, (0.9, 0.99), 0.1, 100, 1.0

VAL_BATCHES, VAL_SEED, TRAIN_SEED = 20, 1, 0

# tutorlib's GPT at nanoGPT's sizes; each variant adds groups of options, a group applied
# only if TransformerConfig has all its fields and accepts its values.
TUTORLIB_BASE = dict(
    d_model=D_MODEL, n_heads=N_HEADS, n_layers=N_LAYERS, d_ff=4 * D_MODEL,
    context_length=BLOCK_SIZE, dropout=0.0, norm_first=True, activation="gelu",
    positional="learned", tie_weights=True,
)  # fmt: skip
VARIANTS: dict[str, list[dict]] = {
    "gpt2": [dict(bias=False)],
    "llama": [
        dict(norm="rms"),
        # SwiGLU has three matrices: a hidden width of 8/3 * C (rounded up to a multiple of
        # 8) keeps the feed-forward's parameters those of GELU's 4 * C.
        dict(feed_forward="swiglu", d_ff=344),
        dict(positional="rotary"),
        dict(n_kv_heads=2),
        dict(bias=False),
    ],
}


def load_nanogpt(path: Path) -> ModuleType:
    """nanoGPT's model.py, imported from the file at `path`."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import nanoGPT's model.py from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lr_at(step: int, steps: int) -> float:
    """nanoGPT's `get_lr` with lr_decay_iters at the last step (steps - 1)."""
    if step < WARMUP_STEPS:
        return LR * (step + 1) / (WARMUP_STEPS + 1)
    decay_ratio = min(1.0, (step - WARMUP_STEPS) / max(1, steps - 1 - WARMUP_STEPS))
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * decay_ratio)) * (LR - MIN_LR)


def decay_groups(model: nn.Module) -> list[dict]:
    """nanoGPT's `configure_optimizers` rule: matrices and embeddings decay, the rest not."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def tutorlib_config(vocab_size: int, variant: str) -> tuple[TransformerConfig, list[str]]:
    """The variant's TransformerConfig, and the options it had to leave out (and why)."""
    fields = {f.name for f in dataclasses.fields(TransformerConfig)}
    options, left_out = {"vocab_size": vocab_size, **TUTORLIB_BASE}, []
    for group in VARIANTS[variant]:
        missing = sorted(set(group) - fields)
        if missing:
            left_out.append(f"{group} (no field {', '.join(missing)})")
            continue
        try:
            TransformerConfig(**{**options, **group})
        except (TypeError, ValueError) as error:
            left_out.append(f"{group} ({error})")
            continue
        options.update(group)
    return TransformerConfig(**options), left_out


@dataclasses.dataclass
class Contender:
    """One model in the race, its optimiser, and what was measured."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss: Callable[[Tensor, Tensor], Tensor]  # (inputs (B, T), targets (B, T)) -> scalar
    notes: list[str] = dataclasses.field(default_factory=list)
    chunk_seconds: list[float] = dataclasses.field(default_factory=list)  # wall clock
    chunk_cpu_seconds: list[float] = dataclasses.field(default_factory=list)  # process time
    val_loss: dict[int, float] = dataclasses.field(default_factory=dict)

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())  # tied weights counted once

    def steps_per_s(self, chunk: int, skip_first: bool, cpu: bool = False) -> float:
        seconds = self.chunk_cpu_seconds if cpu else self.chunk_seconds
        seconds = seconds[1:] if skip_first else seconds
        return chunk * len(seconds) / sum(seconds)


def make_nanogpt(module: ModuleType, vocab_size: int) -> Contender:
    torch.manual_seed(0)
    config = module.GPTConfig(
        block_size=BLOCK_SIZE, vocab_size=vocab_size, n_layer=N_LAYERS, n_head=N_HEADS,
        n_embd=D_MODEL, dropout=0.0, bias=False,
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its parameter counts
        model = module.GPT(config)
        optimizer = model.configure_optimizers(WEIGHT_DECAY, LR, BETAS, "cpu")

    def loss(inputs: Tensor, targets: Tensor) -> Tensor:
        return model(inputs, targets)[1]

    return Contender("nanoGPT", model, optimizer, loss)


def make_tutorlib(variant: str, vocab_size: int) -> Contender:
    config, left_out = tutorlib_config(vocab_size, variant)
    torch.manual_seed(0)
    model = DecoderOnly(config)
    optimizer = torch.optim.AdamW(decay_groups(model), lr=LR, betas=BETAS)

    def loss(inputs: Tensor, targets: Tensor) -> Tensor:
        logits = model(inputs)  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    notes = [f"not available, left out: {option}" for option in left_out]
    return Contender(f"tutorlib {variant}", model, optimizer, loss, notes)


def train_step(contender: Contender, inputs: Tensor, targets: Tensor, lr: float) -> None:
    for group in contender.optimizer.param_groups:
        group["lr"] = lr
    contender.loss(inputs, targets).backward()
    torch.nn.utils.clip_grad_norm_(contender.model.parameters(), GRAD_CLIP)
    contender.optimizer.step()
    contender.optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def validation_loss(contender: Contender, batches: list[tuple[Tensor, Tensor]]) -> float:
    contender.model.eval()
    losses = [contender.loss(inputs, targets).item() for inputs, targets in batches]
    contender.model.train()
    return sum(losses) / len(losses)  # equal batch sizes: the mean over characters


def race(
    contenders: list[Contender], steps: int, chunk: int, eval_every: int, progress: bool
) -> None:
    data = char_lm_data()
    next_val = window_batches(data.val_ids, BATCH_SIZE, BLOCK_SIZE, seed=VAL_SEED)
    val_batches = [tuple(t.contiguous() for t in next_val()) for _ in range(VAL_BATCHES)]
    next_batch = window_batches(data.train_ids, BATCH_SIZE, BLOCK_SIZE, seed=TRAIN_SEED)
    for contender in contenders:
        contender.val_loss[0] = validation_loss(contender, val_batches)  # at initialisation
    done = 0
    for index in range(steps // chunk):
        # Contiguous, as nanoGPT's get_batch makes them (its loss views the targets).
        batches = [tuple(t.contiguous() for t in next_batch()) for _ in range(chunk)]
        lrs = [lr_at(done + i, steps) for i in range(chunk)]
        turn = index % len(contenders)
        for contender in contenders[turn:] + contenders[:turn]:
            start, start_cpu = time.perf_counter(), time.process_time()
            for (inputs, targets), lr in zip(batches, lrs, strict=True):
                train_step(contender, inputs, targets, lr)
            contender.chunk_seconds.append(time.perf_counter() - start)
            contender.chunk_cpu_seconds.append(time.process_time() - start_cpu)
        done += chunk
        if done % eval_every == 0 or done == steps:
            for contender in contenders:
                contender.val_loss[done] = validation_loss(contender, val_batches)
        if progress:
            rates = "  ".join(
                f"{c.name} {chunk / c.chunk_seconds[-1]:5.1f}/s"
                + (f" val {c.val_loss[done]:.3f}" if done in c.val_loss else "")
                for c in contenders
            )
            print(f"step {done:5d}  {rates}", flush=True)


def report(contenders: list[Contender], chunk: int) -> dict:
    reference = contenders[0]  # nanoGPT
    skip_first = len(reference.chunk_seconds) > 1
    rows = []
    for contender in contenders:
        paired = [
            r / c for r, c in zip(reference.chunk_seconds, contender.chunk_seconds, strict=True)
        ]  # per chunk: nanoGPT's seconds / this model's seconds (> 1: faster than nanoGPT)
        rate = contender.steps_per_s(chunk, skip_first)
        rows.append(
            dict(
                model=contender.name,
                parameters=contender.parameters,
                steps_per_s=rate,
                steps_per_s_all_chunks=contender.steps_per_s(chunk, False),
                ratio_to_nanogpt=rate / reference.steps_per_s(chunk, skip_first),
                median_chunk_ratio=statistics.median(paired[1:] if skip_first else paired),
                cpu_ratio_to_nanogpt=contender.steps_per_s(chunk, skip_first, cpu=True)
                / reference.steps_per_s(chunk, skip_first, cpu=True),
                final_val_loss=contender.val_loss[max(contender.val_loss)],
                val_loss={str(step): loss for step, loss in contender.val_loss.items()},
                chunk_seconds=contender.chunk_seconds,
                chunk_cpu_seconds=contender.chunk_cpu_seconds,
                notes=contender.notes,
            )
        )
    print()
    print(
        f"{'model':<16} {'parameters':>10} {'steps/s':>8} {'(all)':>7} {'ratio':>6} "
        f"{'(median)':>8} {'(cpu)':>6} {'val loss':>9}"
    )
    for row in rows:
        print(
            f"{row['model']:<16} {row['parameters']:>10,} {row['steps_per_s']:>8.2f} "
            f"{row['steps_per_s_all_chunks']:>7.2f} {row['ratio_to_nanogpt']:>6.3f} "
            f"{row['median_chunk_ratio']:>8.3f} {row['cpu_ratio_to_nanogpt']:>6.3f} "
            f"{row['final_val_loss']:>9.4f}"
        )
    print(
        "steps/s: over all chunks but the first (warm-up); (all): over all chunks; ratio: "
        "steps/s over nanoGPT's;\n(median): the median over chunks of nanoGPT's time for a "
        "chunk over this model's; (cpu): the ratio in process CPU time\n(less sensitive to "
        "other load on the machine); val loss: nats per character at the last step."
    )
    for row in rows:
        for note in row["notes"]:
            print(f"{row['model']}: {note}")
    return {"models": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanogpt", type=Path, required=True, help="path of nanoGPT's model.py")
    parser.add_argument("--steps", type=int, default=2000, help="training steps per model")
    parser.add_argument("--chunk", type=int, default=100, help="steps per turn")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--variants", default="gpt2,llama", help="tutorlib's, comma-separated")
    parser.add_argument("--eval-every", type=int, default=500, help="steps between val losses")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--quiet", action="store_true", help="no line per chunk")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    if args.chunk < 1 or args.steps < args.chunk or args.steps % args.chunk:
        parser.error(f"--steps ({args.steps}) must be a positive multiple of --chunk")
    if args.eval_every < 1:
        parser.error("--eval-every must be positive")
    if not args.nanogpt.is_file():
        parser.error(f"--nanogpt: no file {args.nanogpt}")

    torch.set_num_threads(args.threads)
    module = load_nanogpt(args.nanogpt)
    vocab_size = char_lm_data().tokenizer.vocab_size
    contenders = [make_nanogpt(module, vocab_size)]
    contenders += [make_tutorlib(variant, vocab_size) for variant in variants]
    nanogpt_sha = hashlib.sha256(args.nanogpt.read_bytes()).hexdigest()[:12]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}; "
        f"nanoGPT model.py sha256 {nanogpt_sha}; vocabulary {vocab_size}; "
        f"{args.steps} steps in chunks of {args.chunk}"
    )
    for contender in contenders:
        print(f"{contender.name}: {contender.parameters:,} parameters")
        for note in contender.notes:
            print(f"  {note}")

    race(contenders, args.steps, args.chunk, args.eval_every, progress=not args.quiet)
    results = report(contenders, args.chunk)
    if args.json:
        results["setup"] = dict(
            torch=torch.__version__, threads=torch.get_num_threads(),
            machine=platform.machine(), processor=platform.processor(),
            nanogpt_sha256=nanogpt_sha, steps=args.steps, chunk=args.chunk,
            batch_size=BATCH_SIZE, block_size=BLOCK_SIZE, vocab_size=vocab_size,
        )  # fmt: skip
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
