"""`edgeseq quantize --auto`: try per-graph recipes, keep the smallest (then fastest) within a quality budget."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgeseq.export.quantize import Recipe, calibration_feeds, quantize_into
from edgeseq.fsutil import Abandon, building, check_target
from edgeseq.runtime import Generator
from edgeseq.runtime.bundle import load_bundle


@dataclass
class Trial:
    recipe: Recipe
    bytes: int
    tokens_per_s: float
    exact_match: float  # against the references, or agreement with the fp32 bundle's outputs
    drop: float  # points of exact match lost against fp32
    within_budget: bool


def candidates(graphs: Sequence[str], static: bool) -> list[Recipe]:
    """Uniform recipes, then mixed ones that keep one side in fp32."""
    modes = ["dynamic-int8", "fp16"] + (["static-int8"] if static else [])
    recipes = [Recipe.uniform(m) for m in modes]
    recipes.append(Recipe(encoder="fp32", attention="fp32", decoder_step="dynamic-int8"))
    recipes.append(Recipe(encoder="dynamic-int8", attention="dynamic-int8", decoder_step="fp32"))
    return recipes


def _measure(bundle: Path, texts: Sequence[str], expected: Sequence[str], threads: int) -> tuple[float, float, int]:
    gen = Generator(bundle, threads=threads)
    t = time.perf_counter()
    results = gen.generate(list(texts))
    seconds = time.perf_counter() - t
    tokens = sum(len(r.tokens) + 1 for r in results)
    exact = sum(r.text == e for r, e in zip(results, expected)) / len(texts)
    return exact, tokens / seconds, sum(f.stat().st_size for f in bundle.iterdir())


def auto_quantize(
    src: Path,
    out: Path,
    texts: Sequence[str],
    references: Sequence[str] | None,
    budget: float,
    calibration: Sequence[str] | None,
    force: bool,
    threads: int = 2,
    progress: Callable[[str], None] = lambda msg: None,
    inputs: Sequence[str | Path] = (),
) -> tuple[Trial | None, list[Trial]]:
    """Try recipes on `texts`; install the smallest within `budget` points of exact-match drop at `out`."""
    inputs = [src, *inputs]
    check_target(out, force, inputs)  # before any trial: never over, into or around an input
    bundle = load_bundle(src)
    base_exact, base_tps, base_bytes = _measure(src, texts, references or [""] * len(texts), threads)
    fp32_out = [r.text for r in Generator(bundle, threads=threads).generate(list(texts))]
    expected = list(references) if references else fp32_out
    base = base_exact if references else 1.0
    trials = [Trial(Recipe.uniform("fp32"), base_bytes, base_tps, base, 0.0, True)]
    best = None
    with building(out, force, inputs) as final:  # the target's lock is held for every trial
        # trials sit beside the target under its partial-name, so that a killed run is cleaned up by the next
        folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-trials-", dir=out.parent))
        try:
            made = {}
            for i, recipe in enumerate(candidates(list(bundle.manifest.loop_graphs), bool(calibration))):
                progress(f"trying {recipe.name}")
                made[recipe] = path = folder / f"trial{i}"
                path.mkdir()
                quantize_into(bundle, path, recipe, calibration_feeds(bundle, recipe, calibration, progress))
                exact, tps, size = _measure(path, texts, expected, threads)
                drop = 100.0 * (base - exact)
                trials.append(Trial(recipe, size, tps, exact, drop, drop <= budget))
            fitting = [t for t in trials[1:] if t.within_budget]
            best = min(fitting, key=lambda t: (t.bytes, -t.tokens_per_s)) if fitting else None
            if best is None:
                raise Abandon  # nothing within the budget: the target stays as it was
            for f in made[best.recipe].iterdir():  # the kept trial becomes the bundle swapped in
                os.replace(f, final / f.name)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return best, trials


def trials_table(trials: Sequence[Trial], best: Trial | None) -> str:
    lines = [f"{'recipe':<48}{'size KB':>9}{'tokens/s':>10}{'exact':>8}{'drop':>7}  within budget"]
    for t in trials:
        mark = " <- kept" if t is best else ""
        lines.append(
            f"{t.recipe.name:<48}{t.bytes / 1024:>9.0f}{t.tokens_per_s:>10.0f}{t.exact_match:>8.1%}"
            f"{t.drop:>7.2f}  {'yes' if t.within_budget else 'no'}{mark}"
        )
    return "\n".join(lines)
