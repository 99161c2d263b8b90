"""The commands beside the pipeline (export, generate, validate, quantize in edgeseq.cli): info, bench, demo."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgeseq.errors import OptionsError
from edgeseq.escapes import shown
from edgeseq.fsutil import check_output_file, write_file_whole


@click.command()
@click.argument("bundle")
def info(bundle: str) -> None:
    """Print what BUNDLE holds: family, graphs and their I/O, tokens, provenance, parity."""
    from edgeseq.runtime import load_bundle

    b = load_bundle(bundle)
    m = b.manifest
    click.echo(
        f"{shown(b.path)}: {m.family} bundle, format {m.format_version}, "
        f"vocab {m.source_vocab_size} -> {m.target_vocab_size}"
    )
    for g in m.graphs.values():
        size = (b.path / g.file).stat().st_size
        click.echo(f"  {g.file} ({size / 1e6:.2f} MB)")
        for kind, tensors in (("in ", g.inputs), ("out", g.outputs)):
            for t in tensors:
                click.echo(f"    {kind} {t.name:<14} {t.dtype:<8} {list(t.shape)}")
    click.echo(f"  states: {', '.join(f'{s.input} <- {s.output}' for s in m.decoder.states)}")
    made = m.provenance
    click.echo(f"  made by edgeseq {made.get('edgeseq')} with torch {made.get('torch')}, opset {made.get('opset')}")
    click.echo(f"  parity: {'PASS' if m.parity.get('ok') else 'not recorded' if not m.parity else 'FAIL'}")


@click.command()
@click.argument("bundle")
@click.option("--reference", help="The PyTorch checkpoint of the bundle, to run PyTorch eager side by side.")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(1, 4096), help="Sources decoded together.")
@click.option(
    "--source-len", default=24, show_default=True, type=click.IntRange(1, 1 << 16), help="Tokens per (random) source."
)
@click.option(
    "--new-tokens", default=64, show_default=True, type=click.IntRange(1, 1 << 20), help="Tokens per source (exactly)."
)
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1, 1024), help="Threads, every engine.")
@click.option(
    "--repeats", default=3, show_default=True, type=click.IntRange(1, 1000), help="Timed runs per engine (median)."
)
@click.option("--provider", default="cpu", show_default=True, help="cpu, cuda or auto (the runtime's provider).")
@click.option(
    "--io-binding/--no-io-binding", default=None, help="Keep states on the device between steps (default: on CUDA)."
)
@click.option("--json", "json_out", help="Also write the figures as JSON to this file.")
def bench(
    bundle: str,
    reference: str | None,
    batch: int,
    source_len: int,
    new_tokens: int,
    threads: int,
    repeats: int,
    provider: str,
    io_binding: bool | None,
    json_out: str | None,
) -> None:
    """Time greedy decoding with BUNDLE (and PyTorch eager with --reference), side by side."""
    from edgeseq.cli import _input_paths

    if json_out:
        check_output_file(json_out, "--json", _input_paths(bundle, reference))
    from edgeseq.bench import bench_decode, bundle_sources, step_profile_table, summary_table
    from edgeseq.runtime import load_bundle
    from edgeseq.runtime.generator import OrtBackend

    b = load_bundle(bundle)
    m = b.manifest
    if m.max_target_length and new_tokens > m.max_target_length:
        raise OptionsError(f"--new-tokens {new_tokens} exceeds the model's {m.max_target_length} target positions")
    if source_len > m.max_source_length:
        raise OptionsError(f"--source-len {source_len} exceeds this bundle's max_source_length {m.max_source_length}")
    sources = bundle_sources(m, batch, source_len)
    backend = OrtBackend(b, provider, threads, io_binding)
    if backend.note:
        click.echo(f"edgeseq: {backend.note}", err=True)
    engine = (
        "onnxruntime"
        + ("" if backend.device == "cpu" else f"-{backend.device}")
        + ("+binding" if backend.bound else "")
    )
    results = [bench_decode(engine, backend, m.decoder, sources, new_tokens, repeats)]
    if reference:
        import torch

        from edgeseq.export import TorchBackend, adapter_for, load_checkpoint

        torch.set_num_threads(threads)
        model = load_checkpoint(reference).model
        results.append(
            bench_decode("pytorch", TorchBackend(adapter_for(model)), m.decoder, sources, new_tokens, repeats)
        )
    click.echo(
        f"greedy decoding, batch {batch}, {source_len}-token sources, {new_tokens} new tokens, {threads} threads"
    )
    click.echo(summary_table(results))
    if len(results) == 2:
        click.echo(f"onnxruntime / pytorch tokens/s: {results[0].tokens_per_s / results[1].tokens_per_s:.2f}x")
    if provider != "cpu":
        from edgeseq.bench import step_placement

        click.echo(step_placement(b, provider).line())
    click.echo("\ndecoder step time by step index (mean over the steps since the previous mark):")
    click.echo(step_profile_table(results))
    if json_out:
        write_file_whole(json_out, json.dumps([r.to_json() for r in results], indent=2) + "\n")


@click.command()
@click.option("--out", help="Keep the checkpoint and bundle in this new directory.")
@click.option("--arch", type=click.Choice(["rnn", "transformer"]), default="rnn", show_default=True)
@click.option("--cell", type=click.Choice(["lstm", "gru"]), default="lstm", show_default=True)
@click.option(
    "--attention", type=click.Choice(["bahdanau", "luong-dot", "luong-general"]), default="bahdanau", show_default=True
)
@click.option(
    "--steps", type=click.IntRange(1, 1_000_000), help="Training steps of batch 64 (default: 600 rnn, 800 transformer)."
)
def demo(out: str | None, arch: str, cell: str, attention: str, steps: int | None) -> None:
    """Train a date normalizer on the CPU, export it, validate it, translate with ONNX Runtime."""
    from edgeseq.demo.run import DemoOptions, run_demo

    model = "Transformer" if arch == "transformer" else f"{cell.upper()} + {attention}"
    click.echo(f"edgeseq demo: human-written dates -> ISO dates with a {model} model")
    options = DemoOptions(arch=arch, cell=cell, attention=attention, steps=steps)
    run_demo(Path(out) if out else None, options, echo=click.echo)
