"""Tests for torchdecoupled.data.text: hand-written windows, byte streams rebuilt from the windows, the
directory order, the seed's effect, the bundled corpus against hashlib, every refusal."""
import hashlib
import platform

import pytest
import torch

from torchdecoupled.data import DATASETS, load_dataset
from torchdecoupled.data.text import TextData, decode, encode, load_text

ALPHABET = b"abcdefghijklmnopqrstuvwxyz0123456789"  # 36 bytes


def rows(t):
    return [bytes(r) for r in t.tolist()]


def train_stream(data):
    """The training bytes the windows cover, rebuilt: rows of inputs, then the last target byte."""
    return b"".join(rows(data.train_x)) + bytes([data.train_y[-1, -1].item()])


def test_windows_by_hand(tmp_path):
    path = tmp_path / "abc.txt"
    path.write_bytes(ALPHABET)
    data = load_text(str(path), context=4, val_fraction=0.25, seed=0)
    # 36 bytes: round(9) = 9 validate ("123456789"), 27 train; validation windows at offset 0, stride 4
    assert rows(data.test_x) == [b"1234", b"5678"] and rows(data.test_y) == [b"2345", b"6789"]
    o = data.train_offset
    assert 0 <= o < 4 and len(data.train_x) == (27 - o - 1) // 4
    assert rows(data.train_x) == [ALPHABET[o + 4 * i: o + 4 * i + 4] for i in range(len(data.train_x))]
    assert torch.equal(data.train_y[:, :-1], data.train_x[:, 1:])
    assert torch.equal(data.train_y[:, -1], torch.tensor([ALPHABET[o + 4 * i + 4] for i in range(len(data.train_x))]))
    for t in (data.train_x, data.train_y, data.test_x, data.test_y):
        assert t.dtype == torch.int64 and t.shape[1] == 4
    assert data.name == "text" and data.num_classes == 256 and data.in_shape == (4,) and data.augment is None
    assert data.source == {"name": "abc.txt", "path": str(path), "licence": "unknown (user text)",
                           "sha256": hashlib.sha256(ALPHABET).hexdigest(), "bytes": 36}


def test_multibyte_utf8_is_bytes(tmp_path):
    text = "Grüße aus Köln — naïve café, ✓ 日本語 🙂\n" * 6
    raw = text.encode("utf-8")
    path = tmp_path / "utf8.txt"
    path.write_bytes(raw)
    data = load_text(str(path), context=8, val_fraction=0.2, seed=3)
    assert data.source["bytes"] == len(raw) > len(text)
    n_train = len(raw) - round(len(raw) * 0.2)
    o = data.train_offset
    assert train_stream(data) == raw[o: o + 8 * len(data.train_x) + 1]
    assert len(data.train_x) == (n_train - o - 1) // 8
    assert b"".join(rows(data.test_x)) == raw[n_train: n_train + 8 * len(data.test_x)]
    assert int(data.train_x.max()) >= 0xC3  # lead bytes of multibyte characters are tokens too
    assert decode(torch.tensor(list(raw))) == text


def test_directory_joins_txt_and_md_in_sorted_path_order(tmp_path):
    (tmp_path / "sub").mkdir()
    parts = {"b.txt": b"second file " * 5, "a.md": b"first file " * 5, "sub/c.TXT": "third ✓ ".encode() * 5}
    for name, raw in parts.items():
        (tmp_path / name).write_bytes(raw)
    (tmp_path / "skip.py").write_bytes(b"print('not text')")
    (tmp_path / "notes.rst").write_bytes(b"ignored")
    data = load_text(str(tmp_path), context=5, val_fraction=0.3, seed=1)
    stream = b"\n".join(parts[k] for k in ("a.md", "b.txt", "sub/c.TXT"))
    assert data.source["paths"] == [str(tmp_path / k) for k in ("a.md", "b.txt", "sub/c.TXT")]
    assert data.source["sha256"] == hashlib.sha256(stream).hexdigest() and data.source["bytes"] == len(stream)
    o, n_train = data.train_offset, len(stream) - round(len(stream) * 0.3)
    assert train_stream(data) == stream[o: o + 5 * len(data.train_x) + 1]
    assert b"".join(rows(data.test_x)) + bytes([data.test_y[-1, -1].item()]) == \
        stream[n_train: n_train + 5 * len(data.test_x) + 1]


