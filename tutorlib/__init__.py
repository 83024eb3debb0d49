"""tutorlib: the reference PyTorch code of the transformer course book.

One module per concept, in the order the book introduces them: `embeddings`, `attention`,
`layers`, `models`, `training`, `decoding`, `tokenizers`, `corpus` (the offline English text),
`data` (generated tasks), `plotting`; then Chapter 4's `scaling` (counting compute and memory),
`inference` (the KV cache), `compression`, `distributed`, `flash` (FlashAttention's tiled
softmax), `moe` (mixture-of-experts layers) and `speculative` (speculative decoding); Chapter 5's
`vision`, `detection`, `multimodal`, `swin` (shifted windows), `speech` (log-mel spectrograms and
synthesized speech) and `proteins` (a Potts model and contacts read from attention); Chapter 6's
`generation` (language modelling and sampling), `pixels` (images as tokens), `pretrained` (real
weights in tutorlib's layers), `incontext` (few-shot prompts), `posttraining` (chat template,
supervised fine-tuning, DPO), `adapters` (LoRA), `fairness` (WEAT and SEAT association
tests) and `memorisation` (verbatim copies of the training text, extraction, contamination).
`checks` holds what the exercises' tests call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tutorlib.runtime import get_device, seed_everything

__version__ = "0.1.0"
__all__ = ["get_device", "seed_everything"]


def __getattr__(name: str) -> Any:
    """`tutorlib.seed_everything` and `tutorlib.get_device`, imported on first use: the grader's
    processes import tutorlib's grading modules and never need torch."""
    if name in __all__:
        from tutorlib import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'tutorlib' has no attribute {name!r}")
