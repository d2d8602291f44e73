"""Recurrent text models (course.text.models, course.callback.rnn, course.text.learner): an LSTM written from its
equations equals nn.LSTM, the regularisers drop what they should and keep the plain nn.LSTM names, padding never changes
a classifier's prediction, and the AR/TAR callback adds exactly the hand-computed terms."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course.callback.rnn import ARTAR, ResetState
from course.text.learner import TextLearner, classifier_splitter, cross_entropy_flat, lm_splitter
from course.text.models import (AWDLSTM, LanguageModel, RNNDropout, TextClassifier, WeightDropout, embedding_dropout,
                                masked_concat_pool)

SIZES = dict(emb_sz=8, n_hid=12, n_layers=3)


def lstm_from_equations(x, h, c, w_ih, w_hh, b_ih, b_hh):
    "One LSTM layer step by step: x (B, T, n_in), h and c (B, n_out); PyTorch's gate order i, f, g, o."
    outs = []
    for t in range(x.size(1)):
        gates = x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs, dim=1), h, c


def test_lstm_from_equations_equals_nn_lstm_outputs_and_gradients():
    torch.manual_seed(0)
    lstm = nn.LSTM(5, 7, batch_first=True).double()
    x = torch.randn(3, 6, 5, dtype=torch.float64, requires_grad=True)
    h0, c0 = torch.randn(1, 3, 7, dtype=torch.float64), torch.randn(1, 3, 7, dtype=torch.float64)
    out, (h, c) = lstm(x, (h0, c0))
    ((out ** 2).sum() + h.sum() + 3 * c.sum()).backward()
    want_grads = [p.grad.clone() for p in lstm.parameters()] + [x.grad.clone()]
    params = [p.detach().clone().requires_grad_() for p in lstm.parameters()]  # weight_ih, weight_hh, bias_ih, bias_hh
    x2 = x.detach().clone().requires_grad_()
    out2, h2, c2 = lstm_from_equations(x2, h0[0], c0[0], *params)
    ((out2 ** 2).sum() + h2.sum() + 3 * c2.sum()).backward()
    assert torch.allclose(out2, out) and torch.allclose(h2, h[0]) and torch.allclose(c2, c[0])
    for got, want in zip([p.grad for p in params] + [x2.grad], want_grads):
        assert torch.allclose(got, want, atol=1e-10), (got - want).abs().max()


def test_weight_dropout_keeps_names_and_drops_only_in_training():
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 6, batch_first=True).double()
    wd = WeightDropout(lstm, weight_p=0.5)
    assert list(wd.state_dict()) == ["lstm." + k for k in nn.LSTM(4, 6).state_dict()]
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    before = lstm.weight_hh_l0.detach().clone()
    wd.train()
    out_train, _ = wd(x)
    ref = nn.LSTM(4, 6, batch_first=True).double()
    ref.load_state_dict(lstm.state_dict())
    want, _ = ref(x)
    assert not torch.allclose(out_train, want)  # the hidden-to-hidden matrix was dropped
    assert torch.equal(lstm.weight_hh_l0, before)  # the parameter itself is untouched
    # Training with a dropped matrix equals a plain LSTM whose weight_hh is that matrix: reproduce the mask by seed.
    torch.manual_seed(1); out_a, _ = wd(x)
    torch.manual_seed(1); dropped = F.dropout(lstm.weight_hh_l0, 0.5, training=True)
    ref.weight_hh_l0.data.copy_(dropped.detach()); want_a, _ = ref(x)
    assert torch.allclose(out_a, want_a)
    wd.eval()
    ref.load_state_dict(lstm.state_dict())
    out_eval, _ = wd(x)
    assert torch.allclose(out_eval, ref(x)[0])
    # gradients reach the wrapped parameter
    wd.train(); wd(x)[0].sum().backward()
    assert lstm.weight_hh_l0.grad is not None and lstm.weight_hh_l0.grad.abs().sum() > 0


def test_rnn_dropout_one_mask_per_sequence_and_embedding_dropout_whole_words():
    torch.manual_seed(0)
    x = torch.ones(4, 9, 16)
    d = RNNDropout(0.5).train()(x)
    assert torch.equal(d, d[:, :1].expand_as(d))  # the same mask at every step
    assert set(d.unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(RNNDropout(0.5).eval()(x), x)
    emb = nn.Embedding(10, 6, padding_idx=1)
    words = torch.tensor([[3, 4, 3, 5, 3, 4]])
    out = embedding_dropout(emb, words, 0.5)
    for w in (3, 4):  # every occurrence of a word is dropped or kept together
        rows = out[0][words[0] == w]
        assert torch.equal(rows, rows[:1].expand_as(rows))
        assert torch.allclose(rows[0], 2 * emb.weight[w]) or torch.equal(rows[0], torch.zeros(6))
    assert torch.equal(embedding_dropout(emb, words, 0.5, training=False), emb(words))


def test_language_model_state_dict_names_and_tying():
    lm = LanguageModel(20, **SIZES)
    names = ["encoder.embed.weight"]
    for i in range(3):
        names += [f"encoder.rnns.{i}.lstm.{k}" for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
    assert list(lm.state_dict()) == names + ["decoder.out.weight", "decoder.out.bias"]
    assert lm.decoder.out.weight is lm.encoder.embed.weight
    sizes = [(lm.encoder.rnns[i].lstm.input_size, lm.encoder.rnns[i].lstm.hidden_size) for i in range(3)]
    assert sizes == [(8, 12), (12, 12), (12, 8)]
    groups = lm_splitter(lm)
    assert len(groups) == 4 and sum(len(g) for g in groups) == len(list(lm.parameters()))


def test_state_carries_across_calls_and_reset_forgets():
    torch.manual_seed(0)
    enc = AWDLSTM(20, **SIZES).double().eval()
    x = torch.randint(2, 20, (2, 10))
    whole = enc(x); enc.reset()
    halves = torch.cat([enc(x[:, :4]), enc(x[:, 4:])], dim=1)  # the second call continues from the first
    assert torch.allclose(whole, halves)
    enc.reset()
    assert not torch.allclose(enc(x[:, 4:]), whole[:, 4:])


def test_padding_never_changes_a_classifier_prediction():
    torch.manual_seed(0)
    model = TextClassifier(30, 3, **SIZES, seq_len=4).double()
    model.train()
    for _ in range(3): model(torch.randint(2, 30, (6, 11)))  # batch-norm statistics that are not the defaults
    model.eval()
    text = torch.tensor([2, 7, 8, 9, 10, 11, 12, 13, 14])
    outs = []
    for total in (9, 10, 13, 25):
        row = torch.full((total,), 1); row[:9] = text
        batch = torch.stack([row, torch.randint(2, 30, (total,))])  # beside another text of full length
        outs.append(model(batch)[0])
    for o in outs[1:]: assert torch.allclose(o, outs[0], atol=1e-12)
    # max_len: outputs do not depend on which chunks keep gradients
    model.encoder.max_len = 4
    assert torch.allclose(model(batch)[0], outs[-1])


def test_masked_concat_pool_by_hand():
    out = torch.arange(2 * 4 * 1, dtype=torch.float64).view(2, 4, 1)  # row 0: 0,1,2,3; row 1: 4,5,6,7
    out[0, 3] = 100.0  # a padded position with a large value must not win the max
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    got = masked_concat_pool(out, mask)
    assert torch.equal(got, torch.tensor([[2.0, 2.0, 1.0], [7.0, 7.0, 5.5]], dtype=torch.float64))


def test_artar_adds_the_hand_computed_terms_and_reset_runs():
    torch.manual_seed(0)
    model = LanguageModel(20, **SIZES).double()
    x, y = torch.randint(2, 20, (3, 7)), torch.randint(2, 20, (3, 7))
    model.train()
    learn = SimpleNamespace(model=model, training=True)
    pred = model(x)
    base = cross_entropy_flat(pred, y)
    learn.loss = base
    cb = ARTAR(alpha=2.0, beta=0.5); cb.learn = learn
    cb.after_loss()
    raw, dropped = model.raw_out, model.dropped_out
    want = base + 2.0 * (dropped ** 2).mean() + 0.5 * ((raw[:, 1:] - raw[:, :-1]) ** 2).mean()
    assert torch.allclose(learn.loss, want)
    assert not torch.allclose(learn.loss, base)
    learn.training, learn.loss = False, base  # no regularisation in validation
    cb.after_loss()
    assert learn.loss is base
    reset = ResetState(); reset.learn = learn
    assert model.encoder.state is not None
    reset.before_validate()
    assert model.encoder.state is None


def test_classifier_groups_and_encoder_round_trip(tmp_path):
    torch.manual_seed(0)
    lm, clas = LanguageModel(20, **SIZES), TextClassifier(20, 2, **SIZES)
    assert len(classifier_splitter(clas)) == 5
    dls = SimpleNamespace(train=[], valid=[], vocab=None, device=torch.device("cpu"))
    a = TextLearner(dls, lm, loss_func=cross_entropy_flat, path=tmp_path, progress=False)
    a.save_encoder("enc")
    b = TextLearner(dls, clas, path=tmp_path, progress=False)
    b.load_encoder("enc")
    for k, v in lm.encoder.state_dict().items(): assert torch.equal(clas.encoder.state_dict()[k], v)
