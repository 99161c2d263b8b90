"""speed.py's report: each workload's table and ratios, as text and as Markdown for the README."""

from __future__ import annotations

from pathlib import Path

from rounds import shown
from workloads import FILE_LINES, FILE_TOKENS, FILE_WORKLOADS, NEW_TOKENS, SOURCE_LEN, WORKLOADS


def step_weight_bytes(bundle: Path) -> int:
    """Bytes of weights one decoder step reads: its graph's initializers, gathered tables counted by one row."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(bundle / "decoder_step.onnx"), load_external_data=False)
    gathered = {n.input[0] for n in model.graph.node if n.op_type == "Gather"}
    total = 0
    for t in model.graph.initializer:
        ext = {e.key: e.value for e in t.external_data}
        size = int(ext["length"]) if "length" in ext else numpy_helper.to_array(t).nbytes
        total += size // t.dims[0] if t.name in gathered and t.dims else size
    return total


RATIOS = (
    ("edgeseq fp32", "ctranslate2 fp32"),
    ("edgeseq int8", "ctranslate2 int8"),
    ("edgeseq fp32", "optimum fp32"),
    ("edgeseq fp32", "pytorch eager"),
    ("edgeseq graph fp32", "edgeseq fp32"),  # generate.onnx against the Python loop (issue 15)
    ("edgeseq graph int8", "edgeseq int8"),
    ("edgeseq graph fp32", "ctranslate2 fp32"),
)


def report(workload: str, results: dict, threads: int, bandwidth: float, work: Path) -> None:
    model, batch, beam = WORKLOADS[workload]
    search = "greedy" if beam == 1 else f"beam {beam}"
    print(
        f"\n{workload}: {model}, batch {batch}, {search}, {SOURCE_LEN}-token sources, {NEW_TOKENS} tokens, "
        f"{threads} threads; read bandwidth {bandwidth:.1f} GB/s at the start (each floor uses the best measured "
        "around that engine's run)"
    )
    print(
        f"{'engine':<18}{'tokens/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'first ms':>10}{'step ms':>9}{'floor ms':>10}"
        f"{'RSS MB':>8}{'load s':>8}{'MB':>8}"
    )
    for label, r in results.items():
        floor = "-"
        if label.startswith("edgeseq"):
            r["floor_ms"] = step_weight_bytes(work / r["bundle"]) / r.get("bandwidth_gbs", bandwidth) / 1e6
            floor = f"{r['floor_ms']:.2f}"
        print(
            f"{label:<18}{r['tokens_per_s']:>10.1f}{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}{r['first_ms']:>10.2f}"
            f"{r['step_ms']:>9.3f}{floor:>10}{r['peak_rss_mb']:>8.0f}{r['load_s']:>8.2f}{r['bytes'] / 1e6:>8.1f}"
        )
    for a, b in RATIOS:
        if a in results and b in results:
            ra, rb = results[a], results[b]
            print(f"{a} / {b}: tokens/s {shown(ra, rb, 'tokens_per_s')}, peak RSS {shown(ra, rb, 'peak_rss_mb')}")


FILE_RATIOS = tuple(
    (f"edgeseq {p}", f"ctranslate2 {p}{how}") for p in ("fp32", "int8") for how in ("", " inter")
)  # edgeseq's default (one batch per thread) against CTranslate2's default and its inter_threads


def same_lines(a: str, b: str) -> float:
    """The share of lines two output files have equal."""
    x, y = Path(a).read_text().splitlines(), Path(b).read_text().splitlines()
    return sum(p == q for p, q in zip(x, y)) / max(len(x), len(y), 1)


def file_report(workload: str, results: dict, threads: int, lines: int) -> None:
    print(
        f"\n{workload}: small Marian, a file of {lines} sentences (4-60 tokens), beam {FILE_WORKLOADS[workload]}, "
        f"{FILE_TOKENS} tokens each, whole process, {threads} threads"
    )
    print(f"{'engine':<18}{'tokens/s':>10}{'lines/s':>9}{'seconds':>9}{'RSS MB':>8}")
    for label, r in results.items():
        print(
            f"{label:<18}{r['tokens_per_s']:>10.0f}{r['lines_per_s']:>9.1f}{r['seconds']:>9.2f}{r['peak_rss_mb']:>8.0f}"
        )
    for a, b in FILE_RATIOS:
        if a in results and b in results:
            ra, rb = results[a], results[b]
            same = same_lines(ra["output"], rb["output"])
            print(
                f"{a} / {b}: tokens/s {shown(ra, rb, 'tokens_per_s')}, peak RSS {shown(ra, rb, 'peak_rss_mb')}; "
                f"{100 * same:.1f}% of lines identical"
            )


def markdown(data: dict) -> str:
    """The figures of a --json file as Markdown tables (for the README)."""
    out = []
    for workload, results in data.items():
        if workload == "bandwidth_gbs":
            continue
        if workload in FILE_WORKLOADS:
            out.append(
                f"**{workload}**: small Marian, {FILE_LINES} sentences of 4-60 tokens, beam {FILE_WORKLOADS[workload]},"
                f" {FILE_TOKENS} tokens each, whole process\n"
            )
            out.append("| engine | tokens/s | lines/s | seconds | peak RSS MB |")
            out.append("|---|---|---|---|---|")
            for label, r in results.items():
                out.append(
                    f"| {label} | {r['tokens_per_s']:.0f} | {r['lines_per_s']:.1f} | {r['seconds']:.2f} "
                    f"| {r['peak_rss_mb']:.0f} |"
                )
            out.append(ratio_line(results, FILE_RATIOS))
            continue
        model, batch, beam = WORKLOADS[workload]
        search = "greedy" if beam == 1 else f"beam {beam}"
        out.append(f"**{workload}**: {model}, batch {batch}, {search}, {SOURCE_LEN}-token sources\n")
        out.append(
            "| engine | tokens/s | p50 / p95 ms | first token ms | step ms (floor) | peak RSS MB | load s | MB |"
        )
        out.append("|---|---|---|---|---|---|---|---|")
        for label, r in results.items():
            floor = f" ({r['floor_ms']:.2f})" if "floor_ms" in r else ""
            out.append(
                f"| {label} | {r['tokens_per_s']:.1f} | {r['p50_ms']:.1f} / {r['p95_ms']:.1f} | {r['first_ms']:.2f} "
                f"| {r['step_ms']:.3f}{floor} | {r['peak_rss_mb']:.0f} | {r['load_s']:.2f} | {r['bytes'] / 1e6:.1f} |"
            )
        out.append(ratio_line(results, RATIOS))
    return "\n".join(out)


def ratio_line(results: dict, pairs) -> str:
    """The Markdown line under a table: each pair's tokens/s and peak RSS ratios (with their range)."""
    ratios = [
        f"{a} / {b}: {shown(results[a], results[b], 'tokens_per_s')} tokens/s, "
        f"{shown(results[a], results[b], 'peak_rss_mb')} peak RSS"
        for a, b in pairs
        if a in results and b in results
    ]
    return "\n" + "; ".join(ratios) + ".\n"
