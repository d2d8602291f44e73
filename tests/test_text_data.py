"""Text data (course.text.core and course.text.data, chapter 10): tokenizer round trips, byte-pair encoding,
parallel and cached tokenization, the vocabulary rules, and the layout of language-model and classifier batches."""
import os

import pandas as pd
import pytest
import torch

import course.text.core as core
from course.text.core import (BOS, PAD, SPECIAL_TOKENS, TK_MAJ, TK_REP, TK_UP, TK_WREP, UNK, WordTokenizer, bpe_decode,
                              bpe_encode, learn_bpe, load_tokens, save_tokens, tokenize_files, tokenize_texts)
from course.text.data import LMLoader, Numericalize, SortedLoader, TextDataLoaders, make_vocab

TEXTS = ["This film is GREAT!!!! I loved it, really really really loved it.",
         "Nooooo... It was sooooo bad. \"Never\" again, said Anna (twice).",
         "The plot was DULL, DULL, DULL: I would NOT watch it again; 2 out of 10.",
         "A well-made story, and the cast's work is superb.\n\nSee it!"]


def test_tokenizer_rules():
    tok = WordTokenizer()
    toks = tok(TEXTS[0])
    assert toks[:3] == [BOS, TK_MAJ, "this"] and [TK_UP, "great", TK_REP, "4", "!"] == toks[5:10]
    assert [TK_WREP, "3", "really"] == toks[toks.index(TK_WREP):toks.index(TK_WREP) + 3]
    assert tok("a<br /><br />b   c &amp; d") == [BOS, "a", "\n", "\n", "b", "c", "&", "d"]
    assert SPECIAL_TOKENS[:2] == [UNK, PAD] and len(SPECIAL_TOKENS) == 9


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_through_the_vocabulary(text):
    "decode(numericalize(tokenize(t))) gives t back for texts whose tokens are all in the vocabulary."
    df = pd.DataFrame({"text": TEXTS * 3, "label": ["a", "b"] * 6, "is_valid": [False] * 8 + [True] * 4})
    dls = TextDataLoaders.from_df(df, min_freq=1, bs=2, n_workers=1, device="cpu")
    ids = dls.numericalize(dls.tokenize(text))
    assert 0 not in ids.tolist()  # no xxunk: the text is within the vocabulary
    assert dls.decode(ids) == text


def test_unknown_words_and_vocab_rules():
    lists = [["b", "a", "a", "c", "c", "c", "d"], ["c", "xxbos"]]
    v = make_vocab(lists, min_freq=2)
    assert v[:9] == SPECIAL_TOKENS and v[9:11] == ["c", "a"] and "b" not in v and len(v) % 8 == 0
    assert make_vocab(lists, min_freq=1, max_vocab=10)[9] == "c" and len(make_vocab(lists, min_freq=1, max_vocab=10)) == 16
    num = Numericalize(v)
    assert num(["c", "zzz", "xxpad"]).tolist() == [9, 0, 1] and num.decode(torch.tensor([9, 10])) == ["c", "a"]


def test_bpe_from_scratch_is_lossless():
    corpus = [t * 3 for t in TEXTS]
    merges = learn_bpe(corpus, 60)
    assert len(merges) == 60 and len(set(merges)) == 60
    for text in TEXTS + ["unseen Zyxq!!\t  ünïcode  ", ""]:
        pieces = bpe_encode(text, merges)
        assert bpe_decode(pieces) == text
    assert len(bpe_encode(TEXTS[0], merges)) < len(TEXTS[0])  # the merges do shorten seen text
    assert learn_bpe(["low"] * 5 + ["lower"] * 2 + ["newest"] * 6 + ["widest"] * 3, 1) == [("s", "t")]


def test_parallel_tokenizer_equals_serial():
    texts = TEXTS * 50
    serial = tokenize_texts(texts, n_workers=1, progress=False)
    assert tokenize_texts(texts, n_workers=2, chunk_size=7, progress=False) == serial
    assert serial == [WordTokenizer()(t) for t in texts]


def test_token_file_round_trip(tmp_path):
    lists = [WordTokenizer()(t) for t in TEXTS] + [[]]
    save_tokens(tmp_path / "t.npz", lists)
    assert load_tokens(tmp_path / "t.npz") == lists


