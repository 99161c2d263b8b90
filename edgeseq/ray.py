"""Translating large corpora on a Ray cluster: a pool of actors, each holding one loaded Generator.

`pip install "edgeseq[ray]"`. Two ways in:

- `translate_files` / `translate_lines` (and `edgeseq generate --ray`): files of lines, same output as one
  process. The driver reads the input and cuts it into the windows runtime/lines.py decodes (sorted by
  length, batches sized by tokens); each window is one task for an actor, which decodes it with
  `translate_lines`: the same batches, so byte-identical results. Results are written in input order as they
  come, at most `2 x actors` windows in flight or waiting for their predecessors (bounded memory). An actor
  that dies (killed, out of memory, its node lost) is replaced and its windows redone: each window's result
  is taken once, so no line is lost or duplicated.
- `translate_dataset`: a Ray Dataset in, a Dataset out (`map_batches` over actors); rows keep Ray Data's
  order guarantees (none by default, `DataContext.execution_options.preserve_order` to keep them).

The bundle reaches workers by path (shared storage: every node must see it at that path) or, with
`Cluster(ship_bundle=True)`, through Ray's object store: its files are copied into each actor's temporary
folder.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray

from edgeseq.errors import EdgeseqError, InputError, OptionsError
from edgeseq.runtime.bundle import load_bundle
from edgeseq.runtime.lines import Batching, LineResult, read_lines, windows
from edgeseq.runtime.options import DecodingOptions

if TYPE_CHECKING:
    from edgeseq.runtime import Generator

RETRIES = 3  # times a window is redone after its actor died, before the run stops


@dataclass(frozen=True)
class Cluster:
    """Where and how the actors run."""

    actors: int = 2  # actors, each with one Generator (one copy of the model in memory)
    cpus_per_actor: int = 1  # Ray CPUs per actor, and the Generator's onnxruntime threads
    address: str | None = None  # an existing cluster ("auto", "ray://head:10001"); None: RAY_ADDRESS or a local one
    ship_bundle: bool = False  # send the bundle's files through the object store instead of a shared path
    verify_checksums: bool = True  # hash the bundle's files on load (driver and actors)
    actor_options: dict | None = None  # more Ray actor options, e.g. {"memory": 2 << 30}, {"num_gpus": 1}
    note: Callable[[str], None] | None = None  # told of replaced actors and, at the end, actors' peak memory
    on_chunk: Callable[[Pool], None] | None = None  # called after each window is done (progress, tests)

    def __post_init__(self) -> None:
        for name in ("actors", "cpus_per_actor"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1 << 16:
                raise OptionsError(f"{name} must be an integer in 1..{1 << 16}, got {value!r}")


class Translator:
    """One actor's state: the Generator, loaded once (from a path, or from bundle files shipped to it)."""

    def __init__(self, bundle: str | dict[str, bytes], threads: int, verify_checksums: bool = True) -> None:
        self.source, self.threads, self.verify_checksums = bundle, threads, verify_checksums
        self._gen: Generator | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    @property
    def gen(self) -> Generator:
        """Loaded by the first task, not in __init__: Ray keeps an error of a task (a BundleError), not of
        an actor's creation."""
        from edgeseq.runtime import Generator

        if self._gen is None:
            bundle = self.source
            if isinstance(bundle, dict):  # {relative path: bytes} from the object store
                self._tmp = tempfile.TemporaryDirectory(prefix="edgeseq-bundle-")
                for name, data in bundle.items():
                    path = Path(self._tmp.name, name)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data)
                bundle = self._tmp.name
            # (windows of a file, in batches: the batched step alone, as `edgeseq generate --input`)
            self._gen = Generator(load_bundle(bundle, self.verify_checksums), threads=self.threads, one_row=False)
        return self._gen

    def resolve(self, options: DecodingOptions | None, overrides: dict) -> DecodingOptions:
        """`options` (None: the bundle's defaults) with `overrides`, checked against this bundle."""
        options = (options or self.gen.options).replace(**overrides)
        self.gen.translate_lines((), options)  # checks the options (it raises before decoding anything)
        return options

    def translate(self, first: int, texts: list[str], options: DecodingOptions, batching: Batching) -> list:
        """Lines numbered from `first`; bad lines come back with their error (the driver applies on_error)."""
        results = self.gen.translate_lines(texts, options, dataclasses.replace(batching, on_error="skip"))
        return [dataclasses.replace(r, line=r.line + first - 1) for r in results]

    def peak_rss(self) -> int:
        """This process's peak resident memory in bytes (VmHWM), 0 where /proc does not say."""
        try:
            with open("/proc/self/status") as f:
                return next((int(x.split()[1]) * 1024 for x in f if x.startswith("VmHWM:")), 0)
        except OSError:
            return 0


