"""Download MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 into a data root (``--download``), every file
checked against the SHA-256 of the official file.

The sums are those torchvision's prototype datasets pin (pytorch/vision,
torchvision/prototype/datasets/_builtin/mnist.py and cifar.py); the CIFAR ones are also TensorFlow's
Keras loaders' ``file_hash`` (tensorflow/python/keras/datasets/cifar10.py, cifar100.py). A file whose
sum differs is removed and the download fails with one line naming the file and both sums.

$TORCHDECOUPLED_MIRROR (or ``base_url=``) replaces every dataset's base URL: the files are then fetched
from ``<mirror>/<file name>`` (a local copy, a proxy; the tests use a server on 127.0.0.1).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass

MIRROR_ENV = "TORCHDECOUPLED_MIRROR"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    """Where a dataset's files come from and where they go: ``root/subdir/<file>``; an archive is unpacked
    into the root."""

    base: str
    subdir: str
    files: dict[str, str]  # file name -> SHA-256 (hex) of the official file
    archive: bool = False


SOURCES = {
    "mnist": Source("https://ossci-datasets.s3.amazonaws.com/mnist/", "mnist", {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    }),
    "fashion_mnist": Source("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", "fashion_mnist", {
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    }),
    "cifar10": Source("https://www.cs.toronto.edu/~kriz/", "", {
        "cifar-10-python.tar.gz": "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    }, archive=True),
    "cifar100": Source("https://www.cs.toronto.edu/~kriz/", "", {
        "cifar-100-python.tar.gz": "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
    }, archive=True),
}


def download(name: str, root: str, base_url: str | None = None) -> None:
    """Fetch dataset ``name``'s files that ``root`` lacks, check each file's SHA-256, unpack archives."""
    if name not in SOURCES:
        raise ValueError(f"--download fetches {', '.join(sorted(SOURCES))}, not {name!r}: drop --download "
                         f"(digits, mnist1d and synthetic need no files; folder reads your own images)")
    src = SOURCES[name]
    base = base_url or os.environ.get(MIRROR_ENV) or src.base
    dest = os.path.join(root, src.subdir)
    os.makedirs(dest, exist_ok=True)
    for fname, sha in src.files.items():
        path = os.path.join(dest, fname)
        if not os.path.isfile(path):
            fetch(base.rstrip("/") + "/" + fname, path, sha)
        else:
            check_sha256(path, sha)
        if src.archive:
            unpack(path, root)


def fetch(url: str, path: str, sha256: str) -> None:
    """Stream ``url`` into ``path`` (through a temporary file: concurrent processes never see half a file)."""
    print(f"downloading {url} -> {path}", file=sys.stderr, flush=True)
    part = f"{path}.{os.getpid()}.part"
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
            shutil.copyfileobj(response, out, CHUNK)
    except (urllib.error.URLError, OSError) as e:
        if os.path.exists(part):
            os.remove(part)
        reason = getattr(e, "reason", e)
        raise FileNotFoundError(f"cannot download {url} ({reason}): check the connection, or download it by "
                                f"hand to {path}") from None
    check_sha256(part, sha256, shown=path)
    os.replace(part, path)


def check_sha256(path: str, expected: str, shown: str | None = None) -> None:
    """Remove ``path`` and raise if its SHA-256 is not ``expected``; ``shown`` names it in the message."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    actual = digest.hexdigest()
    if actual != expected:
        os.remove(path)
        raise ValueError(f"{shown or path}: SHA-256 mismatch (expected {expected}, got {actual}); the file was "
                         f"removed: run again to download it again")


def unpack(archive: str, root: str) -> None:
    """Extract a .tar.gz into ``root``; members must be plain files or folders inside ``root``. It is unpacked
    into a temporary folder first and its top-level entries moved in whole, so that concurrent processes
    (torchrun ranks) never read a half-extracted folder; an entry already in ``root`` is kept."""
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        for m in members:
            parts = m.name.replace("\\", "/").split("/")
            if not (m.isfile() or m.isdir()) or os.path.isabs(m.name) or ".." in parts:
                raise ValueError(f"{archive}: refusing to extract {m.name!r} (not a plain file inside the archive's "
                                 f"folder); remove the archive and download it again")
        tmp = tempfile.mkdtemp(prefix=".unpack-", dir=root)
        try:
            tar.extractall(tmp, members, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
            for entry in os.listdir(tmp):
                if not os.path.exists(os.path.join(root, entry)):
                    os.replace(os.path.join(tmp, entry), os.path.join(root, entry))
        finally:
            shutil.rmtree(tmp)
