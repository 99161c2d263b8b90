"""Decoding speed, side by side: edgeseq against PyTorch eager, CTranslate2 and Optimum (issue 7).

    .venv/bin/python benchmarks/speed.py [--work DIR] [--threads 2] [--optimum-python PATH] [--workload NAME]
        [--rounds 3] [--file-rounds 1] [--json FILE]

Models: a random-weight Marian model shaped like opus-mt-en-de (d_model 512, 6+6 layers, 8 heads, FFN 2048,
vocabulary 58101), and the demo's attention-LSTM (`edgeseq demo`, trained once into the work folder).
Workloads (exactly `tokens` generated per sentence: </s> is forbidden until then, so random weights decode
as far as trained ones):

    marian-greedy   Marian, batch 1, greedy, a 24-token source, 64 tokens
    marian-beam     Marian, batch 16, beam 4, 24-token sources, 64 tokens
    lstm-greedy     demo attention-LSTM, batch 1, greedy, a 24-token source, 64 tokens
    file-greedy     a file of 10,000 sentences of 4-60 tokens (mixed, shuffled), a small Marian (d_model 256,
                    3+3 layers, vocabulary 8000), greedy, 32 tokens each, the whole process: `edgeseq generate
                    --input F --output O` against CTranslate2 `translate_batch` over the same list with its
                    own batching (batch_type="tokens", --ct2-batch-tokens), text read and written by both;
                    edgeseq with its default for a file (--threads batches at once on one thread each),
                    CTranslate2 with its default (one batch on --threads threads) and with the same
                    arrangement as edgeseq's (inter_threads --threads, intra_threads 1: "inter")
    file-beam       the same file, beam 4

Engines: edgeseq fp32 and dynamic-int8 (the runtime: numpy + onnxruntime), PyTorch eager (`generate()` for
Marian, the model's own greedy loop for the LSTM), CTranslate2 float32 / int8 when it is installed, Optimum
ORTModelForSeq2SeqLM with --optimum-python (an interpreter where optimum-onnx is installed: it needs
transformers < 4.58). CTranslate2 and Optimum are benchmark-only dependencies and serve only the Hugging Face
model. Every engine runs in its own process (peak RSS is its own) with the same thread count.

Every engine is timed the same way from outside: the whole call for `tokens` tokens (p50/p95 over repeats;
tokens/s from the median), the call for 1 token (first-token latency: encoder, attention, one step), and
the steady step time (full - first) / (tokens - 1). The floor is the bytes of weights one decoder step reads
divided by the read bandwidth measured with the same thread count.

Engines run in rounds, in turn (benchmarks/rounds.py): --rounds (3) for the in-memory workloads, --file-rounds
(1: each file engine takes 1-2 minutes) for the file workloads. An engine's figures are its medians over the
rounds; a ratio is taken within each round and given as the median with its range, so a slow phase of the
machine during one engine's run does not decide it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from marian_model import SMALL, make_model
from rounds import combined, in_rounds
from speed_report import file_report, markdown, report
from workloads import FILE_LINES, FILE_TOKENS, FILE_WORKLOADS, NEW_TOKENS, SOURCE_LEN, WORKLOADS


def sources(workload: str, vocab_ids: tuple[int, int] = (2, 28), eos: int = 0) -> list[list[int]]:
    """The workload's source id lists (random ids from the spm pieces' range, </s> last)."""
    _, batch, _ = WORKLOADS[workload]
    rng = np.random.default_rng(0)
    return [[*map(int, rng.integers(*vocab_ids, size=SOURCE_LEN - 1)), eos] for _ in range(batch)]


def measure(run, repeats: int, min_seconds: float = 1.0) -> dict:
    """Time run(tokens) from outside: full calls (p50/p95), 1-token calls (first token), the steady step."""
    run(NEW_TOKENS)  # warm-up: allocations, lazy initialisation
    full: list[float] = []
    start = time.perf_counter()
    while len(full) < repeats or (time.perf_counter() - start < min_seconds and len(full) < 200):
        t = time.perf_counter()
        run(NEW_TOKENS)
        full.append(time.perf_counter() - t)
    first = []
    for _ in range(max(3, min(len(full), 20))):
        t = time.perf_counter()
        run(1)
        first.append(time.perf_counter() - t)
    p50, p95 = np.percentile(full, [50, 95])
    first_s = statistics.median(first)
    return {
        "p50_ms": 1000 * p50,
        "p95_ms": 1000 * p95,
        "first_ms": 1000 * first_s,
        "step_ms": 1000 * (p50 - first_s) / (NEW_TOKENS - 1),
        "seconds": p50,
        "runs": len(full),
    }


def engine_edgeseq(work: Path, threads: int, workload: str, bundle: str, engine: str = "loop") -> dict:
    """The runtime: the Python loop over the step graph, or (engine "graph") the bundle's generate.onnx."""
    from edgeseq.runtime import Generator
    from edgeseq.runtime.options import DecodingOptions

    t = time.perf_counter()
    gen = Generator(work / bundle, threads=threads, engine=engine)
    load = time.perf_counter() - t
    _, batch, beam = WORKLOADS[workload]
    eos = gen.bundle.manifest.special_tokens["eos"]
    vocab = (4, gen.bundle.manifest.source_vocab_size) if workload.startswith("lstm") else (2, 28)
    src = sources(workload, vocab, eos)

    def run(n):
        gen.generate_ids(src, DecodingOptions(max_new_tokens=n, min_new_tokens=n, beam_size=beam))

    return {**measure(run, 10), "load_s": load, "bytes": sum(f.stat().st_size for f in (work / bundle).iterdir())}


