"""`edgeseq demo`: train a date normalizer, export it, check parity, translate through ONNX Runtime."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from edgeseq.demo.dates import demo_split
from edgeseq.demo.train import TrainOptions, encode_pairs, train
from edgeseq.errors import EdgeseqError
from edgeseq.escapes import shown
from edgeseq.export import ExportOptions, TorchBackend, adapter_for, export_model, save_checkpoint
from edgeseq.export.parity import count
from edgeseq.fsutil import WriteError, describe_os_error
from edgeseq.models import RNNConfig, RNNSeq2Seq, TransformerConfig, TransformerSeq2Seq
from edgeseq.runtime import DecodingOptions, Generator
from edgeseq.runtime.loop import decode
from edgeseq.vocab import Vocab

TARGET_EXACT_MATCH = 0.95


@dataclass(frozen=True)
class DemoOptions:
    """What the demo trains and how much it shows."""

    arch: str = "rnn"  # "rnn" or "transformer"
    cell: str = "lstm"  # rnn only
    attention: str = "bahdanau"  # rnn only
    steps: int | None = None  # training steps of batch 64 (None: 600 for rnn, 800 for transformer; ~40-60 s)
    train_pairs: int = 30000
    held_out: int = 1000
    examples: int = 8  # held-out examples printed one by one
    threads: int = 2


def run_demo(out: Path | None, options: DemoOptions = DemoOptions(), echo: Callable[[str], None] = print) -> float:
    """Run the whole demo; returns the runtime's held-out exact match (an error below 95%)."""
    if out is not None and out.exists():
        raise EdgeseqError(f"{shown(out)} already exists: choose another --out or remove it")
    torch.set_num_threads(options.threads)
    if out is None:
        with tempfile.TemporaryDirectory(prefix="edgeseq-demo-") as tmp:
            return _run(Path(tmp), options, echo, keep=False)
    try:
        out.mkdir(parents=True)
    except OSError as e:
        raise WriteError(describe_os_error(e, out)) from None
    try:
        return _run(out, options, echo, keep=True)
    except BaseException:  # nothing half-written: the directory is the demo's own, made just now
        shutil.rmtree(out, ignore_errors=True)
        raise


