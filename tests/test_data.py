"""Tests for torchdecoupled.data: loaders (on fake files for CIFAR/MNIST), Batches, augmentation."""

import gzip
import pickle
import random
import struct

import numpy as np
import pytest
import torch

from torchdecoupled.data import Batches, Dataset, eval_batches, load_dataset, random_crop_flip
from torchdecoupled.data.cifar import _SPECS


def test_digits_shapes_standardization_and_fixed_split():
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=123)
    assert a.train_x.shape == (1438, 1, 8, 8) and a.test_x.shape == (359, 1, 8, 8)
    assert a.in_shape == (1, 8, 8) and a.num_classes == 10 and a.augment is None
    assert a.train_x.dtype == torch.float32 and a.train_y.dtype == torch.int64
    assert abs(a.train_x.mean().item()) < 1e-5 and abs(a.train_x.std().item() - 1) < 1e-5
    assert set(a.train_y.tolist()) == set(range(10))
    assert a.test_y[:12].tolist() == [6, 5, 5, 7, 9, 9, 8, 4, 6, 8, 6, 0]  # golden: the split must never change
    for x, y in ((a.train_x, b.train_x), (a.test_x, b.test_x), (a.test_y, b.test_y)):
        assert torch.equal(x, y)  # the split never depends on the run seed


def test_mnist1d_generates_caches_and_keeps_global_rng(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHDECOUPLED_CACHE", str(tmp_path))
    np.random.seed(7)
    random.seed(7)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(7)
    random.seed(7)
    first = load_dataset("mnist1d")
    assert np.random.rand() == expected_np and random.random() == expected_py  # mnist1d reseeds; we restore
    assert [f.name for f in tmp_path.iterdir()] and all(f.suffix == ".npz" for f in tmp_path.iterdir())
    second = load_dataset("mnist1d")  # from the cache
    assert first.train_x.shape == (4000, 1, 40) and first.test_x.shape == (1000, 1, 40)
    assert first.in_shape == (1, 40) and first.num_classes == 10
    for name in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(first, name), getattr(second, name))
    assert first.train_y.bincount().min() > 300  # about 400 per class
    with pytest.raises(ValueError, match="unknown mnist1d argument.*num_sampels.*valid:.*num_samples"):
        load_dataset("mnist1d", num_sampels=10)


def test_synthetic_is_seeded_and_shaped():
    a = load_dataset("synthetic", seed=1, in_shape=(2, 5), n_train=30, n_test=10, num_classes=4)
    b = load_dataset("synthetic", seed=1, in_shape=(2, 5), n_train=30, n_test=10, num_classes=4)
    c = load_dataset("synthetic", seed=2, in_shape=(2, 5), n_train=30, n_test=10, num_classes=4)
    assert a.train_x.shape == (30, 2, 5) and a.test_y.shape == (10,) and a.train_y.max() < 4
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, c.train_x)
    assert load_dataset("synthetic").train_x.shape[1:] == (3, 32, 32)


def test_unknown_dataset_and_bad_records():
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar' \(valid: cifar10, cifar100, digits, fashion_mnist, folder, mnist, mnist1d"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match="float32"):
        Dataset("d", torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, dtype=torch.int64),
                torch.zeros(1, 3), torch.zeros(1, dtype=torch.int64), 2, (3,))
    with pytest.raises(ValueError, match="in_shape"):
        Dataset("d", torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64),
                torch.zeros(1, 3), torch.zeros(1, dtype=torch.int64), 2, (4,))


def fake_images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_cifar_pickles(root, name, per_file=4):
    spec = _SPECS[name]
    folder = root / spec["py_dir"]
    folder.mkdir(parents=True)
    images, labels = [], []
    for i, fname in enumerate(spec["py_train"] + [spec["py_test"]]):
        data, fine = fake_images(per_file, i), [(3 * i + j) % spec["num_classes"] for j in range(per_file)]
        batch = {b"data": data, b"batch_label": b"fake"}
        if name == "cifar10":
            batch[b"labels"] = fine
        else:
            batch[b"fine_labels"], batch[b"coarse_labels"] = fine, [0] * per_file
        with open(folder / fname, "wb") as f:
            pickle.dump(batch, f)
        images.append(data)
        labels += fine
    return np.concatenate(images), np.array(labels)


