"""Fashion-MNIST (IDX files), the image folder streamed from disk, and --download against a server on
127.0.0.1 (no other network), each on small files the test writes."""

import hashlib
import http.server
import io
import json
import os
import tarfile
import threading
from dataclasses import replace
from functools import partial

import numpy as np
from PIL import Image
import pytest
import torch

from test_data import write_cifar_pickles, write_idx
from torchdecoupled.config import RunConfig
from torchdecoupled.data import SOURCES, load_dataset, random_crop_flip
from torchdecoupled.data.download import MIRROR_ENV, download, unpack
from torchdecoupled.data.folder import IMAGENET_MEAN, IMAGENET_STD
from torchdecoupled.data.mnist import FILES, SPECS
from torchdecoupled.run import train


# ---- Fashion-MNIST ----------------------------------------------------------------------------------

def idx_files(rng, n_train=8, n_test=4):
    """The four MNIST-format arrays (images 28x28 uint8, labels 0..9)."""
    return {"train_x": rng.integers(0, 256, (n_train, 28, 28)), "train_y": np.arange(n_train) % 10,
            "test_x": rng.integers(0, 256, (n_test, 28, 28)), "test_y": (np.arange(n_test) * 3) % 10}


def write_fashion(folder, arrays, gz=("train_x", "test_y")):
    folder.mkdir(parents=True, exist_ok=True)
    for key, name in FILES.items():
        write_idx(folder / name, arrays[key], gz=key in gz)


def test_fashion_mnist_gz_and_raw_idx(tmp_path):
    arrays = idx_files(np.random.default_rng(0))
    write_fashion(tmp_path / "fashion_mnist", arrays)  # the layout --download writes
    ds = load_dataset("fashion_mnist", root=str(tmp_path))
    assert ds.name == "fashion_mnist" and ds.num_classes == 10 and ds.in_shape == (1, 28, 28)
    assert ds.train_x.shape == (8, 1, 28, 28) and ds.test_x.shape == (4, 1, 28, 28)
    assert ds.train_y.tolist() == arrays["train_y"].tolist() and ds.test_y.tolist() == [0, 3, 6, 9]
    pixel = arrays["train_x"][5, 7, 9] / 255.0  # from the gzipped file
    assert ds.train_x[5, 0, 7, 9].item() == pytest.approx((pixel - 0.2860) / 0.3530, abs=1e-5)
    pixel = arrays["test_x"][2, 27, 0] / 255.0  # from a raw file
    assert ds.test_x[2, 0, 27, 0].item() == pytest.approx((pixel - 0.2860) / 0.3530, abs=1e-5)
    flat = tmp_path / "flat"  # the four files directly in --data-root, all raw
    write_fashion(flat, arrays, gz=())
    assert torch.equal(load_dataset("fashion_mnist", root=str(flat)).train_x, ds.train_x)


def test_fashion_mnist_missing_and_malformed_files_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("fashion_mnist", root=str(tmp_path / "nowhere"))
    message = str(err.value)
    assert message.startswith("Fashion-MNIST not found") and "\n" not in message
    assert str(tmp_path / "nowhere" / "train-images-idx3-ubyte") in message and SPECS["fashion_mnist"]["url"] in message
    assert "--download" in message and "--data-root" in message
    arrays = idx_files(np.random.default_rng(1))
    bad = dict(arrays, train_y=np.arange(7))  # 8 images, 7 labels
    write_fashion(tmp_path / "a", bad)
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte: expected 8 labels .* got shape \(7,\)"):
        load_dataset("fashion_mnist", root=str(tmp_path / "a"))
    write_fashion(tmp_path / "b", dict(arrays, test_x=np.zeros((4, 28, 27))))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte: expected images of shape \(N, 28, 28\)"):
        load_dataset("fashion_mnist", root=str(tmp_path / "b"))
    write_fashion(tmp_path / "c", dict(arrays, test_y=np.array([0, 1, 12, 3])))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz: labels must be in \[0, 10\), got 0 .. 12"):
        load_dataset("fashion_mnist", root=str(tmp_path / "c"))
    write_fashion(tmp_path / "d", arrays)
    path = tmp_path / "d" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:50])  # a truncated download
    with pytest.raises(ValueError, match=f"{path}: cannot read it as a gzipped IDX file"):
        load_dataset("fashion_mnist", root=str(tmp_path / "d"))


