import numpy as np
import pytest
import torch

from resnorm import folders, machine
from resnorm.bundle import stratified_split
from resnorm.data import augment_draws, batches, crop_flip, load_data, synthetic
from resnorm.errors import DataError
from resnorm.home import decoded_dir
from tests.conftest import COLOURS, make_class_tree, write_image


def test_digits_default_is_split_70_15_15_stratified_and_fixed():
    d = load_data("digits", 16)
    assert (len(d.train), len(d.val), len(d.test)) == (1257, 270, 270)
    assert d.classes == tuple(str(i) for i in range(10)) and d.channels == 1
    assert d.train.images.shape == (1257, 1, 16, 16) and d.train.images.dtype == torch.uint8
    for split in (d.train, d.val, d.test):
        counts = torch.bincount(split.labels, minlength=10)
        assert counts.min() >= 0.9 * counts.float().mean()  # stratified: every class near its share
    again = load_data("digits", 16)
    assert torch.equal(d.test.images, again.test.images) and torch.equal(d.test.labels, again.test.labels)


def test_split_indices_are_disjoint_and_cover_every_image():
    labels = np.repeat(np.arange(5), 40)
    parts = stratified_split(labels)
    together = np.concatenate(list(parts.values()))
    assert len(together) == len(set(together)) == len(labels)


def test_digits_keep_their_pixels_at_native_size():
    from sklearn.datasets import load_digits

    d = load_data("digits", 8)
    raw = {bytes(np.rint(img * 255 / 16).astype(np.uint8)) for img in load_digits().images}
    assert all(bytes(x[0].numpy()) in raw for x in d.test.images)


def test_split_folder_reads_real_files_of_every_mode(split_folder):
    d = load_data(str(split_folder), 12)
    assert d.classes == tuple(sorted(COLOURS))
    assert (len(d.train), len(d.val), len(d.test)) == (24, 9, 12)
    assert d.train.images.shape == (24, 3, 12, 12)
    # RGBA, palette and JPEG files all arrive as RGB with their class's colour.
    for split in (d.train, d.val, d.test):
        for x, y in zip(split.images, split.labels):
            mean = x.float().mean(dim=(1, 2)).numpy()
            assert np.abs(mean - np.array(COLOURS[d.classes[y]])).max() < 20


def test_single_class_tree_is_split_by_class(image_tree):
    d = load_data(str(image_tree), 8)
    assert (len(d.train), len(d.val), len(d.test)) == (42, 9, 9)
    for split in (d.train, d.val, d.test):
        assert torch.bincount(split.labels).tolist() == [len(split) // 3] * 3
    again = load_data(str(image_tree), 8)
    assert torch.equal(d.val.images, again.val.images)


def test_a_folder_is_decoded_once_and_read_from_the_cache_after(split_folder, monkeypatch):
    first = load_data(str(split_folder), 12)
    (cached,) = decoded_dir().glob("splits-12px-*.pt")
    with monkeypatch.context() as m:
        m.setattr(folders, "read_image", lambda *a: pytest.fail("decoded again"))
        again = load_data(str(split_folder), 12)
    for s in ("train", "val", "test"):
        assert torch.equal(first.split(s).images, again.split(s).images)
        assert torch.equal(first.split(s).labels, again.split(s).labels)
    assert again.classes == first.classes and again.digest("test") == first.digest("test")
    # Another size, or a changed file, is another cache entry; the first one stays valid.
    load_data(str(split_folder), 8)
    write_image(split_folder / "train" / "cat" / "0.png", (0, 0, 0), seed=99)
    changed = load_data(str(split_folder), 12)
    assert not torch.equal(changed.train.images, first.train.images)
    assert len(list(decoded_dir().glob("splits-*.pt"))) == 3 and cached.exists()


def test_a_damaged_cache_is_decoded_again(split_folder):
    first = load_data(str(split_folder), 12)
    (cached,) = decoded_dir().glob("splits-12px-*.pt")
    cached.write_bytes(cached.read_bytes()[:100])
    again = load_data(str(split_folder), 12)
    assert torch.equal(first.train.images, again.train.images)
    assert torch.equal(torch.load(cached, weights_only=True)["train"]["images"], first.train.images)  # rewritten


def test_a_folder_too_big_for_memory_stops_before_decoding(split_folder, monkeypatch):
    monkeypatch.setattr(machine, "available_memory", lambda: 10_000)
    with pytest.raises(DataError, match=r"45 images at image_size 64 need 0\.0 GiB decoded, but only 0\.0 GiB"):
        load_data(str(split_folder), 64)
    assert not list(decoded_dir().glob("*.pt"))


def test_missing_path_is_named(tmp_path):
    with pytest.raises(DataError, match=f"data '{tmp_path / 'nope'}' is not a folder"):
        load_data(str(tmp_path / "nope"), 8)


def test_folder_without_class_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="Couldn't find any class folder"):
        load_data(str(tmp_path / "empty"), 8)


