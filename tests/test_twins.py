"""Offline twins: every vision, tabular, collab and text twin is learnable (a tiny model beats chance clearly),
and twins are deterministic by seed. Twins are built through untar_data with COURSE_OFFLINE=1 into a temporary cache.
"""
import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from course.data import twins
from course.data.twins import collab as collab_twins
from course.data.twins import tabular as tabular_twins
from course.data.twins import text as text_twins
from course.data.twins import vision as vision_twins
from course.data.external import URLs, untar_data


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    "Tiny models on a shared 2-core machine run fastest on one thread (and leave the other core to the rest)."
    import torch
    from threadpoolctl import threadpool_limits
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1): yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def twin(tmp_path_factory):
    "untar_data(URLs.X) offline, in a temporary cache shared by this test session."
    home = tmp_path_factory.mktemp("course-home")
    saved = {k: os.environ.get(k) for k in ("COURSE_HOME", "COURSE_DATA", "COURSE_OFFLINE")}
    os.environ.update(COURSE_HOME=str(home), COURSE_DATA=str(home / "data"), COURSE_OFFLINE="1")
    yield lambda url: untar_data(url)
    for k, v in saved.items():
        if v is None: os.environ.pop(k, None)
        else: os.environ[k] = v


def _images(files, size, mode="RGB"):
    "Images resized to `size` as a float array (N, C, H, W) in [0, 1]."
    def load(f):
        im = Image.open(f)
        im.draft(mode, (size[0] * 2, size[1] * 2))  # JPEGs decode at a reduced size: much faster
        return np.asarray(im.convert(mode).resize(size), dtype=np.float32) / 255
    arr = np.stack([load(f) for f in files])
    return np.ascontiguousarray(arr[:, None] if arr.ndim == 3 else arr.transpose(0, 3, 1, 2))


def _train(x, y, n_out, loss="ce", epochs=12, seg=False, seed=0, bs=32):
    "Train a tiny CNN for a few seconds on (x, y) tensors; return the model (in eval mode)."
    import torch
    from torch import nn
    torch.manual_seed(seed)
    c = x.shape[1]
    if seg:  # fully convolutional: one prediction per pixel
        model = nn.Sequential(nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, n_out, 1))
    else:
        model = nn.Sequential(nn.Conv2d(c, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                              nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, n_out))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    lf = {"ce": nn.functional.cross_entropy, "bce": nn.functional.binary_cross_entropy_with_logits, "mse": nn.functional.mse_loss}[loss]
    x, y = torch.tensor(np.array(x)), torch.tensor(np.array(y))
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(bs):
            opt.zero_grad(); lf(model(x[idx]), y[idx]).backward(); opt.step()
    return model.eval()


def _predict(model, x):
    import torch
    with torch.no_grad(): return model(torch.as_tensor(x)).numpy()


def _split(n, frac=0.25, seed=0):
    idx = np.random.default_rng(seed).permutation(n)
    return idx[int(n * frac):], idx[: int(n * frac)]


# ---------------------------------------------------------------- vision
def test_mnist_sample_learnable(twin):
    path = twin(URLs.MNIST_SAMPLE)
    df = pd.read_csv(path / "labels.csv")
    train, valid = df[df.name.str.startswith("train")], df[df.name.str.startswith("valid")]
    model = _train(_images([path / n for n in train.name], (16, 16), "L"), train.label.values, 2, epochs=4)
    acc = (_predict(model, _images([path / n for n in valid.name], (16, 16), "L")).argmax(1) == valid.label.values).mean()
    assert acc > 0.9, acc  # chance: 0.5


def test_mnist_learnable(twin):
    path = twin(URLs.MNIST)
    def load(split):
        files = sorted((path / split).glob("*/*.png"))
        return _images(files, (16, 16), "L"), np.array([int(f.parent.name) for f in files])
    (xt, yt), (xv, yv) = load("training"), load("testing")
    assert sorted(set(yt)) == list(range(10))
    acc = (_predict(_train(xt, yt, 10, epochs=4), xv).argmax(1) == yv).mean()
    assert acc > 0.8, acc  # chance: 0.1


def test_pets_learnable_breeds_and_species(twin):
    path = twin(URLs.PETS)
    files = sorted((path / "images").glob("*.jpg"))
    breeds = sorted({f.name.rsplit("_", 1)[0] for f in files})
    assert len(breeds) == 37 and sum(b[0].isupper() for b in breeds) == 12
    y = np.array([breeds.index(f.name.rsplit("_", 1)[0]) for f in files])
    x = _images(files, (32, 32))
    tr, va = _split(len(files))
    pred = _predict(_train(x[tr], y[tr], 37, epochs=30), x[va]).argmax(1)
    acc = (pred == y[va]).mean()
    is_cat = np.array([b[0].isupper() for b in breeds])
    species_acc = (is_cat[pred] == is_cat[y[va]]).mean()
    assert acc > 0.2, acc                  # chance: 1/37 = 0.03
    assert species_acc > 0.78, species_acc  # chance (always 'dog'): 25/37 = 0.68