class Pool:
    """The live actors (a dead one is replaced in its slot), and what the run did so far."""

    def __init__(self, make: Callable[[], Any], size: int) -> None:
        self.make = make
        self.actors = [make() for _ in range(size)]
        self.load = [0] * size  # tasks in flight per slot
        self.done = self.replaced = 0
        self.peak_rss: list[int] = []  # per actor, filled at the end of a run

    def replace(self, slot: int, dead: Any) -> bool:
        """A fresh actor in `slot` if `dead` still holds it; False if it was replaced already."""
        if self.actors[slot] is not dead:
            return False
        ray.kill(dead)  # it may only be unreachable: make sure it never comes back
        self.actors[slot], self.load[slot] = self.make(), 0
        self.replaced += 1
        return True

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)


def translate_lines(
    bundle: str | Path,
    lines: Iterable[str],
    options: DecodingOptions | None = None,
    batching: Batching = Batching(),
    cluster: Cluster = Cluster(),
    overrides: dict | None = None,
) -> Iterator[LineResult]:
    """Translate `lines` on the cluster, in input order: what `Generator.translate_lines` gives, the same
    results and the same on_error semantics ("stop": InputError naming the line number, after the lines
    before it). `options` None: the bundle's defaults; `overrides` replace some of its fields."""
    for _, result in _translate(bundle, [lines], None, options, batching, cluster, overrides):
        yield result


def translate_files(
    bundle: str | Path,
    inputs: Sequence[str | Path],
    outputs: Sequence[str | Path],
    options: DecodingOptions | None = None,
    batching: Batching = Batching(),
    cluster: Cluster = Cluster(),
    as_json: bool = False,
) -> int:
    """Translate each input file into its output file (one line per line, or `edgeseq generate --json`'s
    format), in input order, each written as it goes and renamed into place when complete. Returns the
    number of lines skipped (on_error "skip")."""
    from edgeseq.cli_output import Output, Progress, write_results
    from edgeseq.fsutil import check_output_file

    if len(inputs) != len(outputs) or len({Path(o).resolve() for o in outputs}) != len(outputs):
        raise OptionsError("give one distinct output file per input file")
    for output in outputs:
        check_output_file(output, "output", [*inputs, bundle])
    note = cluster.note or (lambda message: None)
    streams = (_file_lines(path) for path in inputs)
    results = _translate(bundle, streams, [str(p) for p in inputs], options, batching, cluster, None)
    skipped = 0
    for index, group in itertools.groupby(results, key=lambda item: item[0]):
        out = Output(str(outputs[index]))
        try:
            skipped += write_results((r for _, r in group), out, as_json, Progress(False), note)
            out.finish()
        except BaseException:
            out.abort()
            raise
    return skipped


def translate_dataset(
    ds: ray.data.Dataset,
    bundle: str | Path,
    options: DecodingOptions | None = None,
    batching: Batching = Batching(),
    cluster: Cluster = Cluster(),
    column: str = "text",
    batch_size: int = 1024,
) -> ray.data.Dataset:
    """`ds` with columns "translation" (the best hypothesis, "" for a bad row) and "error" (None, or why
    the row has no translation) added; a bad row stops the run with on_error "stop". Rows in batches of
    `batch_size`, decoded in token-sized batches sorted by length; one Generator per actor, on the cluster
    that holds `ds` (`cluster.address` is not used) and reading the bundle by path."""
    if cluster.ship_bundle:
        raise OptionsError("translate_dataset reads the bundle by path: put it on storage every node sees")
    return ds.map_batches(
        _DatasetTranslator,
        fn_constructor_kwargs={
            "bundle": str(bundle),
            "options": options,
            "batching": batching,
            "column": column,
            "threads": cluster.cpus_per_actor,
            "verify_checksums": cluster.verify_checksums,
        },
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=cluster.actors,
        num_cpus=cluster.cpus_per_actor,
        **(cluster.actor_options or {}),
    )


class _DatasetTranslator(Translator):
    def __init__(self, bundle: str, options, batching: Batching, column: str, threads: int, verify_checksums: bool):
        super().__init__(bundle, threads, verify_checksums)
        self.options, self.batching, self.column = options or self.gen.options, batching, column  # loads it

    def __call__(self, batch: dict) -> dict:
        results = self.translate(1, [str(t) for t in batch[self.column]], self.options, self.batching)
        bad = next((r for r in results if r.error is not None), None)
        if bad is not None and self.batching.on_error == "stop":
            raise InputError(f"{self.column} {bad.source[:60]!r}: {bad.error}")
        translations = [r.translation.text if r.translation is not None else "" for r in results]
        return {**batch, "translation": translations, "error": [r.error for r in results]}


