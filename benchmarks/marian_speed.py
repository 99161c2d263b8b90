"""Benchmark: a random-weight Marian model shaped like opus-mt-en-de, on every engine, side by side.

    .venv/bin/python benchmarks/marian_speed.py [--work DIR] [--threads 2] [--optimum-python PATH]

Workload (issue 7): batch 1, greedy, a 24-token source, exactly 64 generated tokens, 2 threads. Engines:
edgeseq fp32 and dynamic-int8, PyTorch eager `generate()`, CTranslate2 float32 and int8 (if installed),
Optimum ORTModelForSeq2SeqLM (with --optimum-python, an interpreter where optimum-onnx is installed: it
needs transformers < 4.58). Each engine runs in its own process, so peak RSS is its own. Prints tokens/s,
first-token latency, steady step time next to the memory-bandwidth floor, peak RSS, load time and size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

VOCAB, D, LAYERS, HEADS, FFN = 58101, 512, 6, 8, 2048
SOURCE_LEN, NEW_TOKENS = 24, 64


def make_model(folder: Path) -> None:
    """An HF Marian folder with opus-mt-en-de's shape and random weights (tokenizer: tiny spm, full vocab)."""
    import sentencepiece as spm
    import torch
    from transformers import GenerationConfig, MarianConfig, MarianMTModel, MarianTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog\nhello world\n" * 20)
    spm.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"),
        model_prefix=str(folder / "spm"),
        vocab_size=29,
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(folder / "spm.model"))
    vocab = {"</s>": 0, "<unk>": 1}
    for i in range(sp.get_piece_size()):
        vocab.setdefault(sp.id_to_piece(i), len(vocab))
    while len(vocab) < VOCAB - 1:
        vocab[f"\u2581w{len(vocab)}"] = len(vocab)
    vocab["<pad>"] = VOCAB - 1
    (folder / "vocab.json").write_text(json.dumps(vocab))
    for name in ("source.spm", "target.spm"):
        (folder / name).write_bytes((folder / "spm.model").read_bytes())
    MarianTokenizer(str(folder / "source.spm"), str(folder / "target.spm"), str(folder / "vocab.json")).save_pretrained(
        folder
    )
    config = MarianConfig(
        vocab_size=VOCAB,
        d_model=D,
        encoder_layers=LAYERS,
        decoder_layers=LAYERS,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_ffn_dim=FFN,
        decoder_ffn_dim=FFN,
        max_position_embeddings=512,
        pad_token_id=VOCAB - 1,
        eos_token_id=0,
        decoder_start_token_id=VOCAB - 1,
        activation_function="swish",
    )
    torch.manual_seed(0)
    model = MarianMTModel(config).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=VOCAB - 1, eos_token_id=0, pad_token_id=VOCAB - 1, max_length=512
    )
    model.save_pretrained(folder)


def source_ids() -> list[int]:
    rng = np.random.default_rng(0)
    return [*map(int, rng.integers(2, 28, size=SOURCE_LEN - 1)), 0]


def timed(fn, repeats=5) -> tuple[float, list]:
    fn()
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs), runs


def engine_edgeseq(work: Path, threads: int, bundle: str) -> dict:
    from edgeseq.bench import bench_decode
    from edgeseq.runtime import load_bundle
    from edgeseq.runtime.generator import OrtBackend

    t = time.perf_counter()
    b = load_bundle(work / bundle)
    backend = OrtBackend(b, threads=threads)
    load = time.perf_counter() - t
    r = bench_decode(bundle, backend, b.manifest.decoder, [source_ids()], NEW_TOKENS, repeats=5)
    size = sum(f.stat().st_size for f in (work / bundle).iterdir())
    return {
        "tokens_per_s": r.tokens_per_s,
        "first_token_ms": r.context_ms + r.step_ms[0],
        "step_ms": statistics.median(r.step_ms[8:]),
        "load_s": load,
        "bytes": size,
    }


def engine_pytorch(work: Path, threads: int) -> dict:
    import torch
    from transformers import MarianMTModel

    torch.set_num_threads(threads)
    t = time.perf_counter()
    model = MarianMTModel.from_pretrained(work / "hf").eval()
    load = time.perf_counter() - t
    ids = torch.tensor([source_ids()])

    def run():
        with torch.no_grad():
            model.generate(
                input_ids=ids, num_beams=1, do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS
            )

    seconds, _ = timed(run, 3)
    return {
        "tokens_per_s": NEW_TOKENS / seconds,
        "load_s": load,
        "bytes": (work / "hf" / "model.safetensors").stat().st_size,
    }


def engine_ctranslate2(work: Path, threads: int, compute_type: str) -> dict:
    import ctranslate2

    model_dir = work / f"ct2-{compute_type}"
    if not model_dir.exists():
        ctranslate2.converters.TransformersConverter(str(work / "hf")).convert(
            str(model_dir), quantization=compute_type
        )
    t = time.perf_counter()
    translator = ctranslate2.Translator(
        str(model_dir), device="cpu", intra_threads=threads, inter_threads=1, compute_type=compute_type
    )
    load = time.perf_counter() - t
    vocab = {v: k for k, v in json.loads((work / "hf" / "vocab.json").read_text()).items()}
    tokens = [vocab[i] for i in source_ids()[:-1]]

    def run():
        translator.translate_batch(
            [tokens], beam_size=1, max_decoding_length=NEW_TOKENS, min_decoding_length=NEW_TOKENS
        )

    seconds, _ = timed(run)
    return {
        "tokens_per_s": NEW_TOKENS / seconds,
        "load_s": load,
        "bytes": sum(f.stat().st_size for f in model_dir.iterdir()),
    }