def test_seed_moves_training_windows_only(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(ALPHABET * 20)
    loads = [load_text(str(path), context=16, seed=s) for s in range(8)]
    offsets = {d.train_offset for d in loads}
    assert len(offsets) > 1 and all(0 <= o < 16 for o in offsets)
    assert all(torch.equal(d.test_x, loads[0].test_x) and torch.equal(d.test_y, loads[0].test_y) for d in loads)
    assert any(not torch.equal(d.train_x[:5], loads[0].train_x[:5]) for d in loads)
    again = load_text(str(path), context=16, seed=5)
    assert torch.equal(again.train_x, loads[5].train_x)  # deterministic
    via_registry = load_dataset("text", str(path), seed=5, context=16)
    assert "text" in DATASETS and torch.equal(via_registry.train_x, loads[5].train_x)


def test_the_bundled_corpus_is_pythons_reference_topics():
    from pydoc_data.topics import topics

    raw = "\n".join(topics[k] for k in sorted(topics)).encode("utf-8")
    data = load_text(context=64)
    src = data.source
    assert src["sha256"] == hashlib.sha256(raw).hexdigest() and src["bytes"] == len(raw)
    assert "PSF License" in src["licence"] and src["module"] == "pydoc_data.topics"
    assert src["python"] == platform.python_version()
    n_val = round(len(raw) * 0.1)
    assert len(data.test_x) == (n_val - 1) // 64
    assert b"".join(rows(data.test_x[:3])) == raw[len(raw) - n_val: len(raw) - n_val + 192]
    assert isinstance(data, TextData) and "train=" in repr(data) and "context=64" in repr(data)


def test_validation_and_sample_keep_token_ids(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(ALPHABET * 4)
    data = load_text(str(path), context=4)
    x, y = data.validation(torch.float32)
    assert x.dtype == y.dtype == torch.int64 and torch.equal(x, data.test_x) and torch.equal(y, data.test_y)
    assert torch.equal(data.sample(3, torch.float64), data.train_x[:3])


def test_encode_decode_round_trip():
    text = "plain ASCII, Ünïcödé, ✓, 🙂"
    ids = encode(text)
    assert ids.dtype == torch.int64 and ids.tolist() == list(text.encode("utf-8"))
    assert decode(ids) == text and decode(ids.tolist()) == text
    assert decode([0x68, 0xFF, 0x69]) == "h\ufffdi"
    with pytest.raises(ValueError, match=r"byte tokens in \[0, 256\), got 256"):
        decode([1, 256])
    with pytest.raises(TypeError, match="takes a str, got bytes"):
        encode(b"x")


def test_too_short_text_says_how_many_bytes_are_needed(tmp_path):
    # context 4, val_fraction 0.1: validation needs round(0.1 n) >= 5 (n >= 46: round(4.5) == 4), training
    # 2 * 4 = 8 bytes (a window at any offset in [0, 4))
    path = tmp_path / "short.txt"
    path.write_bytes(b"x" * 45)
    with pytest.raises(ValueError, match=rf"{path}: 45 bytes .* need at least 46 bytes"):
        load_text(str(path), context=4)
    path.write_bytes(b"x" * 46)
    assert len(load_text(str(path), context=4).test_x) == 1
    # val_fraction 0.7: training is short; n = 25 trains 25 - round(17.5) = 7 < 8 bytes, n = 26 trains 8
    path.write_bytes(b"x" * 25)
    with pytest.raises(ValueError, match=r"25 bytes .* need at least 26 bytes"):
        load_text(str(path), context=4, val_fraction=0.7)
    path.write_bytes(b"x" * 26)  # enough whatever the seed: one training window at every offset
    loads = [load_text(str(path), context=4, val_fraction=0.7, seed=s) for s in range(12)]
    assert {d.train_offset for d in loads} == {0, 1, 2, 3} and all(len(d.train_x) >= 1 for d in loads)


def test_bad_files_are_refused_with_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'nope.txt'}: no such file or directory"):
        load_text(str(tmp_path / "nope.txt"))
    (tmp_path / "code.py").write_text("x = 1\n")
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}: no .txt or .md files"):
        load_text(str(tmp_path))
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"{empty}: the file is empty"):
        load_text(str(empty))
    latin = tmp_path / "latin1.md"
    latin.write_bytes("ok so far, café".encode("latin-1"))
    empty.unlink()
    with pytest.raises(ValueError, match=rf"{latin}: not UTF-8 text \(byte 0xe9 at offset 14"):
        load_text(str(tmp_path))


@pytest.mark.parametrize("kwargs, match", [
    ({"context": 0}, r"context must be an integer >= 1.*got 0"),
    ({"context": True}, r"context must be an integer >= 1.*got True"),
    ({"context": 8.0}, r"context must be an integer >= 1.*got 8.0"),
    ({"val_fraction": 0}, r"val_fraction must be a number in \(0, 1\).*got 0"),
    ({"val_fraction": 1.0}, r"val_fraction must be a number in \(0, 1\).*got 1.0"),
    ({"val_fraction": "0.1"}, r"val_fraction must be a number in \(0, 1\).*got '0.1'"),
])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_text(**kwargs)
