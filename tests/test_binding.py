"""IOBinding (runtime/binding.py) on the CPU provider: the logic CUDA runs, checked where CI can run it."""

import numpy as np
import onnxruntime as ort
import pytest

from edgeseq.errors import OptionsError
from edgeseq.runtime import DecodingOptions, Generator
from edgeseq.runtime.binding import BoundSession, DeviceTensor
from edgeseq.runtime.session import check_provider
from tests.conftest import mixed_sources, vocabs
from tests.test_transformer import tiny_transformer

STRATEGIES = {
    "greedy": DecodingOptions(max_new_tokens=14),
    "beam": DecodingOptions(max_new_tokens=14, beam_size=4, nbest=2),
    "sampling": DecodingOptions(max_new_tokens=14, sample=True, top_k=5, seed=7, nbest=2),
    "alignments": DecodingOptions(max_new_tokens=14, return_alignments=True),
}


@pytest.fixture(scope="module")
def transformer_bundle(tmp_path_factory):
    from edgeseq.export import ExportOptions, export_model

    model, sv, tv = tiny_transformer("pre")
    out = tmp_path_factory.mktemp("bind") / "tf"
    export_model(model, out, source_vocab=sv, target_vocab=tv, options=ExportOptions(max_new_tokens=16))
    return out


def _bundles(bundle_factory, transformer_bundle):
    return {"lstm-bahdanau": bundle_factory()[0], "transformer": transformer_bundle}


@pytest.mark.parametrize(
    "family, strategy",
    [
        (family, strategy)
        for family in ("lstm-bahdanau", "transformer")
        for strategy in STRATEGIES
        if not (family == "transformer" and strategy == "alignments")  # its step outputs no attention weights
    ],
)
def test_bound_decoding_equals_plain(bundle_factory, transformer_bundle, family, strategy):
    bundle = _bundles(bundle_factory, transformer_bundle)[family]
    sources = mixed_sources(vocabs()[0])  # mixed lengths: rows finish at different steps and leave the batch
    options = STRATEGIES[strategy]
    if family == "transformer":  # the tiny random Transformer repeats one token; make it vary
        options = options.replace(repetition_penalty=3.0)
    plain_gen, bound_gen = Generator(bundle, io_binding=False, engine="loop"), Generator(bundle, io_binding=True)
    # Random test models rarely say </s>: let another token end a row instead, the one whose first use comes
    # at the most different steps, so that rows finish at different steps and leave the batch (the states
    # are then taken row by row on the device).
    rows = [h[0].tokens for h in plain_gen.generate_ids(sources, options)]
    first = {t: {row.index(t) for row in rows if t in row} for row in rows for t in row}
    stop = max(sorted(first), key=lambda t: len(first[t]))
    for gen in (plain_gen, bound_gen):
        gen.backend.special_tokens = {**gen.backend.special_tokens, "eos": stop}
    plain = plain_gen.generate_ids(sources, options)
    bound = bound_gen.generate_ids(sources, options)
    assert [[h.tokens for h in hyps] for hyps in bound] == [[h.tokens for h in hyps] for hyps in plain]
    for b, p in zip(bound, plain):
        assert [h.score for h in b] == pytest.approx([h.score for h in p], abs=1e-5)
        for hb, hp in zip(b, p):
            if hp.alignment is not None:
                np.testing.assert_allclose(hb.alignment, hp.alignment, atol=1e-6)
    lengths = {len(h[0].tokens) for h in plain}
    assert len(lengths) > 1 or strategy == "beam"  # rows did leave the batch at different steps


def test_states_context_and_logits_stay_bound_only_chosen_tokens_come_back(transformer_bundle):
    gen = Generator(transformer_bundle, io_binding=True)
    backend, spec = gen.backend, gen.bundle.manifest.decoder
    seen = []
    run = backend.step

    def step(feeds, request=None):
        out = run(feeds, request)
        seen.append((feeds, out))
        return out

    backend.step = step
    gen.generate_ids(mixed_sources(vocabs()[0])[:2], DecodingOptions(max_new_tokens=5, min_new_tokens=5))
    assert len(seen) == 5
    context = [t.name for t in gen.bundle.manifest.graphs["decoder_step"].inputs if t.name.startswith("cross_")]
    assert context and all(isinstance(seen[0][0][n], DeviceTensor) for n in [*context, "src_mask"])
    for feeds, _ in seen[1:]:
        assert all(isinstance(feeds[s.input], DeviceTensor) for s in spec.states)  # the last step's outputs
    for _, out in seen:  # greedy reads the head's choice: the logits stay on the device too
        assert isinstance(out[spec.head.ids], np.ndarray) and out[spec.head.ids].shape == (2, 1)
        assert isinstance(out[spec.head.scores], np.ndarray)
        assert isinstance(out[spec.logits_output], DeviceTensor)
        assert all(isinstance(out[s.output], DeviceTensor) for s in spec.states)


def test_device_tensor_take_reorders_rows():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    t = DeviceTensor.upload(x, "cpu")
    assert t.shape == (2, 3, 4)
    np.testing.assert_array_equal(t.take(np.array([2, 0, 0]), axis=1).numpy(), x[:, [2, 0, 0]])


def test_bound_session_refuses_unknown_outputs(bundle_factory):
    gen = Generator(bundle_factory()[0])
    with pytest.raises(ValueError, match=r"no outputs named \['nope'\]"):
        BoundSession(gen.backend.sessions["decoder_step"], "cpu", ["logits", "nope"])


class _Session:
    """Stands in for an InferenceSession whose CUDA provider failed to load (ORT then runs on the CPU)."""

    def get_providers(self):
        return ["CPUExecutionProvider"]


def test_cuda_that_fails_to_load_is_an_error_that_says_why(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(OptionsError, match="provider 'cuda': onnxruntime lists CUDAExecutionProvider but could not"):
        check_provider("cuda", _Session(), "decoder_step")
    note = check_provider("auto", _Session(), "decoder_step")
    assert note.startswith("provider auto: onnxruntime lists CUDAExecutionProvider") and "running on the CPU" in note
    assert check_provider("cpu", _Session(), "decoder_step") is None


def test_auto_without_a_cuda_build_reports_the_cpu(bundle_factory):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    gen = Generator(bundle_factory()[0], provider="auto")
    assert gen.backend.device == "cpu" and gen.backend.bound is None
    assert gen.backend.note == "provider auto: this onnxruntime has no CUDA provider; running on the CPU"


def test_step_placement_counts_nodes_per_provider(transformer_bundle):
    from edgeseq.bench import step_placement
    from edgeseq.runtime import load_bundle

    placement = step_placement(load_bundle(transformer_bundle), "cpu")
    assert set(placement.nodes) == {"CPUExecutionProvider"} and placement.nodes["CPUExecutionProvider"] > 20
    assert placement.memcpy == 0
    assert placement.line().startswith("decoder step nodes: ") and "on CPU" in placement.line()


def test_both_onnxruntime_builds_are_detected(tmp_path, monkeypatch):
    from edgeseq.runtime.session import installed_builds

    for name in ("onnxruntime-1.32.0.dist-info", "onnxruntime_gpu-1.32.0.dist-info"):
        (tmp_path / name).mkdir()
    monkeypatch.setattr("sys.path", [str(tmp_path)])
    assert installed_builds() == {"onnxruntime", "onnxruntime-gpu"}
    with pytest.warns(RuntimeWarning, match="both onnxruntime and onnxruntime-gpu are installed"):
        from edgeseq.runtime.session import resolve_providers

        resolve_providers("cpu")
