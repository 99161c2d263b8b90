"""Export is atomic: killed half-way, it leaves either no bundle or the complete old one under the target."""

import hashlib
import signal
import subprocess
import sys
import time

import pytest
import torch

from edgeseq.export import save_checkpoint
from edgeseq.fsutil import replace_dir
from edgeseq.models import TransformerConfig, TransformerSeq2Seq
from edgeseq.runtime import Generator, load_bundle
from edgeseq.vocab import SPECIALS, Vocab


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def slow_checkpoint(tmp_path_factory):
    """A model whose export takes a few seconds, so there is a moment to kill it in."""
    torch.manual_seed(0)
    vocab = Vocab(SPECIALS + tuple(f"w{i}" for i in range(2996)), level="word")
    cfg = TransformerConfig(
        3000, 3000, d_model=256, heads=4, encoder_layers=4, decoder_layers=4, ffn_dim=1024, max_positions=64
    )
    path = tmp_path_factory.mktemp("slow") / "model.safetensors"
    save_checkpoint(path, TransformerSeq2Seq(cfg).eval(), vocab, vocab)
    return path


def kill_mid_export(checkpoint, out, *extra):
    """Start `edgeseq export`, SIGKILL it once its partial bundle holds a graph; return when it is dead."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeseq", "export", str(checkpoint), "--out", str(out), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        partial = list(out.parent.glob(f".{out.name}.partial-*/*.onnx"))
        if partial:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "export finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_killed_export_leaves_no_bundle(slow_checkpoint, tmp_path):
    out = tmp_path / "bundle"
    kill_mid_export(slow_checkpoint, out)
    assert not out.exists()
    assert list(tmp_path.glob(".bundle.partial-*"))  # the half-built one is only ever beside the target


def test_killed_export_with_force_keeps_the_old_bundle(slow_checkpoint, tmp_path):
    out = tmp_path / "bundle"
    r = subprocess.run(
        [sys.executable, "-m", "edgeseq", "export", str(slow_checkpoint), "--out", str(out), "--max-new-tokens", "4"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    before = digest(out)
    kill_mid_export(slow_checkpoint, out, "--force")
    assert digest(out) == before
    load_bundle(out)  # complete and verified
    assert Generator(out).generate(["w1 w2"])


def test_replace_dir_swaps_whole_directories(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "a").write_text("old")
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "b").write_text("new")
    replace_dir(tmp_path / "new", tmp_path / "old")
    assert [p.name for p in tmp_path.iterdir()] == ["old"]
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["b"]
