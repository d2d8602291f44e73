"""How fast are the text pieces of chapter 10: the language-model loader, and our word tokenizer?

Two measurements, each in one run (best of several runs, the contenders interleaved so a busy machine slows them alike):

    lm loader: LMLoader / hand loader                         tokens/s ratio (goal >= 0.9)
    lm loader: LMLoader / pre-built stream                    tokens/s ratio (reported: what the per-epoch shuffle costs)
    lm loader, into an embedding: LMLoader / pre-built stream tokens/s ratio (goal >= 0.9)
    tokenizer: WordTokenizer beside tokenizers' Whitespace pre-tokenizer, tokens/s each (reported, no goal)

The language-model loader (course.text.data.LMLoader) is timed over whole epochs of documents shaped like IMDb reviews
(random ids, 50 to 600 tokens each), shuffled: each epoch it joins the documents in a new order, cuts the stream into
`bs` rows and serves `seq_len` columns at a time. The hand loader does the same by hand, as you would write it: a
permutation, `torch.cat` of the documents in that order into one tensor, then slices of its `bs`-row view. The
pre-built stream is the floor: slices of a stream joined once, before timing, never shuffled; the gap to it is the one
copy of the corpus per epoch that shuffling documents needs. Each batch is summed so that every loop reads every token;
that is all the work per batch, so the copy (about as long as the whole epoch of slicing: torch.cat alone takes longer)
shows at its largest. The third line feeds each batch to the first layer of chapter 10's model instead, a 400-wide
embedding lookup, the least work a real training step does with a batch: there the copy is what it is in training, a
small share of the epoch.

The tokenizers are timed on the IMDb reviews (`untar_data(URLs.IMDB)`: the real ones on a server, the offline twin
with COURSE_OFFLINE=1): ours runs every rule of chapter 10 (HTML, repetitions, capitals, xxbos) and the regex splitter;
Hugging Face's `Whitespace` pre-tokenizer only splits into words and punctuation runs, in Rust. Our splitter alone
(`split_words`) is shown too, to separate the rules' cost from the splitting's.

    python bench/text.py                     # CPU, one thread
    python bench/text.py --device cuda       # the loader's batches on a GPU

The third text benchmark, the AWD-LSTM's training step against a plain nn.LSTM language model, is bench/awd_lstm.py.
"""
import argparse
import time

import torch

from course.text.core import WordTokenizer, fix_html, split_words
from course.text.data import LMLoader


def timed(f, device):
    if device.type == "cuda": torch.cuda.synchronize()
    start = time.perf_counter()
    f()
    if device.type == "cuda": torch.cuda.synchronize()
    return time.perf_counter() - start


def one_pass(batches):
    "Read every batch: the sum of its tokens (so both loops touch all the data)."
    total = 0
    for x, y in batches: total = total + x.sum() + y[:, -1].sum()
    return int(total)


def embed_pass(emb):
    "Read every batch through `emb`, an embedding layer: the first thing a language model does with a batch."
    def run(batches):
        total = 0.
        with torch.no_grad():
            for x, y in batches: total = total + emb(x)[:, -1].sum() + y[:, -1].sum()
        return float(total)
    return run


def hand_slices(stream, bs, seq_len):
    "Batches cut from a stream by hand: its `bs`-row view, `seq_len` columns at a time; y one token on."
    row_len = (len(stream) - 1) // bs
    xs, ys = stream[:bs * row_len].view(bs, row_len), stream[1:bs * row_len + 1].view(bs, row_len)
    for i in range(0, row_len, seq_len): yield xs[:, i:i + seq_len], ys[:, i:i + seq_len]


def hand_loader(docs, bs, seq_len, device, gen):
    "One epoch by hand: shuffle the documents, join them with torch.cat, slice."
    order = torch.randperm(len(docs), generator=gen).tolist()
    return hand_slices(torch.cat([docs[i] for i in order]).to(device), bs, seq_len)


def bench_loader(args, device, consume=one_pass, label="lm loader", goal="reported"):
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(50, 600, (args.docs,), generator=g).tolist()
    docs = [torch.randint(0, 60000, (n,), generator=g) for n in lengths]
    stream = torch.cat(docs).to(device)
    ours = LMLoader(docs, bs=args.bs, seq_len=args.seq_len, shuffle=True, device=device, seed=0)
    n_tokens, gen = args.bs * ours.row_len, torch.Generator().manual_seed(0)
    contenders = {"ours": lambda: consume(ours), "hand": lambda: consume(hand_loader(docs, args.bs, args.seq_len, device, gen)),
                  "floor": lambda: consume(hand_slices(stream, args.bs, args.seq_len))}
    for f in contenders.values(): f()  # warm-up
    times = {k: [] for k in contenders}
    for run in range(args.runs):
        for k, f in (contenders.items() if run % 2 == 0 else reversed(list(contenders.items()))):
            times[k].append(timed(f, device))
    rate = {k: n_tokens / min(ts) / 1e6 for k, ts in times.items()}
    if consume is one_pass:
        print(f"{label}: LMLoader / hand loader {rate['ours'] / rate['hand']:.2f} (tokens/s ratio, goal >= 0.9; "
              f"{rate['ours']:,.1f}M tokens/s against {rate['hand']:,.1f}M; {args.docs:,} documents, shuffled, "
              f"{len(ours)} batches of {args.bs} x {args.seq_len})", flush=True)
    print(f"{label}: LMLoader / pre-built stream {rate['ours'] / rate['floor']:.2f} (tokens/s ratio, {goal}; "
          f"slicing a stream joined once, never shuffled: {rate['floor']:,.1f}M tokens/s)", flush=True)


def bench_tokenizer(args):
    from tokenizers import pre_tokenizers
    from course.data.external import untar_data, URLs
    files = sorted(untar_data(URLs.IMDB).rglob("*.txt"))[:args.texts]
    texts = [f.read_text(encoding="utf-8") for f in files]
    tok, hf = WordTokenizer(), pre_tokenizers.Whitespace()
    contenders = {"WordTokenizer (all rules)": lambda: sum(len(tok(t)) for t in texts),
                  "split_words (the splitter alone)": lambda: sum(len(split_words(fix_html(t))) for t in texts),
                  "tokenizers Whitespace pre-tokenizer": lambda: sum(len(hf.pre_tokenize_str(t)) for t in texts)}
    counts = {name: f() for name, f in contenders.items()}  # warm-up, and the token counts
    times = {name: [] for name in contenders}
    for run in range(args.runs):
        for name, f in (contenders.items() if run % 2 == 0 else reversed(list(contenders.items()))):
            times[name].append(timed(f, torch.device("cpu")))
    rate = {name: counts[name] / min(ts) for name, ts in times.items()}
    for name in contenders:
        print(f"tokenizer: {name}: {rate[name] / 1e6:.2f}M tokens/s ({counts[name]:,} tokens from {len(texts):,} texts)")
    ours, theirs = rate["WordTokenizer (all rules)"], rate["tokenizers Whitespace pre-tokenizer"]
    print(f"tokenizer: WordTokenizer / tokenizers pre-tokenizer {ours / theirs:.2f} (tokens/s ratio, reported only)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=72)
    parser.add_argument("--texts", type=int, default=5_000, help="IMDb reviews to tokenize")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (0: torch's default)")
    args = parser.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bench_loader(args, device, goal="reported: the per-epoch copy against a loop that does nothing else")
    emb = torch.nn.Embedding(60000, 400).to(device)
    bench_loader(args, device, consume=embed_pass(emb), label="lm loader, into an embedding", goal="goal >= 0.9")
    bench_tokenizer(args)


if __name__ == "__main__":
    main()
