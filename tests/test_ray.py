"""edgeseq.ray on a local Ray cluster (2 CPUs) started here: the same output as one process, greedy and beam,
an actor killed mid-run, bad lines, the Dataset path. ray is imported outright: CI installs edgeseq[ray],
and a missing install must fail, not skip."""

import subprocess
import sys

import numpy as np
import pytest
import ray

from edgeseq.errors import InputError
from edgeseq.ray import Cluster, translate_dataset, translate_files, translate_lines
from edgeseq.runtime import Generator
from edgeseq.runtime.lines import Batching

LINES = 20_000


def edgeseq(*args):
    return subprocess.run(
        [sys.executable, "-m", "edgeseq", *map(str, args)], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def cluster_address():
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield context.address_info["address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(bundle_factory, tmp_path_factory):
    """(bundle, 20,000 lines of 1-30 characters in a file, and single-process `edgeseq generate` on it, greedy
    and beam 4)."""
    bundle = bundle_factory()[0]
    vocab = Generator(bundle).bundle.source_vocab
    regular = [t for i, t in enumerate(vocab.tokens) if i not in set(vocab.specials.values()) and t.strip()]
    rng = np.random.default_rng(16)
    root = tmp_path_factory.mktemp("ray")
    source = root / "in.txt"
    source.write_text("".join("".join(rng.choice(regular, size=rng.integers(1, 30))) + "\n" for _ in range(LINES)))
    expected = {}
    for beam in (1, 4):
        expected[beam] = root / f"expected-beam{beam}.txt"
        r = edgeseq("generate", bundle, "--input", source, "--output", expected[beam], "--beam", beam)
        assert r.returncode == 0, r.stderr
    return bundle, source, expected


def test_cli_on_the_cluster_writes_the_single_process_output(corpus, cluster_address, tmp_path):
    bundle, source, expected = corpus
    out = tmp_path / "out.txt"
    r = edgeseq(
        "generate", bundle, "--input", source, "--output", out, "--ray", "--ray-address", cluster_address, "--progress"
    )
    assert r.returncode == 0, r.stderr
    assert f"edgeseq: {LINES} lines in" in r.stderr  # the progress meter's last line
    assert out.read_bytes() == expected[1].read_bytes() and len(out.read_text().splitlines()) == LINES
    assert "peak memory per actor" in r.stderr and "Traceback" not in r.stderr
    assert not list(tmp_path.glob(".out.txt.partial-*"))


def test_beam_search_gives_the_single_process_output(corpus, cluster_address, tmp_path):
    bundle, source, expected = corpus
    out = tmp_path / "out.txt"
    options = Generator(bundle).options.replace(beam_size=4)
    assert translate_files(bundle, [source], [out], options, cluster=Cluster(actors=2)) == 0
    assert out.read_bytes() == expected[4].read_bytes()


def test_actors_killed_mid_run_are_replaced_and_their_lines_redone(corpus, cluster_address, tmp_path):
    bundle, source, expected = corpus
    seen, notes = [], []

    def kill(pool):  # after the first of 5 windows: every actor, with windows in flight and more to come
        seen.append(pool)
        if pool.done == 1:
            assert max(pool.load) > 0
            for actor in pool.actors:
                ray.kill(actor)

    out = tmp_path / "out.txt"
    translate_files(bundle, [source], [out], cluster=Cluster(actors=2, on_chunk=kill, note=notes.append))
    pool = seen[-1]
    assert pool.done >= 5 and pool.replaced >= 1 and any("an actor died (ActorDiedError)" in n for n in notes)
    assert out.read_bytes() == expected[1].read_bytes()  # complete: nothing lost, nothing twice


def test_a_bad_line_stops_the_run_naming_it_and_leaves_no_output(corpus, cluster_address, tmp_path):
    bundle, source, _ = corpus
    lines = source.read_text().splitlines()[:3000]
    lines[2499] = "   "
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(lines) + "\n")
    single = edgeseq("generate", bundle, "--input", bad, "--output", tmp_path / "single.txt")
    out = tmp_path / "out.txt"
    r = edgeseq("generate", bundle, "--input", bad, "--output", out, "--ray", "--ray-address", cluster_address)
    assert r.returncode == single.returncode == 1
    assert r.stderr == single.stderr == "edgeseq: error: line 2500: empty source text: give at least one character\n"
    assert list(tmp_path.iterdir()) == [bad]  # neither run left an output or a partial file
    with pytest.raises(InputError, match=r"bad.txt, line 2500: empty source text"):
        translate_files(bundle, [bad], [out])  # the default, as on one machine: stop
    assert not out.exists()


def test_with_skip_a_bad_line_is_an_empty_line_and_the_rest_goes_on(corpus, cluster_address, tmp_path):
    bundle, source, expected = corpus
    lines = source.read_text().splitlines()
    lines[4] = lines[15_000] = " "  # nothing to translate
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(lines) + "\n")
    single = tmp_path / "single.txt"
    r = edgeseq("generate", bundle, "--input", bad, "--output", single, "--on-error", "skip")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out.txt"
    assert translate_files(bundle, [bad], [out], batching=Batching(on_error="skip")) == 2
    assert out.read_bytes() == single.read_bytes()
    got, want = out.read_text().splitlines(), expected[1].read_text().splitlines()
    assert got[4] == got[15_000] == "" and [g for i, g in enumerate(got) if i not in (4, 15_000)] == [
        w for i, w in enumerate(want) if i not in (4, 15_000)
    ]