def write_cifar_binary(root, name, per_file=3):
    spec = _SPECS[name]
    folder = root / spec["bin_dir"]
    folder.mkdir(parents=True)
    images, labels = [], []
    for i, fname in enumerate(spec["bin_train"] + [spec["bin_test"]]):
        data, fine = fake_images(per_file, 10 + i), np.arange(per_file, dtype=np.uint8) + i
        label_cols = [fine[:, None]] if name == "cifar10" else [np.full((per_file, 1), 99, np.uint8), fine[:, None]]
        (folder / fname).write_bytes(np.concatenate(label_cols + [data], axis=1).tobytes())
        images.append(data)
        labels += fine.tolist()
    return np.concatenate(images), np.array(labels)


def check_cifar(ds, name, images, labels, n_test):
    spec = _SPECS[name]
    assert ds.in_shape == (3, 32, 32) and ds.num_classes == spec["num_classes"] and ds.augment is not None
    assert len(ds.test_y) == n_test and len(ds.train_y) == len(labels) - n_test
    assert ds.train_y.tolist() + ds.test_y.tolist() == labels.tolist()
    x = torch.cat([ds.train_x, ds.test_x])
    raw = images.reshape(-1, 3, 32, 32)  # channel-major rows: 1024 red, 1024 green, 1024 blue
    for i, c, r, k in ((0, 0, 0, 0), (1, 1, 5, 30), (len(raw) - 1, 2, 31, 7)):
        want = (raw[i, c, r, k] / 255.0 - spec["mean"][c]) / spec["std"][c]
        assert abs(x[i, c, r, k].item() - want) < 1e-5
    assert ds.augment(ds.train_x, torch.Generator().manual_seed(0)).shape == ds.train_x.shape


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_pickle_format(tmp_path, name):
    images, labels = write_cifar_pickles(tmp_path, name)
    check_cifar(load_dataset(name, root=str(tmp_path)), name, images, labels, n_test=4)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_binary_format(tmp_path, name):
    images, labels = write_cifar_binary(tmp_path, name)
    check_cifar(load_dataset(name, root=str(tmp_path)), name, images, labels, n_test=3)


def test_missing_files_say_where_and_how(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("cifar10", root=str(missing))
    message = str(err.value)
    assert str(missing / "cifar-10-batches-py" / "data_batch_1") in message
    assert "cifar-10-python.tar.gz" in message and "--data-root" in message and "\n" not in message
    with pytest.raises(FileNotFoundError, match="CIFAR-100 not found.*cifar-100-python/train"):
        load_dataset("cifar100", root=str(missing))
    with pytest.raises(FileNotFoundError, match="MNIST not found.*train-images-idx3-ubyte.*--data-root"):
        load_dataset("mnist", root=str(missing))


def write_idx(path, array, gz=False):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def test_mnist_idx_plain_and_gzipped(tmp_path):
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (6, 28, 28)), rng.integers(0, 256, (2, 28, 28))
    write_idx(tmp_path / "train-images-idx3-ubyte", train, gz=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(6))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", test)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([9, 3]), gz=True)
    ds = load_dataset("mnist", root=str(tmp_path))
    assert ds.train_x.shape == (6, 1, 28, 28) and ds.test_x.shape == (2, 1, 28, 28) and ds.in_shape == (1, 28, 28)
    assert ds.train_y.tolist() == list(range(6)) and ds.test_y.tolist() == [9, 3]
    assert abs(ds.test_x[1, 0, 3, 4].item() - (test[1, 3, 4] / 255.0 - 0.1307) / 0.3081) < 1e-5
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 28, 28) + b"\x00")
    with pytest.raises(ValueError, match="header says shape"):
        load_dataset("mnist", root=str(tmp_path))


def toy(n=23):
    return torch.arange(n, dtype=torch.float32).view(n, 1) * 10, torch.arange(n)


def test_random_access_equals_sequential_and_covers_each_epoch():
    x, y = toy()
    seq = Batches(x, y, batch_size=5, seed=3)
    assert seq.per_epoch == 5
    batches = [seq.get(b) for b in range(3 * seq.per_epoch)]
    rnd = Batches(x, y, batch_size=5, seed=3)
    for b in torch.randperm(len(batches), generator=torch.Generator().manual_seed(0)).tolist():
        xb, yb = rnd.get(b)
        assert torch.equal(xb, batches[b][0]) and torch.equal(yb, batches[b][1])
    epochs = []
    for e in range(3):
        labels = torch.cat([batches[e * 5 + k][1] for k in range(5)])
        assert sorted(labels.tolist()) == list(range(23))  # every sample exactly once
        assert torch.equal(batches[e * 5][0][:, 0], batches[e * 5][1].float() * 10)  # x stays paired with y
        assert [seq.epoch_of(e * 5 + k) for k in range(5)] == [e] * 5
        epochs.append(labels)
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])
    assert [len(seq.indices(b)) for b in range(5)] == [5, 5, 5, 5, 3]