def test_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    files = []
    for i, t in enumerate(TEXTS):
        (tmp_path / f"{i}.txt").write_text(t, encoding="utf-8"); files.append(tmp_path / f"{i}.txt")
    cache = tmp_path / "cache"
    first = tokenize_files(files, cache_dir=cache, n_workers=1, progress=False, verbose=False)
    assert first == [WordTokenizer()(t) for t in TEXTS] and len(list(cache.iterdir())) == 1

    def refuse(*args, **kwargs): raise AssertionError("tokenized again although the cache is valid")
    monkeypatch.setattr(core, "tokenize_texts", refuse)
    assert tokenize_files(files, cache_dir=cache, n_workers=1, progress=False, verbose=False) == first
    monkeypatch.undo()

    st = os.stat(files[1])
    files[1].write_text("Changed text.", encoding="utf-8")
    os.utime(files[1], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    again = tokenize_files(files, cache_dir=cache, n_workers=1, progress=False, verbose=False)
    assert again[1] == [BOS, TK_MAJ, "changed", "text", "."] and again[0] == first[0]
    assert len(list(cache.iterdir())) == 2
    # other rules, another key
    tokenize_files(files, tok=WordTokenizer(token_rules=[]), cache_dir=cache, n_workers=1, progress=False, verbose=False)
    assert len(list(cache.iterdir())) == 3


@pytest.mark.parametrize("shuffle", [False, True])
def test_lm_loader_targets_are_inputs_shifted_by_one(shuffle):
    docs = [torch.arange(d * 1000, d * 1000 + 5 + 3 * d) for d in range(12)]
    dl = LMLoader(docs, bs=5, seq_len=7, shuffle=shuffle, seed=3)
    for _ in range(2):  # two epochs
        batches = list(dl)
        assert len(batches) == len(dl)
        x = torch.cat([b[0] for b in batches], dim=1); y = torch.cat([b[1] for b in batches], dim=1)
        assert x.shape == (5, dl.row_len)
        # across batch boundaries and row boundaries, y is x one token on in the stream
        assert torch.equal(x.flatten()[1:], y.flatten()[:-1])
        for k in range(len(batches) - 1):  # row r of batch k+1 continues row r of batch k
            assert torch.equal(batches[k][1][:, -1], batches[k + 1][0][:, 0])
        kept = x.flatten().tolist()
        assert len(kept) == len(set(kept)) == 5 * dl.row_len  # every kept token of the stream once per epoch
        assert dl.n_tokens - len(kept) < 5 + 1  # fewer than bs (+1 for the last target) are dropped
        if not shuffle: assert torch.equal(x.flatten(), torch.cat(docs)[:5 * dl.row_len])
        for d in docs:  # each document stays whole and in order inside the stream
            pos = [kept.index(t) for t in d.tolist() if t in kept]
            if pos: assert pos == list(range(pos[0], pos[0] + len(pos)))


def test_lm_loader_shuffles_documents_each_epoch():
    docs = [torch.arange(d * 100, d * 100 + 10) for d in range(20)]
    dl = LMLoader(docs, bs=4, seq_len=8, shuffle=True, seed=0)
    a, b = next(iter(dl))[0], next(iter(dl))[0]
    assert not torch.equal(a, b)


def test_sorted_loader_pads_at_the_end_and_serves_every_text_once():
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(2, 50, (int(n),), generator=g) for n in torch.randint(1, 40, (101,), generator=g)]
    dl = SortedLoader(docs, list(range(101)), bs=8, shuffle=True, seed=0)
    seen, widths = [], []
    for x, y in dl:
        assert x.shape[1] == max(len(docs[i]) for i in y.tolist())  # padded to the batch's longest
        for row, i in zip(x, y.tolist()):
            n = len(docs[i])
            assert torch.equal(row[:n], docs[i]) and bool((row[n:] == 1).all())
        seen += y.tolist(); widths.append(x.shape[1])
    assert sorted(seen) == list(range(101)) and widths[0] == max(len(d) for d in docs)
    valid = [x.shape[1] for x, y in SortedLoader(docs, list(range(101)), bs=8)]
    assert valid == sorted(valid, reverse=True)


def test_text_dataloaders_from_folder(tmp_path):
    for split in ("train", "test"):
        for label, word in (("neg", "awful"), ("pos", "superb")):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(6):
                (tmp_path / split / label / f"{i}.txt").write_text(f"The film was {word}. Really {word}!", encoding="utf-8")
    lm = TextDataLoaders.from_folder(tmp_path, is_lm=True, bs=4, seq_len=5, min_freq=1, cache_dir=tmp_path / "c",
                                     n_workers=1, device="cpu")
    x, y = lm.one_batch()
    assert lm.is_lm and x.shape == (4, 5) and torch.equal(x[:, 1:], y[:, :-1])
    clas = TextDataLoaders.from_folder(tmp_path, vocab=lm.vocab, bs=4, cache_dir=tmp_path / "c", n_workers=1, device="cpu")
    x, y = clas.one_batch()
    assert clas.vocab == lm.vocab and clas.classes == ["neg", "pos"] and not clas.is_lm and clas.pad_idx == 1
    assert bool((x[:, 0] == lm.vocab.index(BOS)).all()) and y.dtype == torch.long
    assert sum(len(xb) for xb, _ in clas.valid) == 12
    (t,) = clas.test_dl(["The film was superb.", "Awful!"]).one_batch()
    assert t.shape == (2, 7) and t[1, 4:].tolist() == [1, 1, 1]


def test_rules_id_is_the_same_in_every_process():
    "The tokens cache and the language-model stand-in are named by it: a new Python process must find them again."
    import subprocess, sys
    code = "from course.text.core import WordTokenizer; print(WordTokenizer().rules_id())"
    ids = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout for _ in range(2)}
    assert len(ids) == 1 and ids == {WordTokenizer().rules_id() + "\n"}
