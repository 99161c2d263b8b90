"""Benchmark: a random-weight Transformer (default 6+6 layers, d_model 512) exported with a KV cache.

Prints, from one run: bundle size against the PyTorch state dict; greedy tokens/s of the edgeseq runtime
against PyTorch eager on the same model (same loop, same strategy); and the decoder step time by step
index up to --profile-tokens, to show it stays flat as the cache grows.

    .venv/bin/python benchmarks/transformer_greedy.py [--layers 6] [--d-model 512] [--vocab 32000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from edgeseq.bench import bench_decode, step_profile_table, summary_table
from edgeseq.bundle import SourceFraming
from edgeseq.export import ExportOptions, TorchBackend, adapter_for, export_model
from edgeseq.models import TransformerConfig, TransformerSeq2Seq
from edgeseq.runtime import load_bundle
from edgeseq.runtime.batching import random_sources
from edgeseq.runtime.generator import OrtBackend
from edgeseq.vocab import SPECIALS, Vocab


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--ffn", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--source-len", type=int, default=24)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--profile-tokens", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = TransformerConfig(
        args.vocab,
        args.vocab,
        d_model=args.d_model,
        heads=args.heads,
        encoder_layers=args.layers,
        decoder_layers=args.layers,
        ffn_dim=args.ffn,
        dropout=0.0,
        max_positions=512,
    )
    model = TransformerSeq2Seq(cfg).eval()
    vocab = Vocab(SPECIALS + tuple(f"w{i}" for i in range(args.vocab - len(SPECIALS))), level="word")
    state_bytes = sum(
        {t.untyped_storage().data_ptr(): t.numel() * t.element_size() for t in model.state_dict().values()}.values()
    )
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        bundle_dir, report = export_model(
            model,
            Path(tmp) / "bundle",
            source_vocab=vocab,
            target_vocab=vocab,
            options=ExportOptions(max_new_tokens=16),
        )
        export_s = time.perf_counter() - t
        bundle_bytes = sum(f.stat().st_size for f in bundle_dir.iterdir())
        print(
            f"model: {args.layers}+{args.layers} layers, d_model {args.d_model}, {args.heads} heads, FFN {args.ffn}, "
            f"vocabulary {args.vocab}; exported in {export_s:.1f} s, parity {'PASS' if report.ok else 'FAIL'} "
            f"(max abs error {max(c.max_abs for c in report.outputs):.1e})"
        )
        print(
            f"bundle {bundle_bytes / 1e6:.1f} MB vs PyTorch state dict {state_bytes / 1e6:.1f} MB "
            f"({bundle_bytes / state_bytes:.3f}x)"
        )
        t = time.perf_counter()
        bundle = load_bundle(bundle_dir)
        ort_backend = OrtBackend(bundle, threads=args.threads)
        print(f"bundle load (checksums + sessions): {time.perf_counter() - t:.2f} s")
        torch_backend = TorchBackend(adapter_for(model))
        spec = bundle.manifest.decoder
        sources = random_sources(
            args.vocab, 1, args.source_len, framing=SourceFraming(suffix=(2,)), special=(0, 1, 2, 3)
        )
        print(
            f"\ngreedy, batch 1, {args.source_len}-token source, {args.new_tokens} new tokens, {args.threads} threads"
        )
        results = [
            bench_decode(name, backend, spec, sources, args.new_tokens)
            for name, backend in (("onnxruntime", ort_backend), ("pytorch", torch_backend))
        ]
        print(summary_table(results))
        print(f"onnxruntime / pytorch tokens/s: {results[0].tokens_per_s / results[1].tokens_per_s:.2f}x")
        print(
            f"\ndecoder step time by step index, {args.profile_tokens} new tokens "
            "(mean over the steps since the previous mark):"
        )
        profile = [
            bench_decode(name, backend, spec, sources, args.profile_tokens, repeats=1)
            for name, backend in (("onnxruntime", ort_backend), ("pytorch", torch_backend))
        ]
        print(step_profile_table(profile))


if __name__ == "__main__":
    main()