def test_seeds_drop_last_and_no_shuffle():
    x, y = toy()
    assert torch.equal(Batches(x, y, 4, seed=1).indices(7), Batches(x, y, 4, seed=1).indices(7))
    assert not torch.equal(Batches(x, y, 4, seed=1).indices(0), Batches(x, y, 4, seed=2).indices(0))
    dropped = Batches(x, y, 4, seed=1, drop_last=True)
    assert dropped.per_epoch == 5 and all(len(dropped.indices(b)) == 4 for b in range(12))
    assert dropped.epoch_of(5) == 1
    ordered = Batches(x, y, 4, seed=1, shuffle=False)
    assert ordered.indices(6).tolist() == [0, 1, 2, 3] and ordered.indices(5).tolist() == [20, 21, 22]


def test_batches_leave_global_rng_alone():
    x, y = toy()
    state = torch.get_rng_state()
    Batches(x.view(-1, 1, 1, 1).expand(-1, 1, 4, 4), y, 4, seed=0, augment=random_crop_flip).get(9)
    assert torch.equal(state, torch.get_rng_state())


def test_batches_bad_arguments():
    x, y = toy()
    for bs in (0, -1, 24):
        with pytest.raises(ValueError, match=rf"batch_size must be in \[1, 23\].*got {bs}"):
            Batches(x, y, bs, seed=0)
    with pytest.raises(ValueError, match="different lengths"):
        Batches(x, y[:-1], 4, seed=0)
    with pytest.raises(ValueError, match="non-negative, got -1"):
        Batches(x, y, 4, seed=0).get(-1)
    with pytest.raises(ValueError, match="positive"):
        eval_batches(x, y, 0)


def test_eval_batches_are_sequential():
    x, y = toy()
    got = list(eval_batches(x, y, 10))
    assert [len(b[1]) for b in got] == [10, 10, 3] and torch.equal(torch.cat([b[1] for b in got]), y)


def test_crop_flip_is_a_shifted_possibly_flipped_window():
    images = torch.randn(16, 3, 6, 6)
    out = random_crop_flip(images, torch.Generator().manual_seed(0), padding=2, fill=(1.0, 2.0, 3.0))
    again = random_crop_flip(images, torch.Generator().manual_seed(0), padding=2, fill=(1.0, 2.0, 3.0))
    assert out.shape == images.shape and torch.equal(out, again)
    padded = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1).repeat(16, 1, 10, 10)
    padded[:, :, 2:8, 2:8] = images
    flips = 0
    for i in range(16):
        windows = {(t, l, f): padded[i, :, t : t + 6, l : l + 6].flip(-1) if f else padded[i, :, t : t + 6, l : l + 6]
                   for t in range(5) for l in range(5) for f in (0, 1)}
        match = [key for key, w in windows.items() if torch.equal(w, out[i])]
        assert match, f"sample {i} is not a crop/flip of its padded image"
        flips += match[0][2]
    assert 0 < flips < 16


def test_batches_augment_depends_only_on_seed_and_batch():
    x = torch.randn(20, 3, 8, 8)
    y = torch.arange(20)
    a = Batches(x, y, 5, seed=4, augment=random_crop_flip)
    b = Batches(x, y, 5, seed=4, augment=random_crop_flip)
    late = b.get(13)[0]
    assert torch.equal(a.get(13)[0], late) and torch.equal(a.get(2)[0], b.get(2)[0])
    plain = Batches(x, y, 5, seed=4)
    assert not torch.equal(a.get(13)[0], plain.get(13)[0])
    ordered = Batches(x, y, 5, seed=4, augment=random_crop_flip, shuffle=False)
    assert torch.equal(ordered.get(1)[1], ordered.get(1 + ordered.per_epoch)[1])
    assert not torch.equal(ordered.get(1)[0], ordered.get(1 + ordered.per_epoch)[0])  # same images, new crops


class _Touch:
    """Unpickling this would create a file: what a crafted data file could do instead."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("content", ["garbage", "crafted"])
def test_a_cifar_batch_that_is_not_one_is_refused_and_runs_nothing(tmp_path, content):
    write_cifar_pickles(tmp_path, "cifar10")
    victim = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    touched = tmp_path / "touched"
    victim.write_bytes(b"\x80\x04garbage" if content == "garbage" else pickle.dumps({b"data": _Touch(str(touched))}))
    with pytest.raises(ValueError, match=rf"{victim}: not a CIFAR python batch \(UnpicklingError: "):
        load_dataset("cifar10", root=str(tmp_path))
    assert not touched.exists()
