"""A small teacher-forced trainer for the reference models (the demo, and tests that need a trained model)."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from edgeseq.errors import OptionsError
from edgeseq.runtime.batching import pad_batch
from edgeseq.vocab import Vocab


@dataclass(frozen=True)
class TrainOptions:
    """How long and how fast to train."""

    steps: int = 2000  # optimizer steps (batches)
    batch_size: int = 64
    lr: float = 3e-3  # Adam, warmed up linearly, then decayed linearly to 10% over the steps
    warmup: int = 0  # steps of linear warm-up
    clip: float = 1.0  # gradient norm clipping
    seed: int = 0
    max_seconds: float | None = None  # stop early once this much time has passed

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise OptionsError("steps and batch_size must be >= 1 and lr > 0")


def encode_pairs(pairs: Sequence[tuple[str, str]], sv: Vocab, tv: Vocab) -> list[tuple[list[int], list[int]]]:
    """(source text, target text) -> (source ids + </s>, target ids + </s>)."""
    return [(sv.encode(s), tv.encode(t)) for s, t in pairs]


def make_batch(examples: Sequence[tuple[list[int], list[int]]], tv: Vocab) -> tuple[torch.Tensor, ...]:
    """Padded src_ids, src_mask, decoder inputs (<s> + target) and labels (target + </s>, pad elsewhere)."""
    src_ids, src_mask = pad_batch([s for s, _ in examples], tv.pad_id)
    labels, _ = pad_batch([t for _, t in examples], tv.pad_id)  # (B, T)
    dec_in = np.concatenate([np.full((len(examples), 1), tv.bos_id), labels[:, :-1]], axis=1)
    dec_in[dec_in == tv.eos_id] = tv.pad_id
    return tuple(torch.from_numpy(a) for a in (src_ids, src_mask, dec_in, labels))


def train(
    model: nn.Module,
    data: Sequence[tuple[list[int], list[int]]],
    tv: Vocab,
    options: TrainOptions = TrainOptions(),
    show_progress: bool = True,
) -> list[float]:
    """Train `model(src_ids, src_mask, dec_in) -> (B, T, V) logits` on encoded pairs; returns the losses."""
    rng = random.Random(options.seed)
    torch.manual_seed(options.seed)
    opt = torch.optim.Adam(model.parameters(), lr=options.lr)

    def schedule(i: int) -> float:
        return min((i + 1) / options.warmup, 1.0) if i < options.warmup else 1.0 - 0.9 * i / options.steps

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    loss_fn = nn.CrossEntropyLoss(ignore_index=tv.pad_id)
    model.train()
    losses, start = [], time.perf_counter()
    bar = tqdm(range(options.steps), desc="training", unit="step", disable=None if show_progress else True, leave=False)
    for _ in bar:
        src_ids, src_mask, dec_in, labels = make_batch(rng.sample(data, options.batch_size), tv)
        logits = model(src_ids, src_mask, dec_in)  # (B, T, V)
        loss = loss_fn(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), options.clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if len(losses) % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if options.max_seconds and time.perf_counter() - start > options.max_seconds:
            break
    bar.close()
    model.eval()
    return losses
