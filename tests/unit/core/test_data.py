"""core/data.py and core/batches.py: the DataModule, its splits and its resumable batches."""

import pytest
import torch

from mnistlit.core.batches import InMemoryDigits, ResumableBatches, split_indices
from mnistlit.core.datasets import IDXDataset
from mnistlit.core.errors import MnistlitError
from mnistlit.core.inputs import MNIST_MEAN, MNIST_STD
from mnistlit.runs.data import MNISTDataModule


def make_datamodule(tiny_data, **kwargs) -> MNISTDataModule:
    data_dir, md5 = tiny_data
    return MNISTDataModule(data_dir=str(data_dir), dataset=IDXDataset(md5=md5, mirrors=[]), **kwargs)


def numbered(count: int) -> InMemoryDigits:
    """A dataset whose labels are the image indices, so batches show which images they hold."""
    return InMemoryDigits(torch.zeros(count, 28, 28, dtype=torch.uint8), torch.arange(count))


def labels_of(loader: ResumableBatches) -> list[int]:
    return [label for _, labels in loader for label in labels.tolist()]


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


def test_each_epoch_has_its_own_order_and_resumes_after_the_last_batch_served() -> None:
    epoch = 0
    loader = ResumableBatches(numbered(100), batch_size=8, shuffle=True, seed=3, current_epoch=lambda: epoch)
    first = labels_of(loader)
    assert sorted(first) == list(range(100)) and first != list(range(100))
    epoch = 1
    second = labels_of(loader)
    assert sorted(second) == list(range(100)) and second != first

    batches = iter(loader)
    for _ in range(5):
        next(batches)
    state = loader.state_dict()
    assert state == {"seed": 3, "epoch": 1, "served": 5}
    fresh = ResumableBatches(numbered(100), batch_size=8, shuffle=True, current_epoch=lambda: 1)
    iter(fresh)  # an iterator that is never advanced (Lightning makes one to check) changes nothing
    fresh.load_state_dict(state)
    assert labels_of(fresh) == second[40:]
    assert labels_of(fresh) == second, "only the pass right after a restore continues"


def test_a_restored_state_from_another_epoch_starts_the_current_epoch_afresh() -> None:
    loader = ResumableBatches(numbered(100), batch_size=8, shuffle=True, seed=3, current_epoch=lambda: 1)
    expected = labels_of(loader)
    finished_epoch_0 = {"seed": 3, "epoch": 0, "served": 13}  # what an epoch-end checkpoint holds
    loader.load_state_dict(finished_epoch_0)
    assert labels_of(loader) == expected


@pytest.mark.parametrize("total", [100, 101])
def test_ddp_shards_are_disjoint_and_cover_the_set(total: int) -> None:
    def shards(shuffle: bool) -> list[list[int]]:
        return [
            labels_of(ResumableBatches(numbered(total), 8, shuffle, seed=5, rank=rank, world_size=2))
            for rank in (0, 1)
        ]

    rank0, rank1 = shards(shuffle=False)  # evaluation: every image exactly once
    assert sorted(rank0 + rank1) == list(range(total))
    rank0, rank1 = shards(shuffle=True)  # training: equal lengths, so both ranks step together
    assert len(rank0) == len(rank1) == (total + 1) // 2
    assert set(rank0 + rank1) == set(range(total))
    assert len(set(rank0) & set(rank1)) == total % 2  # the one index repeated as padding


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
