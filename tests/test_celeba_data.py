"""CelebA metadata loader, preprocessing, input pipeline and the official-format fixture."""

import hashlib
import threading

import numpy as np
import pytest
from PIL import Image

from ntkdyn.data.celeba import (
    CELEBA_ATTRIBUTES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    centre_crop_box,
    epoch_order,
    iterate_batches,
    load_celeba,
    load_image,
    read_attributes,
)
from ntkdyn.data.celeba_fixture import write_celeba_fixture


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    return write_celeba_fixture(
        tmp_path_factory.mktemp("celeba"), seed=3, n_train=200, n_val=40, n_test=40
    )


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_fixture_is_in_the_official_format(fixture_dir):
    lines = (fixture_dir / "list_attr_celeba.txt").read_text().splitlines()
    assert lines[0] == "280" and lines[1].split() == list(CELEBA_ATTRIBUTES)
    fields = lines[2].split()
    assert fields[0] == "000001.jpg" and len(fields) == 41 and set(fields[1:]) <= {"-1", "1"}
    part = (fixture_dir / "list_eval_partition.txt").read_text().split()
    assert part[:4] == ["000001.jpg", "0", "000002.jpg", "0"] and part[-1] == "2"
    with Image.open(fixture_dir / "img_align_celeba" / "000001.jpg") as img:
        assert img.format == "JPEG" and img.size == (178, 218) and img.mode == "RGB"