def test_bears_learnable(tmp_path):
    path = twins.build_twin("BEARS", tmp_path)
    kinds = sorted(p.name for p in path.iterdir())
    assert kinds == ["black", "grizzly", "teddy"]
    files = sorted(path.glob("*/*.jpg"))
    y = np.array([kinds.index(f.parent.name) for f in files])
    x = _images(files, (24, 24))
    tr, va = _split(len(files), 0.3)
    acc = (_predict(_train(x[tr], y[tr], 3, epochs=10, bs=16), x[va]).argmax(1) == y[va]).mean()
    assert acc > 0.6, acc  # chance: 1/3


def test_imagenette_learnable(twin):
    path = twin(URLs.IMAGENETTE_160)
    df = pd.read_csv(path / "noisy_imagenette.csv")
    wnids = sorted(set(df.noisy_labels_0))
    def load(rows): return _images([path / p for p in rows.path], (24, 24)), np.array([wnids.index(w) for w in rows.noisy_labels_0])
    (xt, yt), (xv, yv) = load(df[~df.is_valid]), load(df[df.is_valid])
    acc = (_predict(_train(xt, yt, 10, epochs=8), xv).argmax(1) == yv).mean()
    assert acc > 0.5, acc  # chance: 0.1


def test_pascal_multilabel_learnable(twin):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    path = twin(URLs.PASCAL_2007)
    df = pd.read_csv(path / "train.csv")
    classes = vision_twins.PASCAL_CLASSES
    y = np.array([[c in l.split() for c in classes] for l in df.labels])
    def hue_histogram(f):  # a tiny model's input: which hues, and how much of each, the picture holds
        hsv = np.asarray(Image.open(f).convert("HSV").resize((48, 36))).reshape(-1, 3)
        return np.histogram(hsv[hsv[:, 1] > 128, 0], 40, (0, 256))[0] / len(hsv)
    x = np.stack([hue_histogram(path / "train" / f) for f in df.fname]) * 10
    tr, va = (~df.is_valid).values, df.is_valid.values
    scores = np.stack([LogisticRegression(C=10).fit(x[tr], y[tr, k]).decision_function(x[va]) for k in range(20)], 1)
    present = y[va].sum(0) > 0
    auc = roc_auc_score(y[va][:, present], scores[:, present], average="macro")
    assert auc > 0.8, auc  # chance: 0.5


def test_biwi_point_learnable(twin):
    path = twin(URLs.BIWI_HEAD_POSE)
    files = sorted(path.glob("*/*_rgb.jpg"))
    cal = np.genfromtxt(path / "01" / "rgb.cal", skip_footer=6)
    def centre(f):  # the head centre in mm, projected through the camera intrinsics (as chapter 6 does)
        t = np.genfromtxt(str(f).replace("_rgb.jpg", "_pose.txt"), skip_header=3)
        return [t[0] * cal[0][0] / t[2] + cal[0][2], t[1] * cal[1][1] / t[2] + cal[1][2]]
    y = (np.array([centre(f) for f in files], dtype=np.float32) / [320, 240] - 0.5).astype(np.float32)
    x = _images(files, (48, 36))
    people = np.array([f.parent.name for f in files])
    tr, va = people != "13", people == "13"
    pred = _predict(_train(x[tr], y[tr], 2, loss="mse", epochs=25), x[va])
    mse, baseline = ((pred - y[va]) ** 2).mean(), ((y[tr].mean(0) - y[va]) ** 2).mean()
    assert mse < 0.4 * baseline, (mse, baseline)


def test_biwi_sample_layout(twin):
    import pickle
    path = twin(URLs.BIWI_SAMPLE)
    centers = pickle.load(open(path / "centers.pkl", "rb"))
    files = sorted((path / "images").glob("*.jpg"))
    assert len(files) == len(centers) and all(f.name in centers for f in files)
    y, x = centers[files[0].name].tolist()
    assert 0 <= y < 120 and 0 <= x < 160


def test_camvid_tiny_segmentation_learnable(twin):
    path = twin(URLs.CAMVID_TINY)
    codes = (path / "codes.txt").read_text().split()
    assert len(codes) == 32
    files = sorted((path / "images").glob("*.png"))
    x = _images(files, (32, 24))
    y = np.stack([np.asarray(Image.open(path / "labels" / f"{f.stem}_P.png").resize((32, 24), Image.NEAREST)) for f in files]).astype(np.int64)
    tr, va = _split(len(files))
    pred = _predict(_train(x[tr], y[tr], len(codes), seg=True, epochs=40, bs=8), x[va]).argmax(1)
    acc = (pred == y[va]).mean()
    majority = np.bincount(y[tr].ravel()).max() / y[tr].size
    assert acc > majority + 0.2, (acc, majority)


