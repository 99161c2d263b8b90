"""RNN family end to end: every cell x attention, graphs against PyTorch, greedy tokens against PyTorch."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgeseq.bundle import MANIFEST
from edgeseq.models import ATTENTIONS, CELLS
from edgeseq.runtime import Generator
from edgeseq.runtime.batching import pad_batch
from tests.conftest import mixed_sources

COMBOS = [(c, a, True) for c in CELLS for a in ATTENTIONS] + [("lstm", "bahdanau", False), ("gru", "luong-dot", False)]


def torch_greedy(model, sources, max_new_tokens):
    """Greedy decoding written directly against the PyTorch modules: independent of edgeseq's loop."""
    cfg = model.cfg
    src, mask = (torch.from_numpy(a) for a in pad_batch(sources, cfg.pad_id))
    out = [[] for _ in sources]
    with torch.no_grad():
        memory, enc_states = model.encoder(src, mask)
        keys = model.attention_keys(memory)
        state = model.decoder.initial_state(enc_states)
        tokens = torch.full((len(sources),), cfg.bos_id)
        done = torch.zeros(len(sources), dtype=torch.bool)
        for _ in range(max_new_tokens):
            logits, state, _ = model.decoder(tokens, state, keys, memory, mask)
            tokens = torch.where(done, cfg.pad_id, logits.argmax(-1))
            for i in range(len(sources)):
                if not done[i] and tokens[i] != cfg.eos_id:
                    out[i].append(int(tokens[i]))
            done |= tokens == cfg.eos_id
            if done.all():
                break
    return out


@pytest.mark.parametrize("cell, attention, bidirectional", COMBOS)
def test_graphs_are_valid_named_and_dynamic(bundle_factory, cell, attention, bidirectional):
    bundle, *_ = bundle_factory(cell, attention, bidirectional)
    manifest = json.loads((bundle / MANIFEST).read_text())
    expected = {"encoder", "decoder_step", "generate"} | (
        {"attention"} if attention in ("bahdanau", "luong-general") else set()
    )
    assert set(manifest["graphs"]) == expected
    for g in manifest["graphs"].values():
        model = onnx.load(str(bundle / g["file"]))
        onnx.checker.check_model(model, full_check=True)
        for declared, actual in ((g["inputs"], model.graph.input), (g["outputs"], model.graph.output)):
            assert [t["name"] for t in declared] == [v.name for v in actual]
            for t, v in zip(declared, actual):
                assert t["name"] and t["dtype"] in ("float32", "int64")
                dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
                assert dims == t["shape"]
                # per row, except scalars, the head's inputs and outputs (export/head.py), the rows to reorder
                # the states by (export/reorder.py) and generate.onnx's banned ids; a state input has the
                # previous step's rows (export/reorder.py)
                assert (
                    "batch" in t["shape"]
                    or "previous_batch" in t["shape"]
                    or t["shape"] == []
                    or t["name"] in (*manifest["decoder"]["head"].values(), manifest["decoder"]["reorder_input"])
                    or (g["file"] == "generate.onnx" and t["name"] == "banned_ids")
                ), (g["file"], t)
    assert manifest["parity"]["ok"] is True
    assert manifest["provenance"]["opset"] == 17 and manifest["provenance"]["torch"] == torch.__version__


