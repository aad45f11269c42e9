"""Perplexity on the Python side (transformers), over exactly the windows the runtime scores."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from tqdm import tqdm


def windows(tokens: Sequence[int], n_ctx: int, max_windows: int | None = None) -> Iterator[tuple[np.ndarray, int]]:
    """Consecutive non-overlapping windows of n_ctx tokens and the index of the first scored token.

    Each window is evaluated from an empty cache and only its second half is scored, so every scored
    token sees at least n_ctx/2 tokens of context (the convention of llama.cpp's llama-perplexity).
    """
    if n_ctx < 2:
        raise ValueError("a perplexity window needs at least 2 tokens")
    tokens = np.asarray(tokens, dtype=np.int32)
    count = len(tokens) // n_ctx
    if count == 0:
        raise ValueError(f"the text has {len(tokens)} tokens, fewer than one window of {n_ctx}")
    if max_windows is not None:
        count = min(count, max_windows)
    for i in range(count):
        yield tokens[i * n_ctx:(i + 1) * n_ctx], n_ctx // 2


def count_windows(n_tokens: int, n_ctx: int, max_windows: int | None = None) -> int:
    count = n_tokens // n_ctx
    return count if max_windows is None else min(count, max_windows)


def hf_perplexity(model, tokens: Sequence[int], n_ctx: int, max_windows: int | None = None,
                  progress: bool = True) -> float:
    """Perplexity of a transformers causal LM (float, or a method's reference decode) on token ids."""
    import torch

    device = next(model.parameters()).device
    total, count = 0.0, 0
    bar = tqdm(total=count_windows(len(tokens), n_ctx, max_windows), desc="perplexity (transformers)",
               unit="window", disable=not progress)
    model.eval()
    with torch.inference_mode():
        for window, first in windows(tokens, n_ctx, max_windows):
            ids = torch.from_numpy(window.astype(np.int64))[None].to(device)
            logits = model(ids).logits[0].float()  # [n_ctx, n_vocab]
            # logits at position i predict token i + 1
            logprobs = torch.log_softmax(logits[first - 1:-1].double(), dim=-1)
            targets = ids[0, first:]
            total -= logprobs.gather(1, targets[:, None]).sum().item()
            count += len(targets)
            bar.update(1)
    bar.close()
    return math.exp(total / count)


def load_hf_model(model_dir, dtype: str = "float32"):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))


def hf_tokenize(model_dir, text: str) -> np.ndarray:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return np.asarray(tokenizer(text, add_special_tokens=False).input_ids, dtype=np.int32)
