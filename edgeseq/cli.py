"""The `edgeseq` command line. User errors print one line on stderr and exit non-zero; bugs keep tracebacks."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click

from edgeseq.errors import EdgeseqError, OptionsError
from edgeseq.escapes import escape_controls, shown
from edgeseq.fsutil import check_output_file, write_file_whole


class FiniteRange(click.FloatRange):
    """A float in [min, max], refusing nan (which FloatRange's comparisons let through)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if number != number:
            self.fail(f"{value!r} is not a number in the range {self.min}<=x<={self.max}", param, ctx)
        return number


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgeseq")
def cli() -> None:
    """Export PyTorch encoder-decoders to ONNX bundles, run them, and check them against PyTorch."""


@cli.command()
@click.argument("model")
@click.option("--out", required=True, help="Bundle directory to write (must not exist unless --force).")
@click.option("--force", is_flag=True, help="Replace an existing bundle at --out (never anything else).")
@click.option("--opset", default=17, show_default=True, help="ONNX opset.")
@click.option(
    "--max-new-tokens", type=int, help="The bundle's default generation limit (default: 64, or the model's positions)."
)
@click.option("--data", help="Source sentences (one per line) to check parity on, instead of random ones.")
@click.option(
    "--pairs", help="source<TAB>expected output, from your own pipeline: the bundle's text must equal it (text level)."
)
@click.option("--no-simplify", is_flag=True, help="Keep the graphs as traced (skip onnxsim).")
@click.option("--no-generate-graph", is_flag=True, help="Leave out generate.onnx (the whole loop as one graph).")
def export(
    model: str,
    out: str,
    force: bool,
    opset: int,
    max_new_tokens: int | None,
    data: str | None,
    pairs: str | None,
    no_simplify: bool,
    no_generate_graph: bool,
) -> None:
    """Export MODEL to a bundle, checking parity. MODEL is your own code, FILE.py:FUNCTION or
    package.module:FUNCTION (it builds the model and says its tokenizer, framing and ids: README "Your own
    model"), a local Hugging Face folder (Marian, BART, mBART, T5, mT5), or a .safetensors saved by edgeseq."""
    from edgeseq.export import ExportOptions
    from edgeseq.export.any_model import export_any

    options = ExportOptions(
        opset=opset,
        force=force,
        max_new_tokens=max_new_tokens,
        simplify=not no_simplify,
        generate_graph=not no_generate_graph,
    )
    texts, expected = _check_data(data, pairs)
    inputs = _input_paths(model, data, pairs)
    path, report = export_any(model, out, options, texts, expected, f"pairs {pairs}", _note, inputs)
    click.echo(report.table())
    click.echo(f"wrote {shown(path)}")


def _note(msg: str) -> None:
    click.echo(f"edgeseq: {msg}", err=True)


def _check_data(data: str | None, pairs: str | None) -> tuple[list[str] | None, list[str] | None]:
    """--data (sources) or --pairs (sources and the user's own outputs)."""
    from edgeseq.runtime.sources import read_sources

    if data and pairs:
        raise OptionsError("give --data or --pairs, not both (--pairs carries its sources)")
    if pairs:
        from edgeseq.export.validate import read_pairs

        texts, expected = read_pairs(pairs)
        if expected is None:
            raise EdgeseqError(f"--pairs {pairs}: every line needs source<TAB>expected output")
        return texts, expected
    return (read_sources(data) if data else None), None


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
@click.option("--input", "input_file", help="Read sources from this file, one per line ('-': standard input).")
@click.option("--output", help="Write the translations to this file, whole when done (default, or '-': stdout).")
@decoding_flags
@click.option(
    "--batch-tokens",
    type=int,
    help="Tokens per batch, what its caches hold: sources x beams x (longest source + max new tokens) at most; 4096.",
)
@click.option(
    "--on-error",
    type=click.Choice(["stop", "skip"]),
    default="stop",
    show_default=True,
    help="A line the model cannot take: stop with an error naming it, or skip it (empty output line).",
)
@click.option("--progress/--no-progress", default=None, help="Lines and lines/s on stderr (default: on a terminal).")
@click.option("--provider", default="cpu", show_default=True, help="cpu, cuda or auto.")
@click.option(
    "--engine",
    type=click.Choice(["auto", "loop", "graph"]),
    default="auto",
    show_default=True,
    help="graph: the bundle's generate.onnx, the whole loop in one call (greedy, beam); loop: the Python loop "
    "over the step graph (every option); auto: the graph where it is faster (greedy, a few sources, a small "
    "model), else the loop.",
)
@click.option(
    "--threads", type=click.IntRange(1, 1024), help="Threads in all (default: onnxruntime's choice; --input: the CPUs)."
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    help="Batches decoded at once, on --threads / N threads each (CPU; default: --input one per thread up to 4, "
    "else 1). Each holds up to --batch-tokens in memory.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON: a list with one object per source.")
@click.option("--stream", is_flag=True, help="Print tokens as they are decided (with --json: one event per line).")
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of the bundle's files (very large bundles).")
@click.option("--ray", "use_ray", is_flag=True, help="Translate on a Ray cluster (pip install 'edgeseq[ray]').")
@click.option("--ray-address", help="With --ray: an existing cluster (e.g. auto); default RAY_ADDRESS, or a local one.")
@click.option("--actors", type=click.IntRange(1, 1 << 16), help="With --ray: actors, one model each (default 2).")
def generate(
    bundle: str,
    texts: tuple[str, ...],
    input_file: str | None,
    output: str | None,
    batch_tokens: int | None,
    on_error: str,
    progress: bool | None,
    provider: str,
    engine: str,
    threads: int | None,
    workers: int | None,
    as_json: bool,
    stream: bool,
    no_verify: bool,
    use_ray: bool,
    ray_address: str | None,
    actors: int | None,
    **flags,
) -> None:
    """Translate TEXTS (or --input FILE, '-' for stdin) with BUNDLE: one output line per source, in input
    order, written as batches finish. Memory does not grow with the input: lines are read a window at a time,
    sorted by length and decoded in batches of at most --batch-tokens tokens. With --ray, by a pool of Ray
    actors (--threads: CPUs and threads per actor), with the same output."""
    from edgeseq.cli_output import Output, Progress, write_results
    from edgeseq.runtime import Generator, load_bundle
    from edgeseq.runtime.lines import Batching, split_threads

    if input_file and texts:
        raise OptionsError("give sources either as arguments or with --input, not both")
    if texts == ("-",):
        input_file = "-"
    if not input_file and not texts:
        raise OptionsError("no sources: pass text arguments or --input FILE ('-' for standard input)")
    if output and output != "-":
        check_output_file(output, "--output", _input_paths(bundle, input_file))
    batching = Batching(on_error=on_error, **({"max_tokens": batch_tokens} if batch_tokens is not None else {}))
    if use_ray or ray_address or actors:
        if not use_ray:
            raise OptionsError("--ray-address and --actors go with --ray")
        if stream or provider != "cpu" or engine != "auto" or workers:
            raise OptionsError(
                "--ray decodes whole lines on CPUs: leave out --stream, --provider, --engine and --workers"
            )
        from edgeseq.ray import Cluster

        cluster = Cluster(actors or 2, threads or 1, ray_address, verify_checksums=not no_verify, note=_note)
        shown = progress if progress is not None else sys.stderr.isatty() and bool(input_file)
        lines = texts if not input_file else _input_lines(input_file)
        return _generate_on_ray(bundle, lines, output, as_json, shown, batching, cluster, flags)
    if workers and workers > 1 and (provider != "cpu" or stream):
        raise OptionsError("--workers decodes batches side by side on the CPU: leave out --provider and --stream")
    workers, threads = split_threads(threads, workers, many=bool(input_file) and provider == "cpu" and not stream)
    batching = dataclasses.replace(batching, workers=workers)
    loaded = load_bundle(bundle, verify_checksums=not no_verify)
    # (a file's batches may end with one row: its memory stays that of the batched step alone)
    gen = Generator(loaded, provider=provider, threads=threads, engine=engine, one_row=not input_file)
    if gen.note:
        _note(gen.note)
    options = gen.options.replace(**{k: v for k, v in flags.items() if v is not None})
    lines = texts if not input_file else _input_lines(input_file)
    out = Output(output)
    try:
        if stream:
            _stream(gen, lines, options, as_json, out)
        else:
            shown = progress if progress is not None else sys.stderr.isatty() and bool(input_file)
            meter = Progress(shown)
            skipped = write_results(gen.translate_lines(lines, options, batching), out, as_json, meter, _note)
            meter.done()
            if skipped:
                _note(f"{skipped} line(s) skipped (--on-error skip)")
        out.finish()
    except BaseException:
        out.abort()
        raise


def _generate_on_ray(bundle, lines, output, as_json: bool, shown: bool, batching, cluster, flags) -> None:
    """`generate --ray`: the same lines, in the same format and order, decoded by Ray actors (edgeseq/ray.py)."""
    from edgeseq.cli_output import Output, Progress, write_results
    from edgeseq.ray import translate_lines

    overrides = {k: v for k, v in flags.items() if v is not None}
    out = Output(output)
    try:
        meter = Progress(shown)
        skipped = write_results(
            translate_lines(bundle, lines, None, batching, cluster, overrides), out, as_json, meter, _note
        )
        meter.done()
        if skipped:
            _note(f"{skipped} line(s) skipped (--on-error skip)")
        out.finish()
    except BaseException:
        out.abort()
        raise


def _input_lines(path: str):
    """The lines of --input FILE (or stdin for '-'), read lazily; unreadable files are one-line errors."""
    from edgeseq.runtime.lines import read_lines

    if path == "-":
        yield from read_lines(sys.stdin.buffer, "stdin")
        return
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as e:
        from edgeseq.fsutil import describe_os_error

        raise EdgeseqError(f"cannot read --input {describe_os_error(e, path)}") from None
    with f:
        try:
            yield from read_lines(f, path)
        except OSError as e:  # e.g. a directory, EISDIR on read
            from edgeseq.fsutil import describe_os_error

            raise EdgeseqError(f"cannot read --input {describe_os_error(e, path)}") from None


def _stream(gen, lines, options, as_json: bool, out) -> None:
    """One source after another, each token printed (and flushed) as soon as it is decided."""
    for i, text in enumerate(lines):
        pieces = []
        for event in gen.stream([text], options):
            pieces.append(event.piece)
            if as_json:
                out.write(
                    json.dumps({"source": i, "token": event.token, "piece": event.piece}, ensure_ascii=False) + "\n"
                )
            else:
                out.write(escape_controls(event.piece))
            out.flush()
        out.write(
            json.dumps({"source": i, "done": True, "text": "".join(pieces)}, ensure_ascii=False) + "\n"
            if as_json
            else "\n"
        )


@cli.command()
@click.argument("bundle")
@click.option(
    "--reference",
    required=True,
    help="FILE.py:FUNCTION (your own code), the PyTorch checkpoint or Hugging Face folder, or another bundle.",
)
@click.option("--data", help="Sources, one per line, optionally 'source<TAB>reference' (adds BLEU and chrF).")
@click.option("--pairs", help="source<TAB>expected output from your own pipeline: the bundle's text must equal it.")
@click.option("--json", "json_out", help="Also write the report as JSON to this file ('-' for stdout).")
@click.option("--atol", type=float, help="Graph outputs: absolute tolerance (default by precision).")
@click.option("--rtol", type=float, help="Graph and step outputs: tolerance relative to the output's scale.")
@click.option("--step-atol", type=float, help="Teacher-forced logits: absolute tolerance.")
@click.option("--min-step-agreement", type=float, help="Required fraction of steps with the same argmax.")
@click.option("--min-exact-match", type=float, help="Required fraction of identical sequences.")
@click.option("--max-bleu-drop", type=float, help="With references: allowed BLEU drop.")
@click.option("--min-text-match", type=float, help="Required fraction of texts equal to your pipeline's.")
@click.option("--no-record", is_flag=True, help="Do not write the result into the bundle's manifest.")
def validate(
    bundle: str,
    reference: str,
    data: str | None,
    pairs: str | None,
    json_out: str | None,
    no_record: bool,
    **overrides,
) -> None:
    """Check BUNDLE against REFERENCE at graph, step, sequence and text level. Exit 1 on a failed check."""
    from dataclasses import replace

    from edgeseq.export.parity import PRECISION_THRESHOLDS
    from edgeseq.export.validate import precision_of, read_pairs, validate_bundle
    from edgeseq.runtime import load_bundle

    if json_out and json_out != "-":
        check_output_file(json_out, "--json", _input_paths(bundle, reference, data, pairs))
    for name, value in overrides.items():
        if value is not None and not (value >= 0 and value == value and value != float("inf")):
            raise click.BadParameter(
                f"must be a finite number >= 0, got {value}", param_hint=f"--{name.replace('_', '-')}"
            )
    if data and pairs:
        raise OptionsError("give --data or --pairs, not both (--pairs carries its sources)")
    texts, references = read_pairs(data) if data else (None, None)
    expected = None
    if pairs:
        texts, expected = read_pairs(pairs)
        if expected is None:
            raise EdgeseqError(f"--pairs {pairs}: every line needs source<TAB>expected output")
    base = PRECISION_THRESHOLDS[precision_of(load_bundle(bundle, verify_checksums=False).manifest)]
    thresholds = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    report = validate_bundle(
        bundle,
        reference,
        texts,
        references,
        thresholds,
        record=not no_record,
        expected=expected,
        expected_name=f"pairs {pairs}",
    )
    if json_out == "-":
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(report.table())
        if json_out:
            write_file_whole(json_out, json.dumps(report.to_json(), indent=2) + "\n")
    if not report.ok:
        sys.exit(1)


def _input_paths(*values: str | None) -> list[str]:
    """The paths among a command's arguments (a FILE.py:FUNCTION reference counts by its file)."""
    out = []
    for v in values:
        if not v or v == "-":
            continue
        path = v.rpartition(":")[0] if ":" in v and not Path(v).exists() else v
        if path and Path(path).exists():
            out.append(path)
    return out


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
@click.option(
    "--budget", default=0.5, show_default=True, type=FiniteRange(0, 100), help="--auto: allowed exact-match drop."
)
@click.option("--data", help="--auto: sources (optionally source<TAB>reference) to measure quality on.")
@click.option("--force", is_flag=True, help="Replace an existing bundle at --out.")
@click.option("--no-generate-graph", is_flag=True, help="Leave out generate.onnx (the whole loop as one graph).")
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
    no_generate_graph: bool,
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
            raise OptionsError("--auto needs --data FILE (or --calibration FILE) to measure quality on")
        texts, references = read_pairs(data) if data else (calib, None)
        inputs = _input_paths(calibration, data)
        best, trials = auto_quantize(
            Path(bundle), Path(out), texts, references, budget, calib, force, progress=note, inputs=inputs
        )
        click.echo(trials_table(trials, best))
        if best is None:
            raise EdgeseqError(f"no recipe stays within the budget of {budget} points; nothing written")
        click.echo(f"wrote {shown(out)} ({best.recipe.name})")
        return
    if recipe_file and (mode or enc or att or dec):
        raise OptionsError("give either --recipe FILE or --mode/--encoder/--attention/--decoder, not both")
    if recipe_file:
        recipe = Recipe.load(recipe_file)
    elif mode or enc or att or dec:
        recipe = Recipe(enc or mode or "fp32", att or mode or "fp32", dec or mode or "fp32")
    else:
        raise OptionsError(
            "say how to quantize: --mode MODE, per-graph --encoder/--attention/--decoder, --recipe or --auto"
        )
    inputs = _input_paths(calibration, recipe_file)
    path = quantize_bundle(bundle, out, recipe, calib, force, note, inputs, generate_graph=not no_generate_graph)
    size = sum(f.stat().st_size for f in path.iterdir())
    before = sum(f.stat().st_size for f in Path(bundle).iterdir())
    click.echo(
        f"wrote {shown(path)} ({recipe.name}): {size / 1e6:.2f} MB, {size / before:.0%} of {before / 1e6:.2f} MB"
    )
    click.echo(f"check it: edgeseq validate {shown(path)} --reference {shown(bundle)} --data SOURCES")


from edgeseq.cli_tools import bench, demo, info  # noqa: E402 - the group exists first

for _command in (info, bench, demo):
    cli.add_command(_command)


# Optional dependencies, and the extra that brings each: the base install is the runtime alone.
EXTRAS = {
    **dict.fromkeys(("torch", "onnx", "onnxsim", "onnxscript", "safetensors", "tqdm", "sacrebleu"), "export"),
    "transformers": "hf",
    "ray": "ray",
    **dict.fromkeys(("tokenizers", "sentencepiece"), "text"),
}


def one_line(message: str) -> str:
    """A message as one line: the first line of a multi-line one (e.g. an exporter's log), trimmed."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    first = lines[0] if lines else "(no message)"
    return first if len(lines) <= 1 else f"{first} (and {len(lines) - 1} more lines)"


def _terminated(signum, frame) -> None:
    """SIGTERM unwinds like Ctrl-C, so partial files and directories are removed on the way out."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and a non-zero exit status."""
    import signal

    signal.signal(signal.SIGTERM, _terminated)
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
        click.echo(f"edgeseq: error: {escape_controls(one_line(str(e)))}", err=True)
        sys.exit(e.exit_code)
    except OSError as e:  # the filesystem refused something (disk full, read-only, a special path)
        from edgeseq.fsutil import describe_os_error

        click.echo(f"edgeseq: error: {describe_os_error(e, e.filename or '')}", err=True)
        sys.exit(1)
    except MemoryError:
        click.echo("edgeseq: error: out of memory (try a smaller --batch-tokens or fewer threads)", err=True)
        sys.exit(1)
    except RecursionError:
        click.echo("edgeseq: error: input nested too deeply", err=True)
        sys.exit(1)
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