def test_groups_and_counts(fixture_dir):
    data = load_celeba(fixture_dir)
    train, val, test = (data.splits[s] for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (200, 40, 40)
    np.testing.assert_array_equal(train.group, 2 * train.y + train.a)
    counts = train.group_counts()
    assert counts.sum() == 200 and 1 <= counts[3] <= 0.05 * 200  # blond men rare, as in CelebA
    assert counts[0] > counts[2] > counts[3] and counts[1] > counts[2]
    # labels agree with the attribute file
    files, names, values = read_attributes(fixture_dir / "list_attr_celeba.txt")
    i = files.index("000005.jpg")
    assert train.y[4] == (values[i, names.index("Blond_Hair")] == 1) and train.a[4] == (
        values[i, names.index("Male")] == 1
    )
    text = data.describe()
    assert "Blond_Hair=1,Male=1" in text and f"{counts[3]:>8}" in text
    assert data.group_names == [
        "Blond_Hair=0,Male=0",
        "Blond_Hair=0,Male=1",
        "Blond_Hair=1,Male=0",
        "Blond_Hair=1,Male=1",
    ]


def test_other_attributes_and_csv_export(fixture_dir, tmp_path):
    csv_dir = write_celeba_fixture(
        tmp_path / "csv", seed=3, n_train=200, n_val=40, n_test=40, csv=True
    )
    assert not (csv_dir / "list_attr_celeba.txt").exists()
    a, b = load_celeba(fixture_dir), load_celeba(csv_dir)
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(a.splits[s].group, b.splits[s].group)
    smiling = load_celeba(fixture_dir, target="Smiling", spurious="Young")
    assert smiling.group_names[3] == "Smiling=1,Young=1"


def test_fixture_is_deterministic(tmp_path):
    digest = []
    for name in ("a", "b"):
        d = write_celeba_fixture(tmp_path / name, seed=11, n_train=8, n_val=4, n_test=4)
        h = hashlib.sha256()
        for f in sorted(d.rglob("*")):
            if f.is_file():
                h.update(f.read_bytes())
        digest.append(h.hexdigest())
    assert digest[0] == digest[1]


def test_load_image_matches_reference_transform(fixture_dir):
    path = fixture_dir / "img_align_celeba" / "000002.jpg"
    with Image.open(
        path
    ) as img:  # torchvision: CenterCrop(178) then Resize(224), ToTensor, Normalize
        ref = np.asarray(
            img.convert("RGB").crop((0, 20, 178, 198)).resize((224, 224), Image.BILINEAR),
            np.float32,
        )
    ref = (ref / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    out = load_image(path, 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-5)
    small = load_image(path, 32)  # reduced-scale decode: close to the full-resolution path
    with Image.open(path) as img:
        full = np.asarray(
            img.convert("RGB").crop((0, 20, 178, 198)).resize((32, 32), Image.BILINEAR), np.float32
        )
    full = (full / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    assert small.shape == (32, 32, 3) and np.mean(np.abs(small - full)) < 0.1


def test_crop_scales_with_the_image(fixture_dir, tmp_path):
    # the official square (side = width) at full and at half resolution: the same geometry, scaled
    assert centre_crop_box(178, 218) == (0, 20, 178, 198)
    assert centre_crop_box(89, 109) == (0, 10, 89, 99)
    assert tuple(2 * v for v in centre_crop_box(89, 109)) == centre_crop_box(178, 218)
    assert centre_crop_box(178, 218, 150) == (14, 34, 164, 184)
    full = fixture_dir / "img_align_celeba" / "000002.jpg"
    half = tmp_path / "000002.png"  # lossless, so only the resampling differs
    with Image.open(full) as img:
        assert img.size == (178, 218)
        img.convert("RGB").resize((89, 109), Image.BILINEAR).save(half)
    np.testing.assert_allclose(load_image(full, 64), load_image(full, 64, crop=178), atol=1e-6)
    a, b = load_image(full, 32), load_image(half, 32)
    assert a.shape == b.shape == (32, 32, 3) and np.mean(np.abs(a - b)) < 0.1
    # an explicit crop is scaled by the caller: 89 of 89 × 109 is 178 of 178 × 218
    np.testing.assert_allclose(load_image(half, 32, crop=89), b, atol=1e-6)
    with pytest.raises(ValueError, match=r"--crop: 178 px is larger than the 89x109 image"):
        load_image(half, 32, crop=178)
    with pytest.raises(ValueError, match="--crop"):
        centre_crop_box(89, 109, 0)


def test_pipeline_order_padding_and_sharding(fixture_dir):
    split = load_celeba(fixture_dir).splits["val"]
    order = epoch_order(len(split), seed=1, epoch=0)
    np.testing.assert_array_equal(order, epoch_order(len(split), seed=1, epoch=0))
    assert not np.array_equal(order, epoch_order(len(split), seed=1, epoch=1))
    assert sorted(order) == list(range(len(split)))
    batches = list(
        iterate_batches(
            split, order, batch_size=16, image_size=24, pad_to_multiple=4, workers=3, prefetch=1
        )
    )
    assert [len(b["index"]) for b in batches] == [16, 16, 8]
    idx = np.concatenate([b["index"][b["mask"] > 0] for b in batches])
    np.testing.assert_array_equal(idx, order)
    for b in batches:
        np.testing.assert_array_equal(b["group"], split.group[b["index"]])
        assert b["image"].shape[1:] == (24, 24, 3)
    np.testing.assert_allclose(batches[0]["image"][3], load_image(split.paths[order[3]], 24))
    odd = list(
        iterate_batches(
            split, order[:21], batch_size=16, image_size=24, pad_to_multiple=4, workers=2
        )
    )
    assert len(odd[1]["index"]) == 8 and odd[1]["mask"].tolist() == [1] * 5 + [0] * 3
    assert (
        len(list(iterate_batches(split, order[:21], batch_size=16, image_size=24, drop_last=True)))
        == 1
    )
    # two processes each take their contiguous half of every global batch
    halves = [
        list(iterate_batches(split, order, batch_size=16, image_size=24, shard=(p, 2)))
        for p in (0, 1)
    ]
    for full, h0, h1 in zip(batches, *halves, strict=True):
        np.testing.assert_array_equal(np.concatenate([h0["index"], h1["index"]]), full["index"])


def test_pipeline_decodes_on_worker_threads(fixture_dir):
    split = load_celeba(fixture_dir).splits["train"]
    seen = set()
    import ntkdyn.data.images as mod

    original = mod.load_image

    def spy(*a, **k):
        seen.add(threading.current_thread().name)
        return original(*a, **k)

    mod.load_image = spy
    try:
        for _ in iterate_batches(split, np.arange(64), batch_size=32, image_size=16, workers=4):
            pass
    finally:
        mod.load_image = original
    assert seen and all(n.startswith("image-decode") for n in seen)


def test_clear_errors(fixture_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_celeba(tmp_path / "nowhere")
    d = _copy(fixture_dir, tmp_path / "d1")
    (d / "list_eval_partition.txt").unlink()
    with pytest.raises(FileNotFoundError, match="list_eval_partition"):
        load_celeba(d)
    with pytest.raises(ValueError, match="Blond_Hiar"):
        load_celeba(fixture_dir, target="Blond_Hiar")
    with pytest.raises(ValueError, match="differ"):
        load_celeba(fixture_dir, target="Male", spurious="Male")
    d = _copy(fixture_dir, tmp_path / "d2")
    lines = (d / "list_attr_celeba.txt").read_text().splitlines()
    lines[5] = lines[5].rsplit(" ", 1)[0]  # one value short
    (d / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"list_attr_celeba.txt: line 6"):
        load_celeba(d)
    lines = (d / "list_attr_celeba.txt").read_text().splitlines()
    lines[5] = lines[4].replace("000003", "000004").replace(" 1", " 2", 1)
    (d / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="line 6.*-1 or 1"):
        load_celeba(d)
    d = _copy(fixture_dir, tmp_path / "d3")
    lines = (d / "list_attr_celeba.txt").read_text().splitlines()
    (d / "list_attr_celeba.txt").write_text("\n".join(lines[:-1]) + "\n")  # count line now wrong
    with pytest.raises(ValueError, match="count line"):
        load_celeba(d)
    d = _copy(fixture_dir, tmp_path / "d4")
    bad = d / "img_align_celeba" / "000001.jpg"
    bad.write_bytes(b"not a jpeg at all")
    (d / "img_align_celeba" / "000002.jpg").unlink()
    split = load_celeba(d).splits["train"]
    with pytest.raises(ValueError, match="000001.jpg"):
        list(iterate_batches(split, [0, 2], batch_size=2, image_size=16))
    with pytest.raises(FileNotFoundError, match="000002.jpg"):
        list(iterate_batches(split, [1, 2], batch_size=2, image_size=16))
