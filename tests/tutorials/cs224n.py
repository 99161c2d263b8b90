"""An NMT model in the style of Stanford CS224n's assignment 4: a bidirectional LSTM encoder (two layers here)
over packed sequences, an LSTMCell decoder with multiplicative (Luong) attention and input feeding
(o_prev concatenated to the embedding), projections of the encoder's last states into the decoder's first
state, and its own vocabulary (<pad>=0, <s>=1, </s>=2, <unk>=3; sources without <s> or </s>). Written here
in that style; nothing imports edgeseq."""

from __future__ import annotations

import random
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from tests.tutorials import toy


class VocabEntry:
    def __init__(self, word2id=None):
        if word2id:
            self.word2id = word2id
        else:
            self.word2id = dict()
            self.word2id["<pad>"] = 0  # Pad Token
            self.word2id["<s>"] = 1  # Start Token
            self.word2id["</s>"] = 2  # End Token
            self.word2id["<unk>"] = 3  # Unknown Token
        self.unk_id = self.word2id["<unk>"]
        self.id2word = {v: k for k, v in self.word2id.items()}

    def __getitem__(self, word):
        return self.word2id.get(word, self.unk_id)

    def __len__(self):
        return len(self.word2id)

    def add(self, word):
        if word not in self.word2id:
            wid = self.word2id[word] = len(self)
            self.id2word[wid] = word
            return wid
        return self[word]

    def words2indices(self, sents):
        return [[self[w] for w in s] for s in sents]

    def to_input_tensor(self, sents, device="cpu"):
        word_ids = self.words2indices(sents)
        width = max(len(s) for s in word_ids)
        padded = [s + [self["<pad>"]] * (width - len(s)) for s in word_ids]
        return torch.t(torch.tensor(padded, dtype=torch.long, device=device))  # (max_len, batch)

    @staticmethod
    def from_corpus(corpus, freq_cutoff=1):
        entry = VocabEntry()
        counts = Counter(w for sent in corpus for w in sent)
        for word in sorted(w for w, c in counts.items() if c >= freq_cutoff):
            entry.add(word)
        return entry


class Vocab:
    def __init__(self, src_vocab, tgt_vocab):
        self.src, self.tgt = src_vocab, tgt_vocab


class ModelEmbeddings(nn.Module):
    def __init__(self, embed_size, vocab):
        super().__init__()
        self.source = nn.Embedding(len(vocab.src), embed_size, padding_idx=vocab.src["<pad>"])
        self.target = nn.Embedding(len(vocab.tgt), embed_size, padding_idx=vocab.tgt["<pad>"])