def test_json_output_and_a_bundle_shipped_through_the_object_store(corpus, cluster_address, tmp_path):
    bundle, source, _ = corpus
    small = tmp_path / "small.txt"
    small.write_text("".join(source.read_text().splitlines(keepends=True)[:300]))
    single = edgeseq("generate", bundle, "--input", small, "--json", "--beam", "2", "--nbest", "2")
    assert single.returncode == 0, single.stderr
    out = tmp_path / "out.json"
    options = Generator(bundle).options.replace(beam_size=2, nbest=2)
    translate_files(bundle, [small], [out], options, cluster=Cluster(ship_bundle=True), as_json=True)
    assert out.read_text() == single.stdout


def test_translate_lines_keeps_order_across_many_small_windows(corpus, cluster_address):
    bundle, source, _ = corpus
    texts = source.read_text().splitlines()[:2000]
    batching = Batching(max_tokens=300, window=2)
    want = [r.translation.text for r in Generator(bundle).translate_lines(texts, None, batching)]
    got = list(translate_lines(bundle, iter(texts), None, batching, Cluster(actors=2), {}))
    assert [r.line for r in got] == list(range(1, 2001)) and [r.translation.text for r in got] == want


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own settings
def test_a_ray_dataset_gets_translation_and_error_columns(corpus, cluster_address):
    bundle, source, _ = corpus
    texts = [*source.read_text().splitlines()[:400], " "]
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
    rows = translate_dataset(ds, bundle, batching=Batching(on_error="skip"), batch_size=100).take_all()
    got = {row["id"]: (row["translation"], row["error"]) for row in rows}
    want = [t.text for t in Generator(bundle).generate(texts[:-1])]
    assert [got[i][0] for i in range(400)] == want and all(got[i][1] is None for i in range(400))
    assert got[400][0] == "" and "empty source text" in got[400][1]


def test_cli_refusals_without_a_cluster(corpus, tmp_path):
    bundle, *_ = corpus
    r = edgeseq("generate", bundle, "abc", "--actors", "2")
    assert r.returncode == 2 and r.stderr == "edgeseq: error: --ray-address and --actors go with --ray\n"
    r = edgeseq("generate", bundle, "abc", "--ray", "--stream")
    assert r.returncode == 2 and "leave out --stream, --provider, --engine and --workers" in r.stderr
    args = ["generate", str(bundle), "abc", "--ray"]
    code = f"import sys; sys.modules['ray'] = None; from edgeseq.cli import main; main({args!r})"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)  # ray missing
    assert r.returncode == 1 and r.stderr == (
        "edgeseq: error: this command needs ray, which this install lacks: pip install 'edgeseq[ray]'\n"
    )