def engine_pytorch(work: Path, threads: int, workload: str) -> dict:
    import torch

    torch.set_num_threads(threads)
    _, batch, beam = WORKLOADS[workload]
    if workload.startswith("lstm"):
        from edgeseq.export import load_checkpoint
        from edgeseq.runtime.batching import pad_batch

        t = time.perf_counter()
        model = load_checkpoint(work / "demo" / "dates.safetensors").model.eval()
        load = time.perf_counter() - t
        src = sources(workload, (4, model.cfg.src_vocab_size), model.cfg.eos_id)
        ids, mask = (torch.from_numpy(a) for a in pad_batch(src, model.cfg.pad_id))

        def run(n):
            model.greedy(ids, mask, n, n)

        size = (work / "demo" / "dates.safetensors").stat().st_size
    else:
        from transformers import MarianMTModel

        t = time.perf_counter()
        model = MarianMTModel.from_pretrained(work / "hf").eval()
        load = time.perf_counter() - t
        ids = torch.tensor(sources(workload))

        def run(n):
            with torch.no_grad():
                model.generate(input_ids=ids, num_beams=beam, do_sample=False, max_new_tokens=n, min_new_tokens=n)

        size = (work / "hf" / "model.safetensors").stat().st_size
    return {**measure(run, 5), "load_s": load, "bytes": size}


def engine_ctranslate2(work: Path, threads: int, workload: str, compute_type: str) -> dict:
    import ctranslate2

    model_dir = work / f"ct2-{compute_type}"  # (converted by engines_for, in the parent process)
    t = time.perf_counter()
    translator = ctranslate2.Translator(
        str(model_dir), device="cpu", intra_threads=threads, inter_threads=1, compute_type=compute_type
    )
    load = time.perf_counter() - t
    vocab = {v: k for k, v in json.loads((work / "hf" / "vocab.json").read_text()).items()}
    batch = [[vocab[i] for i in src[:-1]] for src in sources(workload)]
    beam = WORKLOADS[workload][2]

    def run(n):
        translator.translate_batch(batch, beam_size=beam, max_decoding_length=n, min_decoding_length=n)

    return {**measure(run, 5), "load_s": load, "bytes": sum(f.stat().st_size for f in model_dir.iterdir())}


def engine_optimum(work: Path, threads: int, workload: str) -> dict:
    import onnxruntime
    import torch
    from optimum.onnxruntime import ORTModelForSeq2SeqLM

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    out = work / "optimum"
    if not out.exists():
        ORTModelForSeq2SeqLM.from_pretrained(work / "hf", export=True).save_pretrained(out)
    t = time.perf_counter()
    model = ORTModelForSeq2SeqLM.from_pretrained(out, session_options=options)
    load = time.perf_counter() - t
    ids = torch.tensor(sources(workload))
    beam = WORKLOADS[workload][2]

    def run(n):
        model.generate(input_ids=ids, num_beams=beam, do_sample=False, max_new_tokens=n, min_new_tokens=n)

    return {**measure(run, 3), "load_s": load, "bytes": sum(f.stat().st_size for f in out.iterdir() if f.is_file())}