def _translate(bundle, streams, names, options, batching, cluster, overrides) -> Iterator[tuple[int, LineResult]]:
    """(stream index, result) for every line of every stream, in order, decoded by a pool of actors."""
    local = load_bundle(bundle, cluster.verify_checksums)  # the driver cuts windows with its tokenizer
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        except ConnectionError as e:
            raise EdgeseqError(f"cannot reach the Ray cluster {cluster.address or ''}: {e}") from None
    pool = None
    try:
        _check_resources(cluster, local_only=started and not (cluster.address or os.environ.get("RAY_ADDRESS")))
        pool = _start(bundle, cluster)
        options = _get(pool.actors[0].resolve.remote(options, overrides or {}))
        chunks = (
            (index, window[0][0], [item[1] for item in window])
            for index, lines in enumerate(streams)
            for window in windows(local, lines, options, batching)
        )
        for (index, *_), results in _ordered(pool, chunks, options, batching, cluster):
            for r in results:
                if r.error is not None and batching.on_error == "stop":
                    where = f"{names[index]}, line" if names else "line"
                    raise InputError(f"{where} {r.line}: {r.error}")
                yield index, r
        pool.peak_rss = [_get(a.peak_rss.remote()) for a in pool.actors]
        if cluster.note:
            mb = [f"{x / 2**20:.0f}" for x in pool.peak_rss]
            cluster.note(f"ray: {pool.done} windows on {len(mb)} actors; peak memory per actor (MB): {', '.join(mb)}")
    finally:
        if pool is not None:
            pool.close()
        if started:
            ray.shutdown()


def _check_resources(cluster: Cluster, local_only: bool) -> None:
    """Refuse more actors than a local cluster can hold (they would wait forever); on a cluster, say so."""
    have, want = ray.cluster_resources().get("CPU", 0), cluster.actors * cluster.cpus_per_actor
    if have >= want:
        return
    message = f"{cluster.actors} actors x {cluster.cpus_per_actor} CPUs need {want} CPUs; the cluster has {have:g}"
    if local_only:
        raise OptionsError(f"{message}: ask for fewer --actors or --threads")
    if cluster.note:
        cluster.note(f"ray: {message} now: some actors wait for resources")


def _start(bundle, cluster: Cluster) -> Pool:
    source = _ship(Path(bundle)) if cluster.ship_bundle else str(bundle)
    remote = ray.remote(Translator).options(num_cpus=cluster.cpus_per_actor, **(cluster.actor_options or {}))
    return Pool(lambda: remote.remote(source, cluster.cpus_per_actor, cluster.verify_checksums), cluster.actors)


def _ship(root: Path) -> ray.ObjectRef:
    """The bundle's files, {relative path: bytes}, put once into the object store."""
    try:
        files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    except OSError as e:
        raise EdgeseqError(f"{root}: cannot read the bundle to ship it ({type(e).__name__}: {e})") from None
    return ray.put(files)


def _ordered(pool: Pool, chunks, options, batching, cluster) -> Iterator[tuple[tuple, list[LineResult]]]:
    """Each chunk with its results, in chunk order; a chunk whose actor died is redone on its replacement."""
    depth = 2 * len(pool.actors)  # chunks submitted and not yet given back: in flight or held for order
    pending: dict[ray.ObjectRef, tuple[int, tuple, int, Any, int]] = {}  # ref -> index, chunk, slot, actor, tries
    held: dict[int, tuple[tuple, list[LineResult]]] = {}
    given = submitted = 0

    def submit(index: int, chunk: tuple, tries: int) -> None:
        slot = min(range(len(pool.actors)), key=pool.load.__getitem__)
        actor = pool.actors[slot]
        pending[actor.translate.remote(chunk[1], chunk[2], options, batching)] = (index, chunk, slot, actor, tries)
        pool.load[slot] += 1

    for chunk in itertools.chain(chunks, [None]):
        if chunk is not None:
            submit(submitted, chunk, 0)
            submitted += 1
        while pending and (chunk is None or submitted - given >= depth):
            [ref], _ = ray.wait(list(pending), num_returns=1)
            index, chunk_, slot, actor, tries = pending.pop(ref)
            try:
                held[index] = (chunk_, _get(ref))
            except (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError) as e:
                if tries >= RETRIES:
                    raise EdgeseqError(
                        f"lines {chunk_[1]}-{chunk_[1] + len(chunk_[2]) - 1}: their actor died {tries + 1} times "
                        f"({type(e).__name__}); give actors more memory or use a smaller --batch-tokens"
                    ) from None
                if pool.replace(slot, actor) and cluster.note:
                    cluster.note(f"ray: an actor died ({type(e).__name__}); replaced, its lines are redone")
                submit(index, chunk_, tries + 1)
                continue
            pool.load[slot] -= pool.actors[slot] is actor
            pool.done += 1
            if cluster.on_chunk:
                cluster.on_chunk(pool)
            while given in held:
                yield held.pop(given)
                given += 1


def _get(ref: ray.ObjectRef) -> Any:
    """ray.get, with a user error raised in an actor re-raised as itself (one line, not a remote traceback)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, EdgeseqError):
            raise e.cause from None
        raise


def _file_lines(path: str | Path) -> Iterator[str]:
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    with f:
        yield from read_lines(f, str(path))