def _run(out: Path, o: DemoOptions, echo: Callable[[str], None], keep: bool) -> float:
    started = time.perf_counter()
    train_pairs, test_pairs = demo_split(o.train_pairs, o.held_out)
    sv, tv = Vocab.build(s for s, _ in train_pairs), Vocab.build(t for _, t in train_pairs)
    echo(
        f"[1/5] data: {len(train_pairs)} training pairs, {len(test_pairs)} held out (never seen in training), "
        f"e.g. {test_pairs[0][0]!r} -> {test_pairs[0][1]!r}"
    )

    model, name, train_options = _model(o, len(sv), len(tv))
    echo(f"[2/5] training {train_options.steps} steps on {o.threads} CPU threads ...")
    t = time.perf_counter()
    losses = train(model, encode_pairs(train_pairs, sv, tv), tv, train_options)
    echo(
        f"      trained a {name} model "
        f"({sum(p.numel() for p in model.parameters()):,} parameters) for {len(losses)} steps "
        f"in {time.perf_counter() - t:.1f} s, final loss {losses[-1]:.4f}"
    )

    sources = [sv.encode(s) for s, _ in test_pairs]
    decoding = DecodingOptions(max_new_tokens=16)
    reference = TorchBackend(adapter_for(model))
    t = time.perf_counter()
    torch_out = [tv.decode(h[0].tokens) for h in decode(reference, reference.adapter.decoder_spec(), sources, decoding)]
    torch_exact = _exact(torch_out, test_pairs)
    echo(
        f"[3/5] PyTorch greedy on the held-out set: exact match {count(torch_exact, len(test_pairs))} "
        f"({time.perf_counter() - t:.2f} s)"
    )

    checkpoint = save_checkpoint(out / "dates.safetensors", model, sv, tv, task="dates", steps=len(losses))
    bundle, report = export_model(
        model,
        out / "bundle",
        source_vocab=sv,
        target_vocab=tv,
        options=ExportOptions(max_new_tokens=16),
        parity_sources=sources[:24],
        made_from={"checkpoint": checkpoint.name},
    )
    worst = max(c.max_abs for c in report.outputs)
    files = ", ".join(sorted(p.name for p in bundle.iterdir()))
    echo(
        f"[4/5] exported {shown(bundle)} ({files}); parity with PyTorch: PASS, max abs error {worst:.1e}, "
        f"{report.sequences[0].exact}/{report.sequences[0].sources} greedy sequences identical"
    )

    gen = Generator(bundle, threads=o.threads)
    t = time.perf_counter()
    results = gen.generate([s for s, _ in test_pairs])
    seconds = time.perf_counter() - t
    runtime_out = [r.text for r in results]
    exact = _exact(runtime_out, test_pairs)
    acc = exact / len(test_pairs)
    tokens = sum(len(r.tokens) + 1 for r in results)
    echo(
        f"[5/5] ONNX Runtime greedy on the held-out set: exact match {count(exact, len(test_pairs))}, same output "
        f"as PyTorch for {count(sum(a == b for a, b in zip(runtime_out, torch_out)), len(test_pairs))}; "
        f"{len(test_pairs)} sentences in {seconds:.2f} s ({tokens / seconds:,.0f} tokens/s, one batch)"
    )
    echo("")
    echo(f"{'source':<36} {'output':<12} {'reference':<12} {'':2} {'ms':>6}")
    for src, ref in test_pairs[: o.examples]:
        t = time.perf_counter()
        text = gen.generate([src])[0].text
        ms = (time.perf_counter() - t) * 1000
        echo(f"{src:<36} {text:<12} {ref:<12} {'ok' if text == ref else 'XX':2} {ms:>6.1f}")
    echo("")
    where = (
        f"checkpoint {checkpoint.name} and bundle are in {shown(out)}" if keep else "pass --out DIR to keep the bundle"
    )
    echo(f"done in {time.perf_counter() - started:.0f} s; {where}")
    if acc < TARGET_EXACT_MATCH:
        raise EdgeseqError(
            f"held-out exact match {count(exact, len(test_pairs))} is below the demo's target {TARGET_EXACT_MATCH:.0%}"
        )
    return acc


def _model(o: DemoOptions, src_vocab: int, tgt_vocab: int) -> tuple[torch.nn.Module, str, TrainOptions]:
    torch.manual_seed(0)  # the same weights every run
    if o.arch == "transformer":
        cfg = TransformerConfig(
            src_vocab,
            tgt_vocab,
            d_model=128,
            heads=4,
            encoder_layers=2,
            decoder_layers=2,
            ffn_dim=256,
            dropout=0.0,
            max_positions=64,
        )
        steps = o.steps or 800
        return TransformerSeq2Seq(cfg), "2+2-layer Transformer", TrainOptions(steps=steps, lr=1e-3, warmup=steps // 10)
    if o.arch != "rnn":
        raise EdgeseqError(f"unknown demo architecture {o.arch!r}: choose rnn or transformer")
    cfg = RNNConfig(
        src_vocab,
        tgt_vocab,
        cell=o.cell,
        attention=o.attention,
        bidirectional=True,
        hidden=128,
        emb_dim=32,
        attn_dim=64,
    )
    name = f"bidirectional {o.cell.upper()} + {o.attention} attention"
    return RNNSeq2Seq(cfg), name, TrainOptions(steps=o.steps or 600)


def _exact(outputs: list[str], pairs: list[tuple[str, str]]) -> int:
    """How many outputs equal their reference."""
    return sum(o == r for o, (_, r) in zip(outputs, pairs))