def file_sentences(work: Path, lines: int) -> Path:
    """`lines` sentences of 4-60 source tokens each (uniform, shuffled), words of the small Marian's corpus."""
    import sentencepiece as spm

    path = work / f"file-{lines}.txt"
    if path.exists():
        return path
    sp = spm.SentencePieceProcessor(model_file=str(work / "hf-small" / "source.spm"))
    words = sorted(set((work / "hf-small" / "corpus.txt").read_text().split()))
    rng = np.random.default_rng(1)
    out = []
    for target in rng.integers(4, 61, size=lines):
        sentence: list[str] = []
        while len(sp.encode(" ".join(sentence))) < target:
            sentence.append(str(rng.choice(words)))
        out.append(" ".join(sentence))
    path.write_text("\n".join(out) + "\n")
    return path


def engine_edgeseq_file(work: Path, threads: int, workload: str, bundle: str, lines: int, ct2_tokens: int) -> dict:
    """`edgeseq generate --input F --output O`, the CLI itself, in this process (its peak RSS is the CLI's)."""
    from edgeseq.cli import main as cli

    beam = FILE_WORKLOADS[workload]
    source, target = file_sentences(work, lines), work / f"out-{bundle}-{workload}.txt"
    args = ["generate", str(work / bundle), "--input", str(source), "--output", str(target), "--beam", str(beam)]
    args += ["--max-new-tokens", str(FILE_TOKENS), "--min-new-tokens", str(FILE_TOKENS), "--threads", str(threads)]
    t = time.perf_counter()
    try:
        cli(args)
    except SystemExit as e:
        if e.code:
            raise
    return {"seconds": time.perf_counter() - t, "output": str(target)}