class NMT(nn.Module):
    def __init__(self, embed_size, hidden_size, vocab, dropout_rate=0.2):
        super().__init__()
        self.model_embeddings = ModelEmbeddings(embed_size, vocab)
        self.hidden_size = hidden_size
        self.vocab = vocab
        self.encoder = nn.LSTM(embed_size, hidden_size, num_layers=2, bidirectional=True)
        self.decoder = nn.LSTMCell(embed_size + hidden_size, hidden_size)
        self.h_projection = nn.Linear(2 * hidden_size, hidden_size, bias=False)
        self.c_projection = nn.Linear(2 * hidden_size, hidden_size, bias=False)
        self.att_projection = nn.Linear(2 * hidden_size, hidden_size, bias=False)
        self.combined_output_projection = nn.Linear(3 * hidden_size, hidden_size, bias=False)
        self.target_vocab_projection = nn.Linear(hidden_size, len(vocab.tgt), bias=False)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, source, target):
        source_lengths = [len(s) for s in source]
        source_padded = self.vocab.src.to_input_tensor(source)  # (src_len, b)
        target_padded = self.vocab.tgt.to_input_tensor(target)  # (tgt_len, b)
        enc_hiddens, dec_init_state = self.encode(source_padded, source_lengths)
        enc_masks = self.generate_sent_masks(enc_hiddens, source_lengths)
        combined_outputs = self.decode(enc_hiddens, enc_masks, dec_init_state, target_padded)
        P = F.log_softmax(self.target_vocab_projection(combined_outputs), dim=-1)
        target_masks = (target_padded != self.vocab.tgt["<pad>"]).float()
        target_gold_words_log_prob = torch.gather(P, index=target_padded[1:].unsqueeze(-1), dim=-1).squeeze(-1)
        target_gold_words_log_prob = target_gold_words_log_prob * target_masks[1:]
        return target_gold_words_log_prob.sum(dim=0)

    def encode(self, source_padded, source_lengths):
        X = self.model_embeddings.source(source_padded)  # (src_len, b, e)
        X = pack_padded_sequence(X, source_lengths, enforce_sorted=False)
        enc_hiddens, (last_hidden, last_cell) = self.encoder(X)
        enc_hiddens, _ = pad_packed_sequence(enc_hiddens)
        enc_hiddens = enc_hiddens.permute(1, 0, 2)  # (b, src_len, 2h)
        init_decoder_hidden = self.h_projection(torch.cat((last_hidden[-2], last_hidden[-1]), 1))
        init_decoder_cell = self.c_projection(torch.cat((last_cell[-2], last_cell[-1]), 1))
        dec_init_state = (init_decoder_hidden, init_decoder_cell)
        return enc_hiddens, dec_init_state

    def decode(self, enc_hiddens, enc_masks, dec_init_state, target_padded):
        target_padded = target_padded[:-1]  # Chop of the <END> token for max length sentences.
        dec_state = dec_init_state
        batch_size = enc_hiddens.size(0)
        o_prev = torch.zeros(batch_size, self.hidden_size)
        combined_outputs = []
        enc_hiddens_proj = self.att_projection(enc_hiddens)
        Y = self.model_embeddings.target(target_padded)
        for Y_t in torch.split(Y, 1, dim=0):
            Y_t = torch.squeeze(Y_t, dim=0)
            Ybar_t = torch.cat((Y_t, o_prev), dim=1)
            dec_state, o_t, e_t = self.step(Ybar_t, dec_state, enc_hiddens, enc_hiddens_proj, enc_masks)
            combined_outputs.append(o_t)
            o_prev = o_t
        return torch.stack(combined_outputs, dim=0)

    def step(self, Ybar_t, dec_state, enc_hiddens, enc_hiddens_proj, enc_masks):
        dec_state = self.decoder(Ybar_t, dec_state)
        (dec_hidden, dec_cell) = dec_state
        e_t = torch.bmm(enc_hiddens_proj, dec_hidden.unsqueeze(2)).squeeze(2)
        if enc_masks is not None:
            e_t = e_t.masked_fill(enc_masks.bool(), -float("inf"))
        alpha_t = F.softmax(e_t, dim=1)
        a_t = torch.bmm(alpha_t.unsqueeze(1), enc_hiddens).squeeze(1)
        U_t = torch.cat((dec_hidden, a_t), dim=1)
        V_t = self.combined_output_projection(U_t)
        O_t = self.dropout(torch.tanh(V_t))
        combined_output = O_t
        return dec_state, combined_output, e_t

    def generate_sent_masks(self, enc_hiddens, source_lengths):
        enc_masks = torch.zeros(enc_hiddens.size(0), enc_hiddens.size(1), dtype=torch.float)
        for e_id, src_len in enumerate(source_lengths):
            enc_masks[e_id, src_len:] = 1
        return enc_masks

    def greedy_search(self, src_sent, max_decoding_time_step=70):
        """The author's greedy decode of one sentence (a list of words) -> the output words."""
        src_sents_var = self.vocab.src.to_input_tensor([src_sent])
        src_encodings, dec_init_vec = self.encode(src_sents_var, [len(src_sent)])
        src_encodings_att_linear = self.att_projection(src_encodings)
        h_tm1 = dec_init_vec
        att_tm1 = torch.zeros(1, self.hidden_size)
        y_tm1 = torch.tensor([self.vocab.tgt["<s>"]], dtype=torch.long)
        words = []
        for _ in range(max_decoding_time_step):
            y_t_embed = self.model_embeddings.target(y_tm1)
            x = torch.cat([y_t_embed, att_tm1], dim=-1)
            (h_t, cell_t), att_t, _ = self.step(x, h_tm1, src_encodings, src_encodings_att_linear, enc_masks=None)
            log_p_t = F.log_softmax(self.target_vocab_projection(att_t), dim=-1)
            y_tm1 = log_p_t.argmax(dim=-1)
            word = self.vocab.tgt.id2word[int(y_tm1)]
            if word == "</s>":
                break
            words.append(word)
            h_tm1, att_tm1 = (h_t, cell_t), att_t
        return words


def train(pairs, embed_size=32, hidden_size=48, epochs=6, batch_size=32, seed=0):
    random.seed(seed)
    torch.manual_seed(seed)
    src = [s.split() for s, _ in pairs]
    tgt = [["<s>", *t.split(), "</s>"] for _, t in pairs]
    vocab = Vocab(VocabEntry.from_corpus(src), VocabEntry.from_corpus(tgt))
    model = NMT(embed_size, hidden_size, vocab, dropout_rate=0.1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.004)
    model.train()
    data = list(zip(src, tgt))
    for _ in range(epochs):
        random.shuffle(data)
        for i in range(0, len(data) - batch_size + 1, batch_size):
            batch = data[i : i + batch_size]
            optimizer.zero_grad()
            loss = -model([s for s, _ in batch], [t for _, t in batch]).sum() / batch_size
            loss.backward()
            optimizer.step()
    model.eval()
    return model


def translate(model, sentence):
    with torch.no_grad():
        return " ".join(model.greedy_search(sentence.split()))


def trained(seed=0):
    """A model trained for a few seconds on the toy task, and held-out sentences."""
    return train(toy.pairs(2000, seed=seed), seed=seed), [s for s, _ in toy.pairs(260, seed=seed + 1)]
