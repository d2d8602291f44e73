"""Does the AWD-LSTM's regularisation push the LSTM off its fast kernel?

Times training steps (forward, backward, optimizer step) of the course's AWD-LSTM language model (course.text.models,
chapter 12: weight dropout on every hidden-to-hidden matrix, embedding dropout, dropout masks shared over the sequence,
weight tying) against a plain language model of the same sizes: an embedding, the same three `nn.LSTM` layers called
directly, and a linear decoder, with no dropout at all. Both are trained on the same random batches of token ids, with
the same optimizer, state carried from batch to batch (detached), as in language-model training. Prints

    AWD-LSTM / plain nn.LSTM steps per second: 0.90   (AWD 23.4 steps/s, plain 26.0 steps/s)

(one CPU run at one thread, small sizes; best of several runs each, the two interleaved so a busy machine slows both alike). The goal is at least 0.8: weight
dropout runs nn.LSTM's own fused kernel (cuDNN on a GPU) with a dropped copy of the matrix, so it costs one dropout of
a matrix per layer and step, not a Python loop over time steps.

    python bench/awd_lstm.py                  # CPU, one thread, small sizes
    python bench/awd_lstm.py --device cuda    # on a GPU server: WikiText-103 sizes (400, 1152, 3), bs 64, seq_len 72
"""
import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from course.text.models import LanguageModel


class PlainLM(nn.Module):
    "Embedding, stacked nn.LSTM layers of the AWD-LSTM's sizes, linear decoder: no dropout, no tying."
    def __init__(self, vocab_sz, emb_sz, n_hid, n_layers):
        super().__init__()
        self.embed = nn.Embedding(vocab_sz, emb_sz)
        sizes = [emb_sz] + [n_hid] * (n_layers - 1) + [emb_sz]
        self.rnns = nn.ModuleList([nn.LSTM(sizes[i], sizes[i + 1], batch_first=True) for i in range(n_layers)])
        self.out = nn.Linear(emb_sz, vocab_sz)
        self.state = None

    def reset(self): self.state = None

    def forward(self, x):
        out, states = self.embed(x), []
        for i, rnn in enumerate(self.rnns):
            out, s = rnn(out, None if self.state is None else self.state[i])
            states.append(tuple(t.detach() for t in s))
        self.state = states
        return self.out(out)


def steps_per_second(model, batches, device, n_warm=2):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train(); model.reset()
    def step(x, y):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward(); opt.step(); opt.zero_grad()
    for x, y in batches[:n_warm]: step(x, y)
    if device.type == "cuda": torch.cuda.synchronize()
    start = time.perf_counter()
    for x, y in batches[n_warm:]: step(x, y)
    if device.type == "cuda": torch.cuda.synchronize()
    return (len(batches) - n_warm) / (time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=12)
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
        vocab_sz, emb_sz, n_hid, n_layers, bs, seq_len = 2000, 64, 192, 3, 32, 36
    else:
        vocab_sz, emb_sz, n_hid, n_layers, bs, seq_len = 60000, 400, 1152, 3, 64, 72
    torch.manual_seed(0)
    awd = LanguageModel(vocab_sz, emb_sz, n_hid, n_layers).to(device)
    plain = PlainLM(vocab_sz, emb_sz, n_hid, n_layers).to(device)
    stream = torch.randint(2, vocab_sz, (bs, (args.steps + 2) * seq_len + 1), device=device)
    batches = [(stream[:, i:i + seq_len], stream[:, i + 1:i + 1 + seq_len]) for i in range(0, (args.steps + 2) * seq_len, seq_len)]
    best_awd = best_plain = 0.0
    for _ in range(args.runs):  # interleaved: a busy moment slows both
        best_awd = max(best_awd, steps_per_second(awd, batches, device))
        best_plain = max(best_plain, steps_per_second(plain, batches, device))
    print(f"sizes: vocab {vocab_sz}, emb {emb_sz}, hidden {n_hid}, {n_layers} layers, bs {bs}, seq_len {seq_len}, {device}")
    print(f"AWD-LSTM / plain nn.LSTM steps per second: {best_awd / best_plain:.2f}   "
          f"(AWD {best_awd:.1f} steps/s, plain {best_plain:.1f} steps/s)")


if __name__ == "__main__":
    main()