def test_train_on_fashion_mnist(tmp_path):
    write_fashion(tmp_path / "data", idx_files(np.random.default_rng(2), n_train=12, n_test=4))
    summary = train(RunConfig(method="fdg", stages=2, dataset="fashion_mnist", data_root=str(tmp_path / "data"),
                              epochs=1, batch_size=4, progress=False, out=str(tmp_path / "run")))
    assert summary["dataset"] == "fashion_mnist" and summary["model"] == "cnn2d" and 0 <= summary["test_acc"] <= 1
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


# ---- the image folder ---------------------------------------------------------------------------------

def write_folder(root, classes=("zebra", "ant", "moth"), n_train=4, n_val=2, val="val", seed=0):
    """PNGs (and one JPEG per class) of random sizes; returns {path: uint8 array}."""
    rng, images = np.random.default_rng(seed), {}
    for split, n in (("train", n_train), (val, n_val)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                a = rng.integers(0, 256, (rng.integers(12, 40), rng.integers(12, 40), 3), dtype=np.uint8)
                path = root / split / c / (f"{i}.jpg" if i == 1 else f"{i}.png")
                Image.fromarray(a).save(path)
                images[str(path)] = a
    (root / "train" / "ant" / "notes.txt").write_text("not an image: ignored")
    return images


def batches_of(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_folder_classes_labels_shapes_and_normalization(tmp_path):
    write_folder(tmp_path)
    sq = np.random.default_rng(9).integers(0, 256, (16, 16), dtype=np.uint8)  # grey, already 16x16
    Image.fromarray(sq).save(tmp_path / "val" / "moth" / "9.png")
    data = load_dataset("folder", root=str(tmp_path), size=16, workers=0)
    assert data.classes == ["ant", "moth", "zebra"] and data.num_classes == 3 and data.in_shape == (3, 16, 16)
    assert len(data.train) == 12 and len(data.test) == 7  # notes.txt skipped
    assert [label for _, label in data.train.samples] == [0] * 4 + [1] * 4 + [2] * 4
    assert data.train.samples[0][0] == str(tmp_path / "train" / "ant" / "0.png")
    x, y = next(iter(data.validation(batch_size=100)))
    assert x.shape == (7, 3, 16, 16) and x.dtype == torch.float32 and y.tolist() == [0, 0, 1, 1, 1, 2, 2]
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    expected = (torch.from_numpy(sq).float().div(255).expand(3, 16, 16) - mean) / std  # grey -> RGB, no resize
    assert torch.allclose(x[4], expected, atol=1e-6)
    assert data.validation(torch.float64).__iter__().__next__()[0].dtype == torch.float64


def test_folder_batches_are_deterministic_with_any_workers_and_augmented(tmp_path):
    write_folder(tmp_path)
    data = load_dataset("folder", root=str(tmp_path), size=16, workers=0)
    state = torch.get_rng_state()
    one = data.train_loader(5, seed=3)
    epochs = [batches_of(one), batches_of(one)]  # the second pass over the loader is epoch 1
    assert [len(b[1]) for b in epochs[0]] == [5, 5, 2] and len(one) == 3
    again = load_dataset("folder", root=str(tmp_path), size=16, workers=2).train_loader(5, seed=3)
    for epoch in epochs:
        for (x, y), (x2, y2) in zip(epoch, batches_of(again)):
            assert torch.equal(x, x2) and torch.equal(y, y2)  # two worker processes: the same batches
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is never drawn from
    assert sorted(torch.cat([y for _, y in epochs[0]]).tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    assert not torch.equal(torch.cat([y for _, y in epochs[0]]), torch.cat([y for _, y in epochs[1]]))
    other = batches_of(data.train_loader(5, seed=4))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(epochs[0], other))
    # sample i of a batch is image i cropped (padding size/8 = 2) and flipped by its own generator
    sampler = iter(data.train_loader(5, seed=3).sampler)
    i, seed = next(sampler)
    plain = data.train[i][0] * data.train.std + data.train.mean  # back to [0, 1]
    crop = random_crop_flip(plain[None], torch.Generator().manual_seed(seed), padding=2)[0]
    assert torch.allclose(epochs[0][0][0][0], (crop - data.train.mean) / data.train.std, atol=1e-5)
    assert not torch.allclose(epochs[0][0][0][0], data.train[i][0])


def test_folder_resizes_the_shorter_side_and_cuts_the_centre(tmp_path):
    from torchdecoupled.data.folder import resize_center
    wide = torch.zeros(3, 20, 60, dtype=torch.uint8)
    wide[:, :, 15:45] = 255  # white middle half
    out = resize_center(wide, 10)  # 20x60 -> 10x30 (white 7.5 .. 22.5) -> the middle 10x10 (10 .. 20): white
    assert out.shape == (3, 10, 10) and torch.allclose(out, torch.ones(3, 10, 10))
    assert resize_center(torch.full((3, 5, 7), 51, dtype=torch.uint8), 16).shape == (3, 16, 16)  # upscaled


def test_folder_errors_name_the_path_and_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"image folder not found under .*nowhere.*train/<class>/<image>"):
        load_dataset("folder", root=str(tmp_path / "nowhere"))
    write_folder(tmp_path / "a", val="test")  # test/ serves when val/ is missing
    assert len(load_dataset("folder", root=str(tmp_path / "a"), workers=0).test) == 6
    (tmp_path / "a" / "test" / "wasp").mkdir()
    (tmp_path / "a" / "test" / "wasp" / "0.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"test/wasp: class 'wasp' is not among the training classes \(ant, moth"):
        load_dataset("folder", root=str(tmp_path / "a"))
    write_folder(tmp_path / "b")
    (tmp_path / "b" / "train" / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no images in .*train/empty \(looked for .png"):
        load_dataset("folder", root=str(tmp_path / "b"))
    write_folder(tmp_path / "c")
    broken = tmp_path / "c" / "train" / "moth" / "0.png"
    broken.write_bytes(b"not a png")
    data = load_dataset("folder", root=str(tmp_path / "c"), workers=0)
    index = [p for p, _ in data.train.samples].index(str(broken))
    with pytest.raises(ValueError, match=f"{broken}: cannot decode this image"):
        data.train[index]
    with pytest.raises(ValueError, match=r"image size must be >= 8"):
        load_dataset("folder", root=str(tmp_path / "c"), size=4)
    with pytest.raises(ValueError, match=r"batch_size must be in \[1, 12\]"):
        data.train_loader(13, seed=0)


def test_train_streams_the_folder_and_dist_equals_sim(tmp_path):
    write_folder(tmp_path / "data", n_train=6)
    runs = {}
    for engine in ("sim", "dist"):  # dist: the DataLoader and its workers run under rank 0
        cfg = RunConfig(method="fdg", stages=2, dataset="folder", data_root=str(tmp_path / "data"), model="cnn2d",
                        epochs=2, batch_size=4, engine=engine, progress=False, out=str(tmp_path / engine))
        runs[engine] = train(cfg)
        assert runs[engine]["dataset"] == "folder" and 0 <= runs[engine]["test_acc"] <= 1
    assert runs["sim"]["params_sha256"] == runs["dist"]["params_sha256"]
    records = [json.loads(r) for r in (tmp_path / "sim" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2


# ---- --download ---------------------------------------------------------------------------------------

@pytest.fixture
def server(tmp_path, monkeypatch):
    """An HTTP server on 127.0.0.1 serving tmp_path/served; $TORCHDECOUPLED_MIRROR points at it."""
    served = tmp_path / "served"
    served.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(MIRROR_ENV, f"http://127.0.0.1:{httpd.server_address[1]}/")
    yield served, requests
    httpd.shutdown()
    httpd.server_close()


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def serve_idx(served, monkeypatch, name, arrays):
    """Write the four .gz files to the server and point SOURCES[name] at their sums."""
    write_fashion(served, arrays, gz=tuple(FILES))
    sums = {f"{FILES[k]}.gz": sha256(served / f"{FILES[k]}.gz") for k in FILES}
    monkeypatch.setitem(SOURCES, name, replace(SOURCES[name], files=sums))


def test_download_checks_each_sum_then_loads(tmp_path, server, monkeypatch):
    served, requests = server
    arrays = idx_files(np.random.default_rng(3))
    serve_idx(served, monkeypatch, "fashion_mnist", arrays)
    root = tmp_path / "data"
    ds = load_dataset("fashion_mnist", root=str(root), download=True)
    assert sorted(os.listdir(root / "fashion_mnist")) == sorted(f"{n}.gz" for n in FILES.values())  # no .part
    assert ds.train_y.tolist() == arrays["train_y"].tolist() and len(requests) == 4
    load_dataset("fashion_mnist", root=str(root), download=True)
    assert len(requests) == 4  # present: nothing fetched again


def test_download_with_a_bad_sum_removes_the_file_and_says_so(tmp_path, server, monkeypatch):
    served, _ = server
    serve_idx(served, monkeypatch, "mnist", idx_files(np.random.default_rng(4)))
    name = "t10k-labels-idx1-ubyte.gz"
    good = SOURCES["mnist"].files[name]
    (served / name).write_bytes(b"tampered")
    root = tmp_path / "data"
    with pytest.raises(ValueError) as err:
        load_dataset("mnist", root=str(root), download=True)
    message = str(err.value)
    path = root / "mnist" / name
    assert message.startswith(f"{path}: SHA-256 mismatch") and "\n" not in message
    assert f"expected {good}" in message and f"got {hashlib.sha256(b'tampered').hexdigest()}" in message
    assert not path.exists() and not [f for f in os.listdir(root / "mnist") if f.endswith(".part")]
    assert (root / "mnist" / "train-images-idx3-ubyte.gz").exists()  # the files before it were good
    (root / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"corrupted on disk")
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz: SHA-256 mismatch"):
        download("mnist", str(root))  # a file already there is checked too


def test_download_unpacks_cifar_and_train_uses_it(tmp_path, server, monkeypatch):
    served, _ = server
    build = tmp_path / "build"
    write_cifar_pickles(build, "cifar10")
    with tarfile.open(served / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(build / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    sums = {"cifar-10-python.tar.gz": sha256(served / "cifar-10-python.tar.gz")}
    monkeypatch.setitem(SOURCES, "cifar10", replace(SOURCES["cifar10"], files=sums))
    root = tmp_path / "data"
    summary = train(RunConfig(method="fdg", stages=2, dataset="cifar10", data_root=str(root), download=True,
                              model="resnet20", epochs=1, batch_size=4, progress=False))
    assert summary["dataset"] == "cifar10" and (root / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert sorted(os.listdir(root)) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]  # no temporary folder


def test_unsafe_archive_and_unreachable_server(tmp_path, monkeypatch):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(ValueError, match=r"evil.tar.gz: refusing to extract '../outside.txt'"):
        unpack(str(archive), str(tmp_path / "root"))
    assert not (tmp_path / "outside.txt").exists()
    monkeypatch.setenv(MIRROR_ENV, "http://127.0.0.1:9/")  # the discard port: nothing listens
    with pytest.raises(FileNotFoundError, match=r"cannot download http://127.0.0.1:9/train-images-idx3-ubyte.gz"):
        download("mnist", str(tmp_path / "data"))
    with pytest.raises(ValueError, match=r"--download fetches cifar10, cifar100, fashion_mnist, mnist, not 'folder'"):
        download("folder", str(tmp_path / "data"))


def test_the_official_table_matches_the_readers():
    for name in ("mnist", "fashion_mnist"):
        assert sorted(SOURCES[name].files) == sorted(f"{n}.gz" for n in FILES.values())
        assert SOURCES[name].subdir in SPECS[name]["subdirs"]  # the reader finds what --download wrote
        assert SOURCES[name].base == SPECS[name]["url"]  # the missing-file message names the same place
    assert list(SOURCES["cifar10"].files) == ["cifar-10-python.tar.gz"]
    assert list(SOURCES["cifar100"].files) == ["cifar-100-python.tar.gz"]
    for src in SOURCES.values():
        assert src.base.startswith(("https://", "http://")) and src.base.endswith("/")
        assert all(len(s) == 64 and int(s, 16) >= 0 for s in src.files.values())
    assert SOURCES["mnist"].files["train-images-idx3-ubyte.gz"].startswith("440fcabf73cc546f")  # torchvision's pin