def engine_optimum(work: Path, threads: int) -> dict:
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
    ids = torch.tensor([source_ids()])

    def run():
        model.generate(input_ids=ids, num_beams=1, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)

    seconds, _ = timed(run, 3)
    return {
        "tokens_per_s": NEW_TOKENS / seconds,
        "load_s": load,
        "bytes": sum(f.stat().st_size for f in out.iterdir() if f.is_file()),
    }


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM; unlike ru_maxrss it does not carry the parent's over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bandwidth_gbs() -> float:
    a = np.ones(64 * 1024 * 1024, dtype=np.float32)  # 256 MB
    b = np.empty_like(a)
    best = min(timed(lambda: np.copyto(b, a), 3)[1])
    return 2 * a.nbytes / best / 1e9  # read + write


def step_weight_bytes(bundle: Path) -> int:
    """Bytes of weights one decoder step reads: its graph's initializers (external data in weights.bin)."""
    import onnx

    model = onnx.load(str(bundle / "decoder_step.onnx"), load_external_data=False)
    total = 0
    for t in model.graph.initializer:
        ext = {e.key: e.value for e in t.external_data}
        total += int(ext["length"]) if "length" in ext else len(t.raw_data)
    return total  # the tied embedding is read whole by the output projection; gathers read a row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/edgeseq-marian-bench")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--optimum-python", help="an interpreter with optimum-onnx installed")
    p.add_argument("--engine", help=argparse.SUPPRESS)
    args = p.parse_args()
    work = Path(args.work)
    if args.engine:
        name, *rest = args.engine.split(":")
        fn = {
            "edgeseq": engine_edgeseq,
            "pytorch": engine_pytorch,
            "ctranslate2": engine_ctranslate2,
            "optimum": engine_optimum,
        }[name]
        result = fn(work, args.threads, *rest)
        result["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(result))
        return
    if not (work / "hf" / "model.safetensors").exists():
        print("building the random opus-mt-en-de-shaped Marian model ...", file=sys.stderr)
        make_model(work / "hf")
    for bundle, cmd in (
        ("edgeseq-fp32", ["export", str(work / "hf"), "--out", str(work / "edgeseq-fp32"), "--max-new-tokens", "8"]),
        (
            "edgeseq-int8",
            ["quantize", str(work / "edgeseq-fp32"), "--out", str(work / "edgeseq-int8"), "--mode", "dynamic-int8"],
        ),
    ):
        if not (work / bundle).exists():
            print(f"making {bundle} ...", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "edgeseq", *cmd], check=True, stdout=subprocess.DEVNULL)
    engines = [
        ("edgeseq fp32", "edgeseq:edgeseq-fp32", sys.executable),
        ("edgeseq int8", "edgeseq:edgeseq-int8", sys.executable),
        ("pytorch eager", "pytorch", sys.executable),
    ]
    try:
        import ctranslate2  # noqa: F401

        engines += [
            ("ctranslate2 fp32", "ctranslate2:float32", sys.executable),
            ("ctranslate2 int8", "ctranslate2:int8", sys.executable),
        ]
    except ImportError:
        print("ctranslate2 is not installed: skipped", file=sys.stderr)
    if args.optimum_python:
        engines.append(("optimum fp32", "optimum", args.optimum_python))
    results = {}
    for label, engine, python in engines:
        out = subprocess.run(
            [python, __file__, "--work", str(work), "--threads", str(args.threads), "--engine", engine],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            print(
                f"{label}: failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}",
                file=sys.stderr,
            )
            continue
        results[label] = json.loads(out.stdout.strip().splitlines()[-1])
    bw = bandwidth_gbs()
    print(
        f"Marian {LAYERS}+{LAYERS}, d_model {D}, vocab {VOCAB}; batch 1, greedy, {SOURCE_LEN}-token source, "
        f"{NEW_TOKENS} tokens, {args.threads} threads; memory bandwidth {bw:.1f} GB/s"
    )
    print(
        f"{'engine':<18}{'tokens/s':>10}{'first ms':>10}{'step ms':>9}{'floor ms':>10}"
        f"{'RSS MB':>8}{'load s':>8}{'MB':>8}"
    )
    for label, r in results.items():
        floor = ""
        if label.startswith("edgeseq"):
            floor = f"{step_weight_bytes(work / ('edgeseq-' + label.split()[1])) / bw / 1e6:.2f}"
        first = f"{r['first_token_ms']:.1f}" if "first_token_ms" in r else "-"
        step = f"{r['step_ms']:.2f}" if "step_ms" in r else "-"
        print(
            f"{label:<18}{r['tokens_per_s']:>10.1f}{first:>10}{step:>9}{floor:>10}{r['peak_rss_mb']:>8.0f}"
            f"{r['load_s']:>8.2f}{r['bytes'] / 1e6:>8.1f}"
        )
    base = {k: v["tokens_per_s"] for k, v in results.items()}
    for a, b in (
        ("edgeseq fp32", "ctranslate2 fp32"),
        ("edgeseq int8", "ctranslate2 int8"),
        ("edgeseq fp32", "optimum fp32"),
        ("edgeseq fp32", "pytorch eager"),
    ):
        if a in base and b in base:
            print(f"{a} / {b}: {base[a] / base[b]:.2f}x")


if __name__ == "__main__":
    main()
