"""Data files: bad labels, images and pixels are refused, naming the file."""
from __future__ import annotations
import pytest


def test_bad_labels_images_and_pixels_are_rejected_naming_the_file(tmp_path):
    import numpy as np

    from rnnofrnns.experiments.training import data as rdata
    from test_training import fake_mnist, write_idx

    fake_mnist(str(tmp_path))
    labels = np.arange(30) % 10
    labels[7] = 200
    write_idx(str(tmp_path / "train-labels-idx1-ubyte"), labels, 2049)
    with pytest.raises(rdata.DataError, match=r"train-labels-idx1-ubyte: label 200 of example 7 is outside \[0, 10\)"):
        rdata.load_task("smnist", str(tmp_path))
    fake_mnist(str(tmp_path))
    write_idx(str(tmp_path / "t10k-images-idx3-ubyte"), np.zeros((12, 27, 29)), 2051)
    with pytest.raises(rdata.DataError, match=r"t10k-images-idx3-ubyte holds images of \[27, 29\] pixels"):
        rdata.load_task("smnist", str(tmp_path))
    with pytest.raises(rdata.DataError, match="f.csv: label 2.5 of example 1 is not an integer"):
        rdata.check_labels(np.array([1.0, 2.5]), "f.csv")
    x = np.zeros((3, 4), dtype=np.float32)
    x[2, 1] = np.nan
    with pytest.raises(rdata.DataError, match="f.csv: example 2 holds NaN"):
        rdata.check_inputs(x, "f.csv")
