import pytest
import torch

from mnistlit.data import MNIST_MEAN, MNIST_STD, MNISTDataModule, split_indices
from mnistlit.errors import MnistlitError
from mnistlit.sources import IDXDataset


def make_datamodule(tiny_data, **kwargs) -> MNISTDataModule:
    data_dir, md5 = tiny_data
    return MNISTDataModule(data_dir=str(data_dir), dataset=IDXDataset(md5=md5, mirrors=[]), **kwargs)


def test_split_is_deterministic_disjoint_and_complete() -> None:
    train, val = split_indices(1000, 100, seed=7)
    again_train, again_val = split_indices(1000, 100, seed=7)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    assert len(val) == 100 and len(train) == 900
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(1000))
    assert not torch.equal(val, split_indices(1000, 100, seed=8)[1])


def test_stages_get_the_right_sizes(tiny_data) -> None:
    dm = make_datamodule(tiny_data, batch_size=32, val_size=100)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (1400, 100, 200)
    assert len(dm.train_dataloader()) == 44  # ceil(1400 / 32)


def test_batches_are_normalised_float_on_the_device(tiny_data) -> None:
    dm = make_datamodule(tiny_data, batch_size=32, val_size=100)
    dm.prepare_data()
    dm.setup("fit")
    raw_images, raw_labels = next(iter(dm.val_dataloader()))
    assert raw_images.dtype == torch.uint8 and raw_images.shape == (32, 28, 28)
    assert torch.equal(raw_images, dm.val_set.images[:32])

    images, labels = dm.on_after_batch_transfer((raw_images, raw_labels), 0)
    assert images.dtype == torch.float32 and images.shape == (32, 1, 28, 28)
    expected = (raw_images.float() / 255 - MNIST_MEAN) / MNIST_STD
    torch.testing.assert_close(images[:, 0], expected)
    assert torch.equal(labels, raw_labels)


def test_training_batches_cover_the_training_set_once_per_epoch(tiny_data) -> None:
    dm = make_datamodule(tiny_data, batch_size=64, val_size=100)
    dm.prepare_data()
    dm.setup("fit")
    seen = torch.cat([images.flatten(1) for images, _ in dm.train_dataloader()])
    assert seen.shape[0] == len(dm.train_set)
    assert torch.equal(torch.unique(seen, dim=0), torch.unique(dm.train_set.images.flatten(1), dim=0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"batch_size": 0}, "batch_size must be at least 1"), ({"val_size": 0}, "val_size must be at least 1")],
)
def test_bad_sizes_are_refused(tiny_data, kwargs, message) -> None:
    with pytest.raises(MnistlitError, match=message):
        make_datamodule(tiny_data, **kwargs)


def test_a_validation_split_as_large_as_the_training_set_is_refused(tiny_data) -> None:
    dm = make_datamodule(tiny_data, val_size=1500)
    with pytest.raises(MnistlitError, match="val_size=1500 leaves no training images"):
        dm.setup("fit")