def test_class_folder_without_images_is_named(tmp_path):
    make_class_tree(tmp_path / "d", per_class=10, classes=("cat", "dog"))
    (tmp_path / "d" / "owl").mkdir()
    (tmp_path / "d" / "owl" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="no valid file for the classes owl"):
        load_data(str(tmp_path / "d"), 8)


def test_corrupt_image_is_named(tmp_path):
    root = make_class_tree(tmp_path / "d", per_class=10, classes=("cat", "dog"))
    bad = root / "dog" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(DataError, match=f"cannot read image {bad}"):
        load_data(str(root), 8)


def test_classes_that_differ_between_splits(split_folder):
    write_image(split_folder / "val" / "emu" / "0.png", (1, 2, 3))
    with pytest.raises(
        DataError, match="class folders differ between splits: train/ has cat, dog, owl but val/ has cat, dog, emu, owl"
    ):
        load_data(str(split_folder), 8)


def test_a_missing_split_folder(split_folder):
    import shutil

    shutil.rmtree(split_folder / "test")
    with pytest.raises(DataError, match="has train, val/ but no test/"):
        load_data(str(split_folder), 8)


def test_one_class_is_not_a_classification(tmp_path):
    root = make_class_tree(tmp_path / "d", per_class=10, classes=("cat",))
    with pytest.raises(DataError, match="1 class folder"):
        load_data(str(root), 8)


def augment(images, generator, padding):
    """The study's augmentation as training draws it: crop offsets and flips, then one gather."""
    return crop_flip(images, *augment_draws(len(images), generator, padding), padding)


def test_augment_is_a_padded_crop_and_maybe_a_flip_of_each_image():
    x = torch.randint(1, 255, (64, 3, 8, 8), dtype=torch.uint8)
    out = augment(x, torch.Generator().manual_seed(0), padding=2)
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    flips = 0
    for i in range(len(x)):
        matches = [
            (dy, dx, flip)
            for dy in range(5)
            for dx in range(5)
            for flip in (False, True)
            if torch.equal(out[i], (lambda c: c.flip(-1) if flip else c)(padded[i, :, dy : dy + 8, dx : dx + 8]))
        ]
        assert matches, f"image {i} is not a crop of its padded self"
        flips += matches[0][2]
    assert 16 < flips < 48  # about half flipped
    again = augment(x, torch.Generator().manual_seed(0), padding=2)
    assert torch.equal(out, again)


def test_training_batches_shuffle_drop_the_remainder_and_evaluation_walks_everything():
    split = synthetic(8, per_class=10, num_classes=2).train
    n = len(split)
    g = torch.Generator().manual_seed(0)
    first = [y for _, y in batches(split, 5, torch.device("cpu"), g)]
    second = [y for _, y in batches(split, 5, torch.device("cpu"), g)]
    assert sum(len(y) for y in first) == n - n % 5 and all(len(y) == 5 for y in first)
    assert not torch.equal(torch.cat(first), torch.cat(second))  # a new order every epoch
    xs, ys = zip(*batches(split, 5, torch.device("cpu")))
    assert torch.equal(torch.cat(ys), split.labels)
    assert torch.equal(torch.cat(xs), split.images.float() / 255)