def engine_ctranslate2_file(
    work: Path, threads: int, workload: str, compute_type: str, parallel: str, lines: int, ct2_tokens: int
) -> dict:
    """CTranslate2 over the same file: read, tokenize (the same SentencePiece model), translate_batch with its
    own token batching, detokenize, write. `parallel` "intra": one batch at a time on `threads` threads (its
    default); "inter": `threads` batches at once on one thread each (inter_threads: what edgeseq's --workers
    does)."""
    import ctranslate2
    import sentencepiece as spm

    t = time.perf_counter()
    model_dir = work / f"ct2-small-{compute_type}"
    inter = threads if parallel == "inter" else 1
    translator = ctranslate2.Translator(
        str(model_dir), device="cpu", intra_threads=threads // inter, inter_threads=inter, compute_type=compute_type
    )
    sp = spm.SentencePieceProcessor(model_file=str(work / "hf-small" / "source.spm"))
    text = file_sentences(work, lines).read_text().splitlines()
    batch = [sp.encode(line, out_type=str) for line in text]  # (CTranslate2 appends </s> itself)
    results = translator.translate_batch(
        batch,
        beam_size=FILE_WORKLOADS[workload],
        max_batch_size=ct2_tokens,
        batch_type="tokens",
        max_decoding_length=FILE_TOKENS,
        min_decoding_length=FILE_TOKENS,
    )
    target = work / f"out-ct2-{compute_type}-{parallel}-{workload}.txt"
    # as the Marian tokenizer detokenizes (special pieces left out, pieces joined, word marks to spaces)
    special = {"<unk>", "<pad>", "</s>"}
    target.write_text(
        "".join(
            "".join(p for p in r.hypotheses[0] if p not in special).replace("\u2581", " ").strip() + "\n"
            for r in results
        )
    )
    return {"seconds": time.perf_counter() - t, "output": str(target)}


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM; unlike ru_maxrss it does not carry the parent's over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def read_bandwidth_gbs(threads: int) -> float:
    """Memory read bandwidth with `threads` threads, each taking the max of its share of 512 MB (numpy frees
    the GIL; max is the cheapest full read it has). The machine is shared: main() measures it around each
    edgeseq engine's run and keeps the best, so the floor reflects what that run could have had."""
    parts = [np.ones(128 * 1024 * 1024 // threads, dtype=np.float32) for _ in range(threads)]
    best = float("inf")
    for _ in range(5):
        workers = [threading.Thread(target=np.max, args=(p,)) for p in parts]
        t = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = min(best, time.perf_counter() - t)
    return sum(p.nbytes for p in parts) / best / 1e9


def engines_for(workload: str, work: Path, optimum_python: str | None) -> list[tuple[str, str, str]]:
    """(label, engine spec, interpreter) for every engine that can run `workload` here."""
    if workload.startswith("lstm"):
        return [
            ("edgeseq fp32", "edgeseq:demo/bundle", sys.executable),
            ("edgeseq graph fp32", "edgeseq:demo/bundle:graph", sys.executable),
            ("pytorch eager", "pytorch", sys.executable),
        ]
    engines = [
        ("edgeseq fp32", "edgeseq:edgeseq-fp32", sys.executable),
        ("edgeseq int8", "edgeseq:edgeseq-int8", sys.executable),
        ("edgeseq graph fp32", "edgeseq:edgeseq-fp32:graph", sys.executable),
        ("edgeseq graph int8", "edgeseq:edgeseq-int8:graph", sys.executable),
        ("pytorch eager", "pytorch", sys.executable),
    ]
    try:
        for compute_type in ("float32", "int8"):
            ct2_model(work / "hf", work / f"ct2-{compute_type}", compute_type)
        engines += [
            ("ctranslate2 fp32", "ctranslate2:float32", sys.executable),
            ("ctranslate2 int8", "ctranslate2:int8", sys.executable),
        ]
    except ImportError:
        print("ctranslate2 is not installed: skipped", file=sys.stderr)
    if optimum_python:
        engines.append(("optimum fp32", "optimum", optimum_python))
    return engines


def file_engines(work: Path) -> list[tuple[str, str]]:
    engines = [("edgeseq fp32", "edgeseq_file:edgeseq-small-fp32"), ("edgeseq int8", "edgeseq_file:edgeseq-small-int8")]
    try:
        for compute_type, label in (("float32", "fp32"), ("int8", "int8")):
            ct2_model(work / "hf-small", work / f"ct2-small-{compute_type}", compute_type)
            engines.append((f"ctranslate2 {label}", f"ctranslate2_file:{compute_type}:intra"))
            engines.append((f"ctranslate2 {label} inter", f"ctranslate2_file:{compute_type}:inter"))
    except ImportError:
        print("ctranslate2 is not installed: skipped", file=sys.stderr)
    return engines


def ct2_model(hf: Path, model_dir: Path, compute_type: str) -> None:
    """Convert the HF folder for CTranslate2 once, here: never in an engine's process, whose peak RSS would
    then be the conversion's (a first run measured CTranslate2 int8 at 799 MB instead of ~345)."""
    import ctranslate2

    if not model_dir.exists():
        ctranslate2.converters.TransformersConverter(str(hf)).convert(str(model_dir), quantization=compute_type)


def make_bundles(hf: Path, fp32: Path, int8: Path) -> None:
    """`edgeseq export` the HF folder and `edgeseq quantize` it, once."""
    for bundle, cmd in (
        (fp32, ["export", str(hf), "--out", str(fp32), "--max-new-tokens", "8"]),
        (int8, ["quantize", str(fp32), "--out", str(int8), "--mode", "dynamic-int8"]),
    ):
        if not bundle.exists():
            print(f"making {bundle.name} ...", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "edgeseq", *cmd], check=True, stdout=subprocess.DEVNULL)


def prepare(work: Path, workloads: list[str]) -> None:
    """Build what the workloads need, once: the Marian folders and their bundles, the trained demo model."""
    if any(w.startswith("marian") for w in workloads):
        if not (work / "hf" / "model.safetensors").exists():
            print("building the random opus-mt-en-de-shaped Marian model ...", file=sys.stderr)
            make_model(work / "hf")
        make_bundles(work / "hf", work / "edgeseq-fp32", work / "edgeseq-int8")
    if any(w in FILE_WORKLOADS for w in workloads):
        if not (work / "hf-small" / "model.safetensors").exists():
            print("building the small random Marian model ...", file=sys.stderr)
            make_model(work / "hf-small", **SMALL)
        make_bundles(work / "hf-small", work / "edgeseq-small-fp32", work / "edgeseq-small-int8")
    if any(w.startswith("lstm") for w in workloads) and not (work / "demo").exists():
        print("training the demo attention-LSTM (edgeseq demo) ...", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "edgeseq", "demo", "--out", str(work / "demo")],
            check=True,
            stdout=subprocess.DEVNULL,
        )


def run_engine(args, workload: str, label: str, engine: str, python: str) -> dict | None:
    """One engine of an in-memory workload in a process of its own; its figures, or None if it failed."""
    cmd = [python, __file__, "--work", args.work, "--threads", str(args.threads), "--workload", workload]
    around = read_bandwidth_gbs(args.threads) if label.startswith("edgeseq") else 0.0
    out = subprocess.run([*cmd, "--engine", engine], capture_output=True, text=True)
    if label.startswith("edgeseq"):
        around = max(around, read_bandwidth_gbs(args.threads))
    if out.returncode != 0:
        err = out.stderr.strip().splitlines()
        print(f"{workload} {label}: failed: {err[-1] if err else out.returncode}", file=sys.stderr)
        return None
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if around:
        result["bandwidth_gbs"] = around
    return result