# ---------------------------------------------------------------- text
def _text_classifier(train_texts, train_y, valid_texts, valid_y):
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    vec = CountVectorizer(ngram_range=(1, 2), min_df=2)
    clf = LogisticRegression(max_iter=500).fit(vec.fit_transform(train_texts), train_y)
    return (clf.predict(vec.transform(valid_texts)) == valid_y).mean()


def test_imdb_learnable(twin):
    path = twin(URLs.IMDB)
    def load(split):
        files = sorted((path / split).glob("*/*.txt"))
        return [f.read_text() for f in files], np.array([f.parent.name == "pos" for f in files])
    for f in list((path / "train" / "pos").glob("*.txt"))[:20]: assert 7 <= int(f.stem.split("_")[1]) <= 10
    assert len(list((path / "unsup").glob("*_0.txt"))) > 0 and (path / "imdb.vocab").is_file()
    acc = _text_classifier(*load("train"), *load("test"))
    assert acc > 0.8, acc  # chance: 0.5


def test_imdb_sample_learnable(twin):
    df = pd.read_csv(twin(URLs.IMDB_SAMPLE) / "texts.csv")
    assert list(df.columns) == ["label", "text", "is_valid"] and set(df.label) == {"positive", "negative"}
    t, v = df[~df.is_valid], df[df.is_valid]
    assert _text_classifier(t.text, t.label, v.text, v.label) > 0.75


def test_human_numbers_exact(twin):
    path = twin(URLs.HUMAN_NUMBERS)
    lines = (path / "train.txt").read_text().splitlines(True) + (path / "valid.txt").read_text().splitlines(True)
    tokens = " . ".join(l.strip() for l in lines).split(" ")
    assert (len(lines), len(tokens), len(set(tokens))) == (9998, 63095, 30)
    assert (path / "valid.txt").read_text().startswith("eight thousand one \neight thousand two \n")


# ---------------------------------------------------------------- collab
def _mf_mse(users, items, ratings, lo, hi, seed=0):
    "Train a dot-product + biases model on 80% of the ratings; return (valid MSE, MSE of predicting the mean)."
    import torch
    from torch import nn
    torch.manual_seed(seed)
    u, i, r = (torch.tensor(np.array(a)) for a in (users, items, ratings.astype(np.float32)))
    tr, va = _split(len(r), 0.2)
    nu, ni = int(u.max()) + 1, int(i.max()) + 1
    emb_u, emb_i, b_u, b_i = nn.Embedding(nu, 8), nn.Embedding(ni, 8), nn.Embedding(nu, 1), nn.Embedding(ni, 1)
    params = [p for m in (emb_u, emb_i, b_u, b_i) for p in m.parameters()]
    for p in params: nn.init.normal_(p, 0, 0.01)
    opt = torch.optim.Adam(params, 2e-2, weight_decay=0)
    def pred(idx):
        x = (emb_u(u[idx]) * emb_i(i[idx])).sum(1) + b_u(u[idx])[:, 0] + b_i(i[idx])[:, 0]
        return torch.sigmoid(x) * (hi - lo) + lo
    trt = torch.as_tensor(tr)
    for _ in range(15):
        for idx in trt[torch.randperm(len(trt))].split(1024):
            opt.zero_grad()
            loss = ((pred(idx) - r[idx]) ** 2).mean() + 1e-4 * sum((p ** 2).sum() for p in params)
            loss.backward(); opt.step()
    with torch.no_grad(): mse = ((pred(torch.as_tensor(va)) - r[va]) ** 2).mean().item()
    return mse, ((r[tr].mean() - r[va]) ** 2).mean().item()


def test_ml_100k_learnable(twin):
    path = twin(URLs.ML_100k)
    df = pd.read_csv(path / "u.data", delimiter="\t", header=None, names=["user", "movie", "rating", "timestamp"])
    movies = pd.read_csv(path / "u.item", delimiter="|", encoding="latin-1", usecols=(0, 1), names=("movie", "title"), header=None)
    assert set(df.movie) <= set(movies.movie) and df.rating.between(1, 5).all()
    mse, baseline = _mf_mse(df.user.values, df.movie.values, df.rating.values, 0.5, 5.5)
    assert mse < 0.8 * baseline, (mse, baseline)


