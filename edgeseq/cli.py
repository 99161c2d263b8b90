"""The `edgeseq` command line. User errors print one line on stderr and exit non-zero; bugs keep tracebacks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from edgeseq.errors import EdgeseqError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgeseq")
def cli() -> None:
    """Export PyTorch encoder-decoders to ONNX bundles, run them, and check them against PyTorch."""


@cli.command()
@click.argument("checkpoint")
@click.option("--out", required=True, help="Bundle directory to write (must not exist unless --force).")
@click.option("--force", is_flag=True, help="Replace an existing bundle at --out.")
@click.option("--opset", default=17, show_default=True, help="ONNX opset.")
@click.option(
    "--max-new-tokens", type=int, help="The bundle's default generation limit (default: 64, or the model's positions)."
)
@click.option("--data", help="Source sentences (one per line) to check parity on, instead of random ones.")
@click.option("--no-simplify", is_flag=True, help="Keep the graphs as traced (skip onnxsim).")
def export(
    checkpoint: str, out: str, force: bool, opset: int, max_new_tokens: int | None, data: str | None, no_simplify: bool
) -> None:
    """Export CHECKPOINT to a bundle, checking parity: a .safetensors file saved by edgeseq, or a local Hugging
    Face folder (Marian, BART, mBART)."""
    from edgeseq.bundle import file_sha256
    from edgeseq.export import ExportOptions, export_model, load_checkpoint
    from edgeseq.export.hf import is_hf_checkpoint
    from edgeseq.runtime.sources import read_sources

    options = ExportOptions(opset=opset, force=force, max_new_tokens=max_new_tokens, simplify=not no_simplify)
    if Path(out).exists() and not force:  # before the slow part
        raise EdgeseqError(f"{out} already exists: choose another --out, or pass --force to replace it")
    texts = read_sources(data) if data else None
    progress = lambda msg: click.echo(f"edgeseq: {msg}", err=True)  # noqa: E731
    if is_hf_checkpoint(checkpoint):
        from edgeseq.export.hf import load_hf_checkpoint

        hf = load_hf_checkpoint(checkpoint)
        path, report = export_model(
            hf.model,
            out,
            tokenizer=hf.tokenizer,
            options=options,
            generation=hf.generation,
            banned_tokens=hf.banned_tokens,
            parity_sources=[hf.encode(t) for t in texts] if texts else None,
            made_from={"checkpoint": Path(checkpoint).name, "hf_model_type": hf.family},
            progress=progress,
        )
    else:
        ckpt = load_checkpoint(checkpoint)
        path, report = export_model(
            ckpt.model,
            out,
            source_vocab=ckpt.source_vocab,
            target_vocab=ckpt.target_vocab,
            options=options,
            parity_sources=[ckpt.source_vocab.encode(t) for t in texts] if texts else None,
            made_from={"checkpoint": Path(checkpoint).name, "checkpoint_sha256": file_sha256(Path(checkpoint))},
            progress=progress,
        )
    click.echo(report.table())
    click.echo(f"wrote {path}")


# Decoding flags mirror DecodingOptions one to one; a flag left out keeps the bundle's default.
DECODING_FLAGS = {
    "max_new_tokens": click.option("--max-new-tokens", type=int, help="Stop after this many tokens."),
    "min_new_tokens": click.option("--min-new-tokens", type=int, help="Forbid </s> before this many tokens."),
    "beam_size": click.option("--beam", "beam_size", type=int, help="Beam size (1: greedy)."),
    "length_penalty": click.option("--length-penalty", type=float, help="Beam: score / length ** this."),
    "early_stopping": click.option(
        "--early-stopping/--no-early-stopping",
        default=None,
        help="Beam: stop a source once it has beam-size finished hypotheses.",
    ),
    "nbest": click.option("--nbest", type=int, help="Hypotheses returned per source."),
    "sample": click.option("--sample/--no-sample", default=None, help="Sample instead of taking the argmax."),
    "temperature": click.option("--temperature", type=float, help="Sampling temperature."),
    "top_k": click.option("--top-k", type=int, help="Sampling: keep the k most likely tokens (0: all)."),
    "top_p": click.option("--top-p", type=float, help="Sampling: nucleus probability mass, in (0, 1]."),
    "seed": click.option("--seed", type=int, help="Sampling: random seed, for reproducible output."),
    "repetition_penalty": click.option("--repetition-penalty", type=float, help="> 1 discourages repeats."),
    "no_repeat_ngram": click.option("--no-repeat-ngram", type=int, help="Never repeat an n-gram of this size."),
    "return_alignments": click.option(
        "--alignments",
        "return_alignments",
        is_flag=True,
        default=None,
        help="Include attention alignments in --json output.",
    ),
}


def decoding_flags(f):
    for option in reversed(DECODING_FLAGS.values()):
        f = option(f)
    return f


@cli.command()
@click.argument("bundle")
@click.argument("texts", nargs=-1)
@click.option("--input", "input_file", help="Read sources from this file, one per line.")
@decoding_flags
@click.option("--provider", default="cpu", show_default=True, help="cpu, cuda or auto.")
@click.option("--threads", type=int, help="Intra-op threads (default: onnxruntime's choice).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: a list with one object per source.")
@click.option("--stream", is_flag=True, help="Print tokens as they are decided (with --json: one event per line).")
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of the bundle's files (very large bundles).")
def generate(
    bundle: str,
    texts: tuple[str, ...],
    input_file: str | None,
    provider: str,
    threads: int | None,
    as_json: bool,
    stream: bool,
    no_verify: bool,
    **flags,
) -> None:
    """Translate TEXTS (or --input FILE) with BUNDLE; one output line per source."""
    from edgeseq.runtime import Generator, load_bundle

    if input_file and texts:
        raise EdgeseqError("give sources either as arguments or with --input, not both")
    if input_file:
        from edgeseq.runtime.sources import read_sources

        sources = read_sources(input_file)
    else:
        sources = list(texts)
    if not sources:
        raise EdgeseqError("no sources: pass text arguments or --input FILE")
    gen = Generator(load_bundle(bundle, verify_checksums=not no_verify), provider=provider, threads=threads)
    if gen.backend.note:
        click.echo(f"edgeseq: {gen.backend.note}", err=True)
    options = gen.options.replace(**{k: v for k, v in flags.items() if v is not None})
    if stream:
        _stream(gen, sources, options, as_json)
        return
    results = gen.generate(sources, options)
    if as_json:
        out = [{"source": s, "hypotheses": [_hypothesis_json(h) for h in r.nbest]} for s, r in zip(sources, results)]
        click.echo(json.dumps(out, ensure_ascii=False, indent=2))
    else:
        for r in results:
            click.echo(r.text if len(r.nbest) == 1 else "\t".join(h.text for h in r.nbest))


def _hypothesis_json(h) -> dict:
    d = {"text": h.text, "tokens": list(h.tokens), "score": h.score}
    if h.alignment is not None:
        d["alignment"] = np.round(h.alignment, 5).tolist()
    return d


def _stream(gen, sources: list[str], options, as_json: bool) -> None:
    """One source after another, each token printed (and flushed) as soon as it is decided."""
    for i, text in enumerate(sources):
        pieces = []
        for event in gen.stream([text], options):
            pieces.append(event.piece)
            if as_json:
                click.echo(json.dumps({"source": i, "token": event.token, "piece": event.piece}, ensure_ascii=False))
            else:
                click.echo(event.piece, nl=False)
            sys.stdout.flush()
        click.echo(
            json.dumps({"source": i, "done": True, "text": "".join(pieces)}, ensure_ascii=False) if as_json else ""
        )


@cli.command()
@click.argument("bundle")
@click.option("--reference", required=True, help="The PyTorch checkpoint, or another bundle (e.g. the fp32 one).")
@click.option("--data", help="Sources, one per line, optionally 'source<TAB>reference' (adds BLEU and chrF).")
@click.option("--json", "json_out", help="Also write the report as JSON to this file ('-' for stdout).")
@click.option("--atol", type=float, help="Graph outputs: absolute tolerance (default by precision).")
@click.option("--rtol", type=float, help="Graph outputs: relative tolerance.")
@click.option("--step-atol", type=float, help="Teacher-forced logits: absolute tolerance.")
@click.option("--min-step-agreement", type=float, help="Required fraction of steps with the same argmax.")
@click.option("--min-exact-match", type=float, help="Required fraction of identical sequences.")
@click.option("--max-bleu-drop", type=float, help="With references: allowed BLEU drop.")
@click.option("--no-record", is_flag=True, help="Do not write the result into the bundle's manifest.")
def validate(bundle: str, reference: str, data: str | None, json_out: str | None, no_record: bool, **overrides) -> None:
    """Check BUNDLE against its reference at graph, step and sequence level. Exit 1 on a failed check."""
    from dataclasses import replace

    from edgeseq.export.parity import PRECISION_THRESHOLDS
    from edgeseq.export.validate import precision_of, read_pairs, validate_bundle
    from edgeseq.runtime import load_bundle

    texts, references = read_pairs(data) if data else (None, None)
    base = PRECISION_THRESHOLDS[precision_of(load_bundle(bundle, verify_checksums=False).manifest)]
    thresholds = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    report = validate_bundle(bundle, reference, texts, references, thresholds, record=not no_record)
    if json_out == "-":
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(report.table())
        if json_out:
            Path(json_out).write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    if not report.ok:
        sys.exit(1)


@cli.command()
@click.argument("bundle")
@click.option("--out", required=True, help="The new bundle (the input is never modified).")
@click.option("--mode", help="fp32, dynamic-int8 (or int8), static-int8 or fp16, for every graph.")
@click.option("--encoder", "enc", help="Mode of the encoder graph (overrides --mode).")
@click.option("--attention", "att", help="Mode of the attention graph (overrides --mode).")
@click.option("--decoder", "dec", help="Mode of the decoder-step graph (overrides --mode).")
@click.option("--recipe", "recipe_file", help='JSON file: {"encoder": MODE, "attention": MODE, "decoder_step": MODE}.')
@click.option("--calibration", help="Source sentences (one per line) for static-int8 calibration.")
@click.option("--auto", is_flag=True, help="Try recipes; keep the smallest within --budget.")
@click.option("--budget", default=0.5, show_default=True, help="--auto: allowed exact-match drop in points.")
@click.option("--data", help="--auto: sources (optionally source<TAB>reference) to measure quality on.")
@click.option("--force", is_flag=True, help="Replace an existing bundle at --out.")
def quantize(
    bundle: str,
    out: str,
    mode: str | None,
    enc: str | None,
    att: str | None,
    dec: str | None,
    recipe_file: str | None,
    calibration: str | None,
    auto: bool,
    budget: float,
    data: str | None,
    force: bool,
) -> None:
    """Write a quantized copy of BUNDLE: int8 (dynamic or calibrated static) or fp16, per graph."""
    from edgeseq.export.quantize import Recipe, quantize_bundle
    from edgeseq.runtime.sources import read_sources

    def note(msg: str) -> None:
        click.echo(f"edgeseq: {msg}", err=True)

    calib = read_sources(calibration) if calibration else None
    if auto:
        from edgeseq.export.auto import auto_quantize, trials_table
        from edgeseq.export.validate import read_pairs

        if not data and not calib:
            raise EdgeseqError("--auto needs --data FILE (or --calibration FILE) to measure quality on")
        texts, references = read_pairs(data) if data else (calib, None)
        best, trials = auto_quantize(Path(bundle), Path(out), texts, references, budget, calib, force, progress=note)
        click.echo(trials_table(trials, best))
        if best is None:
            raise EdgeseqError(f"no recipe stays within the budget of {budget} points; nothing written")
        click.echo(f"wrote {out} ({best.recipe.name})")
        return
    if recipe_file and (mode or enc or att or dec):
        raise EdgeseqError("give either --recipe FILE or --mode/--encoder/--attention/--decoder, not both")
    if recipe_file:
        recipe = Recipe.load(recipe_file)
    elif mode or enc or att or dec:
        recipe = Recipe(enc or mode or "fp32", att or mode or "fp32", dec or mode or "fp32")
    else:
        raise EdgeseqError(
            "say how to quantize: --mode MODE, per-graph --encoder/--attention/--decoder, --recipe or --auto"
        )
    path = quantize_bundle(bundle, out, recipe, calib, force, progress=note)
    size = sum(f.stat().st_size for f in path.iterdir())
    before = sum(f.stat().st_size for f in Path(bundle).iterdir())
    click.echo(f"wrote {path} ({recipe.name}): {size / 1e6:.2f} MB, {size / before:.0%} of {before / 1e6:.2f} MB")
    click.echo(f"check it: edgeseq validate {path} --reference {bundle} --data SOURCES")


@cli.command()
@click.argument("bundle")
def info(bundle: str) -> None:
    """Print what BUNDLE holds: family, graphs and their I/O, tokens, provenance, parity."""
    from edgeseq.runtime import load_bundle

    b = load_bundle(bundle)
    m = b.manifest
    click.echo(
        f"{b.path}: {m.family} bundle, format {m.format_version}, vocab {m.source_vocab_size} -> {m.target_vocab_size}"
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


@cli.command()
@click.argument("bundle")
@click.option("--reference", help="The PyTorch checkpoint of the bundle, to run PyTorch eager side by side.")
@click.option("--batch", default=1, show_default=True, help="Sources decoded together.")
@click.option("--source-len", default=24, show_default=True, help="Tokens per (random) source, </s> included.")
@click.option("--new-tokens", default=64, show_default=True, help="Tokens generated per source (exactly).")
@click.option("--threads", default=2, show_default=True, help="Threads for every engine.")
@click.option("--repeats", default=3, show_default=True, help="Timed runs per engine (the median is reported).")
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
    from edgeseq.bench import bench_decode, random_sources, step_profile_table, summary_table
    from edgeseq.runtime import load_bundle
    from edgeseq.runtime.generator import OrtBackend

    b = load_bundle(bundle)
    m = b.manifest
    if m.max_target_length and new_tokens > m.max_target_length:
        raise EdgeseqError(f"--new-tokens {new_tokens} exceeds the model's {m.max_target_length} target positions")
    sources = random_sources(m.source_vocab_size, batch, source_len)
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
        Path(json_out).write_text(json.dumps([r.to_json() for r in results], indent=2) + "\n", encoding="utf-8")


@cli.command()
@click.option("--out", help="Keep the checkpoint and bundle in this new directory.")
@click.option("--arch", type=click.Choice(["rnn", "transformer"]), default="rnn", show_default=True)
@click.option("--cell", type=click.Choice(["lstm", "gru"]), default="lstm", show_default=True)
@click.option(
    "--attention", type=click.Choice(["bahdanau", "luong-dot", "luong-general"]), default="bahdanau", show_default=True
)
@click.option("--steps", type=int, help="Training steps of batch 64 (default: 600 rnn, 800 transformer).")
def demo(out: str | None, arch: str, cell: str, attention: str, steps: int | None) -> None:
    """Train a date normalizer on the CPU, export it, validate it, translate with ONNX Runtime."""
    from edgeseq.demo.run import DemoOptions, run_demo

    model = "Transformer" if arch == "transformer" else f"{cell.upper()} + {attention}"
    click.echo(f"edgeseq demo: human-written dates -> ISO dates with a {model} model")
    options = DemoOptions(arch=arch, cell=cell, attention=attention, steps=steps)
    run_demo(Path(out) if out else None, options, echo=click.echo)


# Optional dependencies, and the extra that brings each: the base install is the runtime alone.
EXTRAS = {
    **dict.fromkeys(("torch", "onnx", "onnxsim", "onnxscript", "safetensors", "tqdm", "sacrebleu"), "export"),
    "transformers": "hf",
    **dict.fromkeys(("tokenizers", "sentencepiece"), "text"),
}


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and a non-zero exit status."""
    try:
        cli.main(args=argv, prog_name="edgeseq", standalone_mode=False)
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top not in EXTRAS:
            raise
        click.echo(
            f"edgeseq: error: this command needs {top}, which this install lacks: pip install 'edgeseq[{EXTRAS[top]}]'",
            err=True,
        )
        sys.exit(1)
    except EdgeseqError as e:
        click.echo(f"edgeseq: error: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        click.echo(f"edgeseq: error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("edgeseq: aborted", err=True)
        sys.exit(1)
    except BrokenPipeError:
        sys.exit(1)


if __name__ == "__main__":
    main()
