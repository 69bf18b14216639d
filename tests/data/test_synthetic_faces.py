"""SyntheticFaces: shapes, range, determinism, disjoint splits, identity carries the signal."""

import numpy as np
import pytest
import torch

from portrait_engine.data.faces import SyntheticFaces


def test_items_are_images_in_range_with_identity_labels():
    ds = SyntheticFaces(3, 4, size=40)
    assert len(ds) == 12
    assert ds.num_classes == 3
    assert list(ds.labels) == [0] * 4 + [1] * 4 + [2] * 4
    for index in (0, 5, 11, -1):
        image, label = ds[index]
        assert image.shape == (3, 40, 40)
        assert image.dtype == torch.float32
        assert torch.isfinite(image).all()
        assert image.min() >= -1 and image.max() <= 1
        assert label == ds.labels[index]
        assert isinstance(label, int)
    # not a flat image: a face has structure
    assert ds[0][0].std() > 0.1


def test_same_seed_same_images_other_seed_other_images():
    a, b = SyntheticFaces(2, 2, size=32, seed=3), SyntheticFaces(2, 2, size=32, seed=3)
    c = SyntheticFaces(2, 2, size=32, seed=4)
    assert torch.equal(a[3][0], b[3][0])
    assert not torch.allclose(a[3][0], c[3][0])


def test_cache_returns_the_same_images():
    plain, cached = SyntheticFaces(2, 2, size=32), SyntheticFaces(2, 2, size=32, cache=True)
    for i in range(4):
        assert torch.equal(plain[i][0], cached[i][0])
        assert torch.equal(cached[i][0], cached[i][0])


def _identity_features(ds):
    """Mean image of each identity, flattened."""
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    return images.view(ds.num_classes, -1, images[0].numel()).mean(1)


def test_test_split_identities_differ_from_train():
    train = SyntheticFaces(4, 1, size=32, split="train")
    test = SyntheticFaces(4, 1, size=32, split="test")
    from portrait_engine.data.faces.synthetic import identity_parameters

    for i in range(4):
        p_train = identity_parameters(0, "train", i)
        p_test = identity_parameters(0, "test", i)
        assert p_train["face_rx"] != p_test["face_rx"]
        assert not torch.equal(train[i][0], test[i][0])


def test_same_identity_images_are_closer_than_other_identities():
    """Nearest-class-mean on held-out images of the same identities beats chance by far: the
    identity, not the nuisance factors, dominates the appearance."""
    ds = SyntheticFaces(10, 6, size=32, seed=1)
    images = torch.stack([ds[i][0] for i in range(len(ds))]).view(10, 6, -1)
    # faces only: the centre crop, so the random background does not dominate the distance
    centre = torch.stack([ds[i][0][:, 8:24, 8:24] for i in range(len(ds))]).view(10, 6, -1)
    means = centre[:, :3].mean(1)
    probes = centre[:, 3:].reshape(30, -1)
    truth = torch.arange(10).repeat_interleave(3)
    predicted = torch.cdist(probes, means).argmin(1)
    accuracy = (predicted == truth).float().mean().item()
    assert accuracy > 0.5, accuracy  # chance is 0.1
    # and the images of one identity still vary (pose, light, expression)
    assert (images[:, 0] - images[:, 1]).abs().mean() > 0.02


def test_images_within_an_identity_vary():
    ds = SyntheticFaces(1, 3, size=48)
    a, b = ds[0][0], ds[1][0]
    assert (a - b).abs().mean() > 0.02


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_identities": 0, "images_per_identity": 1}, "num_identities"),
        ({"num_identities": 2, "images_per_identity": 0}, "images_per_identity"),
        ({"num_identities": 2, "images_per_identity": 1, "size": 4}, "size"),
        ({"num_identities": 2, "images_per_identity": 1, "split": "val"}, "split"),
        ({"num_identities": 2.5, "images_per_identity": 1}, "num_identities"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticFaces(**kwargs)


def test_index_out_of_range():
    ds = SyntheticFaces(1, 2, size=16)
    with pytest.raises(IndexError):
        ds[2]


def test_labels_are_an_array_of_ints():
    ds = SyntheticFaces(3, 2, size=16)
    assert isinstance(ds.labels, np.ndarray) and ds.labels.dtype.kind == "i"