@pytest.mark.parametrize("cell, attention, bidirectional", COMBOS)
def test_each_graph_matches_pytorch(bundle_factory, cell, attention, bidirectional):
    """Run each ONNX graph and the PyTorch modules on the same padded batch (a shape never traced)."""
    bundle, model, sv, _ = bundle_factory(cell, attention, bidirectional)
    src, mask = pad_batch(mixed_sources(sv), sv.pad_id)
    sess = {p.stem: ort.InferenceSession(str(p)) for p in bundle.glob("*.onnx")}
    enc = dict(
        zip(
            [o.name for o in sess["encoder"].get_outputs()],
            sess["encoder"].run(None, {"src_ids": src, "src_mask": mask}),
        )
    )
    with torch.no_grad():
        memory, states = model.encoder(torch.from_numpy(src), torch.from_numpy(mask))
        keys = model.attention_keys(memory)
    np.testing.assert_allclose(enc["memory"], memory.numpy(), atol=1e-4, rtol=0)
    for name, s in zip(("init_h", "init_c"), states):
        np.testing.assert_allclose(enc[name], s.numpy(), atol=1e-4, rtol=0)
    if "attention" in sess:
        (onnx_keys,) = sess["attention"].run(None, {"memory": memory.numpy()})
        np.testing.assert_allclose(onnx_keys, keys.numpy(), atol=1e-4, rtol=0)
    state = model.decoder.initial_state(states)
    tokens = torch.full((len(src),), sv.bos_id)
    step = sess["decoder_step"]
    for _ in range(3):
        pool = {
            "prev_tokens": tokens.numpy(),
            "memory": memory.numpy(),
            "src_mask": mask,
            **{k: v.numpy() for k, v in state.items()},
            # the head (export/head.py), asked for greedy's choice
            "head_mode": np.array(1, dtype=np.int64),
            "head_bias": np.zeros(model.cfg.tgt_vocab_size, dtype=np.float32),
            "beam_scores": np.zeros((0, 0), dtype=np.float32),
            "state_rows": np.arange(len(tokens), dtype=np.int64),  # each row continues itself (export/reorder.py)
        }
        if keys is not None:
            pool["attn_keys"] = keys.numpy()
        got = dict(
            zip([o.name for o in step.get_outputs()], step.run(None, {i.name: pool[i.name] for i in step.get_inputs()}))
        )
        with torch.no_grad():
            logits, state, weights = model.decoder(tokens, state, keys, memory, torch.from_numpy(mask))
        np.testing.assert_allclose(got["logits"], logits.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_array_equal(got["head_ids"][:, 0], got["logits"].argmax(-1))
        for k, v in state.items():
            np.testing.assert_allclose(got[f"{k}_out"], v.numpy(), atol=1e-4, rtol=0)
        if weights is not None:
            np.testing.assert_allclose(got["attn_weights"], weights.numpy(), atol=1e-4, rtol=0)
        tokens = logits.argmax(-1)


@pytest.mark.parametrize("cell, attention, bidirectional", COMBOS)
def test_runtime_greedy_equals_pytorch_greedy(bundle_factory, cell, attention, bidirectional):
    bundle, model, sv, _ = bundle_factory(cell, attention, bidirectional)
    gen = Generator(bundle)
    sources = mixed_sources(sv)
    expected = torch_greedy(model, sources, max_new_tokens=12)
    assert any(len(e) > 1 for e in expected)  # the model really generates something
    batched = [list(h[0].tokens) for h in gen.generate_ids(sources)]
    alone = [list(gen.generate_ids([s])[0][0].tokens) for s in sources]
    assert alone == [torch_greedy(model, [s], 12)[0] for s in sources]
    assert batched == expected
    assert batched == alone  # a padded batch gives each sentence what decoding it alone gives


def test_scores_are_sums_of_token_log_probs(bundle_factory):
    bundle, model, sv, _ = bundle_factory("lstm", "bahdanau", True)
    source = mixed_sources(sv)[0]
    (hyp,) = Generator(bundle).generate_ids([source])[0]
    src = torch.tensor([source])
    with torch.no_grad():
        memory, states = model.encoder(src, torch.ones_like(src))
        keys, state = model.attention_keys(memory), model.decoder.initial_state(states)
        total, prev = 0.0, torch.tensor([sv.bos_id])
        for tok in [*hyp.tokens, sv.eos_id][:12]:
            logits, state, _ = model.decoder(prev, state, keys, memory, torch.ones_like(src))
            total += float(torch.log_softmax(logits, -1)[0, tok])
            prev = torch.tensor([tok])
    assert hyp.score == pytest.approx(total, abs=1e-4)
