"""The reference RNN models: config validation, shapes, masking, training."""

import pytest
import torch

from edgeseq.demo.train import TrainOptions, make_batch, train
from edgeseq.errors import OptionsError
from edgeseq.models import ATTENTIONS, CELLS, RNNConfig
from tests.conftest import mixed_sources, tiny_rnn


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cell": "rnn"}, "cell 'rnn' is not one of lstm, gru"),
        ({"attention": "luong"}, "attention 'luong' is not one of none, bahdanau, luong-dot, luong-general"),
        ({"hidden": 33, "bidirectional": True}, "hidden must be even"),
        ({"layers": 0}, "layers must be a positive integer"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ],
)
def test_config_refuses_invalid_values(kwargs, message):
    with pytest.raises(OptionsError, match=message):
        RNNConfig(10, 10, **kwargs)


def test_config_collects_every_problem():
    with pytest.raises(OptionsError, match="cell .* attention .* layers"):
        RNNConfig(10, 10, cell="x", attention="y", layers=0)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_teacher_forced_shapes(cell, attention):
    model, sv, tv = tiny_rnn(cell, attention)
    src, mask, dec_in, labels = make_batch([(s, [4, 5, 2]) for s in mixed_sources(sv)], tv)
    logits = model(src, mask, dec_in)
    assert logits.shape == (6, 3, len(tv))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_does_not_change_encoder_results(cell, bidirectional):
    """Each source gives the same memory and final states alone as inside a padded batch."""
    model, sv, _ = tiny_rnn(cell, "bahdanau", bidirectional)
    sources = mixed_sources(sv)
    src, mask, _, _ = make_batch([(s, [2]) for s in sources], sv)
    with torch.no_grad():
        memory, states = model.encoder(src, mask)
        for i, s in enumerate(sources):
            one = torch.tensor([s])
            m1, st1 = model.encoder(one, torch.ones_like(one))
            torch.testing.assert_close(memory[i, : len(s)], m1[0], atol=1e-5, rtol=1e-5)
            if len(s) < src.shape[1]:
                assert memory[i, len(s) :].abs().max() == 0
            for a, b in zip(states, st1):
                torch.testing.assert_close(a[:, i], b[:, 0], atol=1e-5, rtol=1e-5)


def test_attention_ignores_padding():
    model, sv, _ = tiny_rnn("gru", "bahdanau")
    sources = mixed_sources(sv)
    src, mask, _, _ = make_batch([(s, [2]) for s in sources], sv)
    with torch.no_grad():
        memory, states = model.encoder(src, mask)
        state = model.decoder.initial_state(states)
        _, _, weights = model.decoder(torch.full((6,), 1), state, model.attention_keys(memory), memory, mask)
    assert torch.all(weights[mask == 0] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(6))


def test_training_learns_a_copy_task():
    """A few hundred steps on the CPU learn to copy short digit strings."""
    model, sv, tv = tiny_rnn("lstm", "luong-general", layers=1)
    g = torch.Generator().manual_seed(0)
    data = []
    for _ in range(400):
        n = int(torch.randint(1, 6, (1,), generator=g))
        digits = "".join(str(int(d)) for d in torch.randint(0, 10, (n,), generator=g))
        data.append((sv.encode(digits), tv.encode(digits)))
    losses = train(model, data, tv, TrainOptions(steps=150, batch_size=32, lr=1e-2), show_progress=False)
    assert sum(losses[-10:]) / 10 < 0.25 * sum(losses[:10]) / 10
