"""Small-model latency: one short source per call, where per-call overhead is most of the time (issue 14).

    .venv/bin/python benchmarks/latency.py [--work DIR] [--threads 2] [--json FILE]

Models: the demo's attention-LSTM (`edgeseq demo`, a date, 10 tokens) and a 1-layer GRU encoder-decoder
(256 units, no attention, random weights, shaped like g2p_en's: a word of letters in, 8 phonemes out).
For each: the whole call (`generate_ids`, and `generate` from text; and through generate.onnx, the whole
loop in one ONNX Runtime call, `engine="graph"`, where the bundle has it), the encoder call (the runtime's
encoder + attention for one source) and the steady step ((call(N) - call(1)) / (N - 1)), each the median
over many calls, against its floor: onnxruntime's own `InferenceSession.run` on the same graph with the
same feeds (what a loop with no work of its own would pay).

Runs on whatever `edgeseq` is importable, so the same script measures an older checkout (PYTHONPATH).
(speed.py times the demo LSTM over 64 tokens; this script is the one-short-source view of it.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODELS = {  # name: (bundle folder in the work dir, source text, tokens generated)
    "lstm-word": ("demo/bundle", "24 Nov 2026", 10),
    "gru-word": ("gru-word", "pronunciation", 8),
}
LETTERS = "abcdefghijklmnopqrstuvwxyz'"
PHONEMES = (
    "AA0 AA1 AA2 AE0 AE1 AE2 AH0 AH1 AH2 AO0 AO1 AO2 AW0 AW1 AW2 AY0 AY1 AY2 B CH D DH EH0 EH1 EH2 ER0 ER1 ER2 EY0 "
    "EY1 EY2 F G HH IH0 IH1 IH2 IY0 IY1 IY2 JH K L M N NG OW0 OW1 OW2 OY0 OY1 OY2 P R S SH T TH UH0 UH1 UH2 UW UW0 "
    "UW1 UW2 V W Y Z ZH"
)


def make_gru(folder: Path) -> None:
    """A 1-layer GRU encoder-decoder, 256 units, no attention, random weights, exported to `folder`."""
    import torch

    from edgeseq.export import ExportOptions, export_model
    from edgeseq.models.rnn import RNNConfig, RNNSeq2Seq
    from edgeseq.vocab import Vocab

    sv, tv = Vocab.build([LETTERS]), Vocab.build([PHONEMES], level="word")
    torch.manual_seed(0)
    cfg = RNNConfig(len(sv), len(tv), cell="gru", attention="none", emb_dim=256, hidden=256, layers=1)
    model = RNNSeq2Seq(cfg).eval()
    export_model(model, folder, source_vocab=sv, target_vocab=tv, options=ExportOptions(max_new_tokens=32))


def prepare(work: Path) -> None:
    if not (work / "demo").exists():
        print("training the demo attention-LSTM (edgeseq demo) ...", file=sys.stderr)
        cmd = [sys.executable, "-m", "edgeseq", "demo", "--out", str(work / "demo")]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    if not (work / "gru-word").exists():
        make_gru(work / "gru-word")


def median_us(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e6 * statistics.median(times)


def measure(work: Path, name: str, threads: int, runs: int = 2000) -> dict:
    """Every figure of one model, in this process."""
    from edgeseq.runtime import DecodingOptions, Generator

    folder, text, tokens = MODELS[name]
    import inspect

    # the Python loop (the graph engine is measured below); an older checkout has no engines
    loop = {"engine": "loop"} if "engine" in inspect.signature(Generator).parameters else {}
    gen = Generator(work / folder, threads=threads, **loop)
    ids = gen.encode(text)
    full, one = DecodingOptions(max_new_tokens=tokens, min_new_tokens=tokens), DecodingOptions(max_new_tokens=1)
    calls: dict[str, list[dict]] = {graph: [] for graph in gen.backend.sessions}
    for graph, session in gen.backend.sessions.items():  # the feeds each graph gets, for the floors

        def capture(feeds, graph=graph, run=session.run):
            calls[graph].append(dict(feeds))
            return run(feeds)

        session.run = capture
    gen.generate_ids([ids], full)
    for session in gen.backend.sessions.values():
        del session.run  # back to the class's method
    captured = {graph: feeds[min(1, len(feeds) - 1)] for graph, feeds in calls.items()}  # the second step
    context_feeds = captured["encoder"]
    call = median_us(lambda: gen.generate_ids([ids], full), runs)
    first = median_us(lambda: gen.generate_ids([ids], one), runs)
    text_call = median_us(lambda: gen.generate([text], full), runs)
    encoder = median_us(lambda: gen.backend.context(context_feeds), runs)
    floors = {}
    for graph in gen.backend.sessions:
        session = gen.backend.sessions[graph].session
        feeds = {i.name: captured[graph][i.name] for i in session.get_inputs()}
        names = [o.name for o in session.get_outputs()]
        floors[graph] = median_us(lambda s=session._sess, f=feeds, n=names: s.run(n, f, None), runs)
    graph_call = None
    if "generate" in gen.bundle.manifest.graphs:  # the same call through generate.onnx (one session run)
        graph = Generator(work / folder, threads=threads, engine="graph")
        graph_call = median_us(lambda: graph.generate_ids([ids], full), runs)
    return {
        "call_us": call,
        "graph_call_us": graph_call,
        "text_call_us": text_call,
        "first_us": first,
        "step_us": (call - first) / (tokens - 1),
        "encoder_us": encoder,
        "encoder_floor_us": floors["encoder"] + floors.get("attention", 0.0),
        "step_floor_us": floors["decoder_step"],
        "tokens": tokens,
    }


def report(results: dict, baseline: dict | None = None) -> None:
    print(
        f"{'model':<11}{'call us':>9}{'graph us':>10}{'text us':>9}{'encoder us':>12}{'floor':>7}{'step us':>9}"
        f"{'floor':>7}"
    )
    for name, r in results.items():
        graph = f"{r['graph_call_us']:>10.0f}" if r.get("graph_call_us") else f"{'-':>10}"
        print(
            f"{name:<11}{r['call_us']:>9.0f}{graph}{r['text_call_us']:>9.0f}{r['encoder_us']:>12.1f}"
            f"{r['encoder_floor_us']:>7.1f}{r['step_us']:>9.1f}{r['step_floor_us']:>7.1f}"
        )
        if r.get("graph_call_us"):
            print(f"{'':<11}generate.onnx: {r['call_us'] / r['graph_call_us']:.2f}x faster than the Python loop")
        if baseline and name in baseline:
            b = baseline[name]
            print(
                f"{'':<11}vs baseline: call {b['call_us'] / r['call_us']:.2f}x faster, encoder "
                f"{b['encoder_us'] / r['encoder_us']:.2f}x, step {b['step_us'] / r['step_us']:.2f}x"
                + (f"; generate.onnx {b['call_us'] / r['graph_call_us']:.2f}x" if r.get("graph_call_us") else "")
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/edgeseq-speed-bench")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=2000)
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--baseline", help="a --json file of an earlier run: report the speed-up against it")
    args = p.parse_args()
    work = Path(args.work)
    prepare(work)
    results = {name: measure(work, name, args.threads, args.runs) for name in MODELS}
    report(results, json.loads(Path(args.baseline).read_text()) if args.baseline else None)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
