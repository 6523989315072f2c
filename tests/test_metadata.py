"""Metadata-format image folders (metadata.csv + images): loader, fixture, and every bad input."""

import csv
import hashlib

import numpy as np
import pytest
from PIL import Image

from ntkdyn.data.celeba import CelebA
from ntkdyn.data.images import GroupDataset, decode_split, iterate_batches, load_image
from ntkdyn.data.metadata import load_metadata_folder, write_metadata_fixture
from ntkdyn.errors import InputError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_metadata_fixture(tmp_path_factory.mktemp("meta"), seed=5, sizes=(120, 24, 24))


def _rows(folder):
    with open(folder / "metadata.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _rewrite(src, dst, edit, header=None):
    """Copy a fixture's metadata (not its images: filenames point back at src) with edited rows."""
    dst.mkdir()
    rows = _rows(src)
    header = header or list(rows[0])
    for r in rows:
        r["filename"] = str(src / r["filename"])
    rows = edit(rows)
    with open(dst / "metadata.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return dst


def test_fixture_is_in_the_subpopbench_format(folder):
    lines = (folder / "metadata.csv").read_text().splitlines()
    assert lines[0] == "id,filename,split,y,a" and lines[1].startswith("0,images/1.jpg,0,")
    assert len(lines) == 1 + 168
    with Image.open(folder / "images" / "1.jpg") as img:
        assert img.format == "JPEG" and img.size == (64, 64) and img.mode == "RGB"


def test_loader_reads_splits_labels_and_groups(folder):
    data = load_metadata_folder(folder)
    assert isinstance(data, GroupDataset) and GroupDataset is CelebA
    rows = _rows(folder)
    for name, sid in (("train", "0"), ("val", "1"), ("test", "2")):
        sub = [r for r in rows if r["split"] == sid]
        sp = data.splits[name]
        assert len(sp) == len(sub) and sp.paths[0] == str(folder / sub[0]["filename"])
        np.testing.assert_array_equal(sp.y, [int(r["y"]) for r in sub])
        np.testing.assert_array_equal(sp.a, [int(r["a"]) for r in sub])
        np.testing.assert_array_equal(sp.group, 2 * sp.y + sp.a)
    counts = data.splits["train"].group_counts()
    assert counts.sum() == 120 and 1 <= counts[3] <= 3 and counts[3] == counts.min()
    assert data.group_names == ["y=0,a=0", "y=0,a=1", "y=1,a=0", "y=1,a=1"]
    named = load_metadata_folder(folder, target_name="Blond_Hair", attribute_name="Male")
    assert named.group_names[2] == "Blond_Hair=1,Male=0" and "Blond_Hair=1,Male=1" in (
        named.describe()
    )


def test_images_go_through_the_generic_pipeline(folder):
    split = load_metadata_folder(folder).splits["val"]
    images = decode_split(split, image_size=32, workers=2)
    assert images.shape == (24, 32, 32, 3) and images.dtype == np.uint8
    batch = next(iterate_batches(split, np.arange(8), batch_size=8, image_size=32, workers=2))
    np.testing.assert_allclose(batch["image"][5], load_image(split.paths[5], 32), atol=1e-6)
    np.testing.assert_array_equal(batch["group"], split.group[:8])


def test_images_carry_the_planted_cues(folder):
    # the attribute (a dark lower half) and the target (hair colour, brighter when y = 1) are
    # learnable from the pixels: the class means differ in the expected directions
    split = load_metadata_folder(folder).splits["train"]
    x = decode_split(split, image_size=32, workers=2).astype(np.float32)
    lower = x[:, 24:, :, :].mean(axis=(1, 2, 3))
    assert lower[split.a == 1].mean() < lower[split.a == 0].mean() - 40
    hair = x[:, 3:8, 10:22, :].mean(axis=(1, 2, 3))
    assert hair[split.y == 1].mean() > hair[split.y == 0].mean() + 10


def test_fixture_is_deterministic(tmp_path):
    digests = []
    for name in ("a", "b"):
        d = write_metadata_fixture(tmp_path / name, seed=2, sizes=(8, 4, 4), image_size=16)
        h = hashlib.sha256()
        for f in sorted(d.rglob("*")):
            if f.is_file():
                h.update(f.read_bytes())
        digests.append(h.hexdigest())
    assert digests[0] == digests[1]
    with pytest.raises(ValueError, match="sizes"):
        write_metadata_fixture(tmp_path / "c", seed=0, sizes=(8, 2, 4))


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--data-dir: .*nowhere is not a directory"):
        load_metadata_folder(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"--data-dir: .* has no metadata\.csv"):
        load_metadata_folder(tmp_path)


def test_missing_column(folder, tmp_path):
    d = _rewrite(folder, tmp_path / "d", lambda r: r, header=["id", "filename", "split", "y"])
    with pytest.raises(InputError, match=r"--data-dir: .*metadata\.csv lacks the column\(s\) a"):
        load_metadata_folder(d)


@pytest.mark.parametrize(
    "column, value, match",
    [
        ("split", "3", r"line 4: column split is '3', expected 0 \(train\), 1 \(val\) or 2"),
        ("split", "train", r"line 4: column split is 'train'"),
        ("y", "2", r"line 4: column y is '2', expected 0 or 1"),
        ("a", "-1", r"line 4: column a is '-1', expected 0 or 1"),
    ],
)
def test_bad_values(folder, tmp_path, column, value, match):
    def edit(rows):
        rows[2][column] = value
        return rows

    d = _rewrite(folder, tmp_path / "d", edit)
    with pytest.raises(InputError, match=match):
        load_metadata_folder(d)


def test_float_coded_labels_are_accepted(folder, tmp_path):
    def edit(rows):
        for r in rows:
            r["y"] = f"{float(r['y']):.1f}"
        return rows

    d = _rewrite(folder, tmp_path / "d", edit)
    np.testing.assert_array_equal(
        load_metadata_folder(d).splits["train"].y, load_metadata_folder(folder).splits["train"].y
    )


def test_missing_images_are_counted_up_front(folder, tmp_path):
    def edit(rows):
        rows[5]["filename"] = "images/gone.jpg"
        rows[9]["filename"] = "images/gone2.jpg"
        return rows

    d = _rewrite(folder, tmp_path / "d", edit)
    with pytest.raises(
        FileNotFoundError,
        match=r"2 of the 168 images listed in .* are missing, the first is .*gone",
    ):
        load_metadata_folder(d)


def test_empty_split(folder, tmp_path):
    d = _rewrite(folder, tmp_path / "d", lambda rows: [r for r in rows if r["split"] != "1"])
    with pytest.raises(InputError, match=r"no example with split=1 \(val\)"):
        load_metadata_folder(d)


def test_equal_names_rejected(folder):
    with pytest.raises(InputError, match="attribute_name"):
        load_metadata_folder(folder, target_name="y", attribute_name="y")
