"""A real trained model from a package: g2p_en's grapheme-to-phoneme GRU encoder-decoder (its weights ship in
the package as checkpoint20.npz; g2p_en runs them with numpy). Here, as a user would: the model ported to
PyTorch modules and the weights loaded into them, and the package's own numpy decode (G2p.predict,
rewritten here without nltk, which g2p_en imports and which would download data) as the reference.
Graphemes: <pad>, <unk>, </s>, a-z (</s> ends every word); phonemes: <pad>, <unk>, <s>, </s>, ARPAbet."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

GRAPHEMES = ["<pad>", "<unk>", "</s>"] + list("abcdefghijklmnopqrstuvwxyz")
PHONEMES = ["<pad>", "<unk>", "<s>", "</s>"] + (
    "AA0 AA1 AA2 AE0 AE1 AE2 AH0 AH1 AH2 AO0 AO1 AO2 AW0 AW1 AW2 AY0 AY1 AY2 B CH D DH EH0 EH1 EH2 ER0 ER1 ER2 EY0 "
    "EY1 EY2 F G HH IH0 IH1 IH2 IY0 IY1 IY2 JH K L M N NG OW0 OW1 OW2 OY0 OY1 OY2 P R S SH T TH UH0 UH1 UH2 UW "
    "UW0 UW1 UW2 V W Y Z ZH"
).split()


def checkpoint() -> Path | None:
    """g2p_en's weights file, without importing g2p_en (its import downloads nltk data)."""
    spec = importlib.util.find_spec("g2p_en")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "checkpoint20.npz"
    return path if path.is_file() else None


def predict(variables, word: str) -> list[str]:
    """g2p_en's G2p.predict: the package's own greedy decode, in numpy."""

    def grucell(x, h, w_ih, w_hh, b_ih, b_hh):
        rzn_ih = np.matmul(x, w_ih.T) + b_ih
        rzn_hh = np.matmul(h, w_hh.T) + b_hh
        rz_ih, n_ih = rzn_ih[:, : rzn_ih.shape[-1] * 2 // 3], rzn_ih[:, rzn_ih.shape[-1] * 2 // 3 :]
        rz_hh, n_hh = rzn_hh[:, : rzn_hh.shape[-1] * 2 // 3], rzn_hh[:, rzn_hh.shape[-1] * 2 // 3 :]
        rz = 1 / (1 + np.exp(-(rz_ih + rz_hh)))
        r, z = np.split(rz, 2, -1)
        n = np.tanh(n_ih + r * n_hh)
        return (1 - z) * n + z * h

    v = variables
    g2idx = {g: i for i, g in enumerate(GRAPHEMES)}
    x = [g2idx.get(c, g2idx["<unk>"]) for c in list(word) + ["</s>"]]
    enc = np.take(v["enc_emb"], np.expand_dims(x, 0), axis=0)
    h = np.zeros((1, v["enc_w_hh"].shape[-1]), np.float32)
    for t in range(len(word) + 1):
        h = grucell(enc[:, t, :], h, v["enc_w_ih"], v["enc_w_hh"], v["enc_b_ih"], v["enc_b_hh"])
    dec = np.take(v["dec_emb"], [2], axis=0)  # 2: <s>
    preds = []
    for _ in range(20):
        h = grucell(dec, h, v["dec_w_ih"], v["dec_w_hh"], v["dec_b_ih"], v["dec_b_hh"])
        pred = (np.matmul(h, v["fc_w"].T) + v["fc_b"]).argmax()
        if pred == 3:  # 3: </s>
            break
        preds.append(pred)
        dec = np.take(v["dec_emb"], [pred], axis=0)
    return [PHONEMES[i] for i in preds]


class G2P(nn.Module):
    """g2p_en's network as PyTorch modules, loaded from its numpy weights."""

    def __init__(self, variables):
        super().__init__()
        t = {k: torch.from_numpy(np.asarray(variables[k], dtype=np.float32)) for k in variables.files}
        hidden = t["enc_w_hh"].shape[1]
        self.enc_emb = nn.Embedding.from_pretrained(t["enc_emb"], freeze=True)
        self.dec_emb = nn.Embedding.from_pretrained(t["dec_emb"], freeze=True)
        self.encoder = nn.GRU(t["enc_emb"].shape[1], hidden, batch_first=True)
        self.decoder = nn.GRUCell(t["dec_emb"].shape[1], hidden)
        self.fc = nn.Linear(hidden, t["fc_w"].shape[0])
        with torch.no_grad():  # PyTorch's GRU gate order is g2p's: r, z, n
            for name, ours in (("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b_ih", "bias_ih"), ("b_hh", "bias_hh")):
                getattr(self.encoder, f"{ours}_l0").copy_(t[f"enc_{name}"])
                getattr(self.decoder, ours).copy_(t[f"dec_{name}"])
            self.fc.weight.copy_(t["fc_w"])
            self.fc.bias.copy_(t["fc_b"])

    def encode(self, src_ids):
        _, h = self.encoder(self.enc_emb(src_ids))
        return {"h": h[0]}

    def step(self, tokens, h):
        h = self.decoder(self.dec_emb(tokens), h)
        return {"logits": self.fc(h), "h": h}


class G2PGRU(G2P):
    """The same network with its decoder written as another author might: an nn.GRU (batch_first) run one step
    at a time. It exports as an ONNX GRU fed by the embedding alone (GRUCell exports as MatMuls), the form whose
    input projection generate.onnx looks up for one source (export/generate_fold.py)."""

    def __init__(self, variables):
        super().__init__(variables)
        cell = self.decoder
        self.decoder = nn.GRU(cell.input_size, cell.hidden_size, batch_first=True)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(self.decoder, f"{name}_l0").copy_(getattr(cell, name))

    def step(self, tokens, h):
        out, h = self.decoder(self.dec_emb(tokens)[:, None, :], h[None].contiguous())
        return {"logits": self.fc(out[:, 0]), "h": h[0]}