def test_ml_sample_learnable(twin):
    df = pd.read_csv(twin(URLs.ML_SAMPLE) / "ratings.csv")
    assert list(df.columns) == ["userId", "movieId", "rating", "timestamp"]
    u, m = pd.factorize(df.userId)[0], pd.factorize(df.movieId)[0]
    mse, baseline = _mf_mse(u, m, df.rating.values, 0.0, 5.5)
    assert mse < 0.85 * baseline, (mse, baseline)


# ---------------------------------------------------------------- tabular
def test_adult_learnable(twin):
    from sklearn.ensemble import HistGradientBoostingClassifier
    df = pd.read_csv(twin(URLs.ADULT_SAMPLE) / "adult.csv")
    assert set(df.salary) == {">=50k", "<50k"} and df["education-num"].isna().any()
    y = (df.salary == ">=50k").values
    x = pd.get_dummies(df.drop(columns="salary"), dummy_na=True).astype(float).values
    tr, va = _split(len(df))
    acc = (HistGradientBoostingClassifier(max_iter=60).fit(x[tr], y[tr]).predict(x[va]) == y[va]).mean()
    majority = max(y[va].mean(), 1 - y[va].mean())
    assert acc > majority + 0.05, (acc, majority)


def test_bulldozers_learnable(twin):
    from sklearn.ensemble import RandomForestRegressor
    path = twin(URLs.BULLDOZERS)
    df = pd.read_csv(path / "TrainAndValid.csv", low_memory=False)
    assert list(df.columns) == tabular_twins.BULLDOZER_COLUMNS and (df.YearMade == 1000).any()
    assert {"Valid.csv", "Test.csv", "ValidSolution.csv"} <= {p.name for p in path.iterdir()}
    date = pd.to_datetime(df.saledate, format="%m/%d/%Y %H:%M")
    x = pd.DataFrame({"YearMade": df.YearMade, "saleYear": date.dt.year, "saleElapsed": date.astype("int64") // 10**9})
    for c in ("ProductSize", "ProductGroup", "Enclosure", "fiModelDesc", "fiProductClassDesc"): x[c] = pd.factorize(df[c])[0]
    x["hours"] = df.MachineHoursCurrentMeter.fillna(0)
    y = np.log(df.SalePrice.values)
    valid = (date >= "2011-10-01").values  # a time split, as chapter 9 makes
    rf = RandomForestRegressor(40, min_samples_leaf=3, n_jobs=1, random_state=0).fit(x[~valid], y[~valid])
    rmse = np.sqrt(((rf.predict(x[valid]) - y[valid]) ** 2).mean())
    assert rmse < 0.5 * y[valid].std(), (rmse, y[valid].std())


# ---------------------------------------------------------------- determinism
def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode()); h.update(f.read_bytes())
    return h.hexdigest()


SMALL = {  # each twin's generator, at a size that keeps three builds quick
    "mnist_sample": lambda d, seed: vision_twins.make_mnist_sample(d, seed=seed, n_train=2, n_valid=1),
    "human_numbers": text_twins.make_human_numbers,
    "imdb_sample": lambda d, seed: text_twins.make_imdb_sample(d, seed=seed, n=50),
    "imdb": lambda d, seed: text_twins.make_imdb(d, seed=seed, n_train=10, n_test=10, n_unsup=10),
    "ml_100k": collab_twins.make_ml_100k,
    "adult_sample": tabular_twins.make_adult_sample,
    "bulldozers": lambda d, seed: tabular_twins.make_bulldozers(d, seed=seed, n=300, n_test=30),
    "camvid_tiny": lambda d, seed: vision_twins._make_camvid(d, "camvid_tiny", seed, 8, 64, 48, False),
    "pascal_2007": lambda d, seed: vision_twins.make_pascal_2007(d, seed=seed, n_train=30, n_test=10),
    "imagenette": lambda d, seed: vision_twins._make_imagenette(d, "imagenette2-160", seed, 64, 2, 1),
    "biwi_head_pose": lambda d, seed: vision_twins.make_biwi_head_pose(d, seed=seed, people=2, frames=3),
}


@pytest.mark.parametrize("name", list(SMALL))
def test_twins_deterministic_by_seed(tmp_path, name):
    make = SMALL[name]
    a, b, c = make(tmp_path / "a", seed=1), make(tmp_path / "b", seed=1), make(tmp_path / "c", seed=2)
    assert _digest(a) == _digest(b)
    if name != "human_numbers":  # Human Numbers is exact: the seed changes nothing
        assert _digest(a) != _digest(c)


def test_pets_deterministic_small(tmp_path):
    a, b = vision_twins.make_pets(tmp_path / "a", seed=3, per_breed=2), vision_twins.make_pets(tmp_path / "b", seed=3, per_breed=2)
    assert _digest(a) == _digest(b)