def run_file_engine(args, workload: str, label: str, engines: dict[str, str]) -> dict | None:
    """One engine of a file workload, the whole process timed; its figures, or None if it failed."""
    cmd = [sys.executable, __file__, "--work", args.work, "--threads", str(args.threads), "--workload", workload]
    cmd += ["--engine", engines[label], "--lines", str(args.lines), "--ct2-batch-tokens", str(args.ct2_batch_tokens)]
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t  # the whole process: start-up, loading, reading, writing
    if out.returncode != 0:
        err = out.stderr.strip().splitlines()
        print(f"{workload} {label}: failed: {err[-1] if err else out.returncode}", file=sys.stderr)
        return None
    result = json.loads(out.stdout.strip().splitlines()[-1])
    lines_per_s = args.lines / seconds
    return {**result, "seconds": seconds, "lines_per_s": lines_per_s, "tokens_per_s": lines_per_s * FILE_TOKENS}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/edgeseq-speed-bench")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--optimum-python", help="an interpreter with optimum-onnx installed")
    p.add_argument("--workload", choices=[*WORKLOADS, *FILE_WORKLOADS, "all"], default="all")
    p.add_argument("--lines", type=int, default=FILE_LINES, help="sentences in the file workloads' file")
    p.add_argument("--ct2-batch-tokens", type=int, default=2048, help="CTranslate2's max_batch_size (tokens)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the in-memory workloads (engines in turn)")
    p.add_argument("--file-rounds", type=int, default=1, help="rounds of the file workloads (each ~1-2 min an engine)")
    p.add_argument("--json", help="also write every figure to this file")
    p.add_argument("--markdown", metavar="JSON", help="print the figures of a --json file as Markdown, and exit")
    p.add_argument("--engine", help=argparse.SUPPRESS)
    args = p.parse_args()
    work = Path(args.work)
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return
    if args.engine:  # one engine in this process
        name, *rest = args.engine.split(":")
        if args.workload in FILE_WORKLOADS:
            fn = {"edgeseq_file": engine_edgeseq_file, "ctranslate2_file": engine_ctranslate2_file}[name]
            result = fn(work, args.threads, args.workload, *rest, args.lines, args.ct2_batch_tokens)
            result.update(peak_rss_mb=peak_rss_mb())
            print(json.dumps(result))
            return
        fn = {
            "edgeseq": engine_edgeseq,
            "pytorch": engine_pytorch,
            "ctranslate2": engine_ctranslate2,
            "optimum": engine_optimum,
        }[name]
        result = fn(work, args.threads, args.workload, *rest)
        _, batch, _ = WORKLOADS[args.workload]
        result.update(peak_rss_mb=peak_rss_mb(), tokens_per_s=batch * NEW_TOKENS / result["seconds"])
        if name == "edgeseq":
            result["bundle"] = rest[0]
        print(json.dumps(result))
        return
    workloads = [*WORKLOADS, *FILE_WORKLOADS] if args.workload == "all" else [args.workload]
    prepare(work, workloads)
    bandwidth = read_bandwidth_gbs(args.threads)
    everything = {}
    for workload in workloads:
        if workload in FILE_WORKLOADS:
            file_sentences(work, args.lines)
            engines = dict(file_engines(work))
            runs = in_rounds(
                list(engines), args.file_rounds, lambda label, w=workload, e=engines: run_file_engine(args, w, label, e)
            )
            results = {label: combined(r) for label, r in runs.items()}
            file_report(workload, results, args.threads, args.lines)
        else:
            engines = {
                label: (engine, python) for label, engine, python in engines_for(workload, work, args.optimum_python)
            }
            runs = in_rounds(
                list(engines), args.rounds, lambda label, w=workload, e=engines: run_engine(args, w, label, *e[label])
            )
            results = {label: combined(r) for label, r in runs.items()}
            report(workload, results, args.threads, bandwidth, work)
        everything[workload] = results
    if args.json:
        Path(args.json).write_text(json.dumps({"bandwidth_gbs": bandwidth, **everything}, indent=2) + "\n")


if __name__ == "__main__":
    main()
