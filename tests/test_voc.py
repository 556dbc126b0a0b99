"""Reading the Pascal VOC folder layout (sppnet_lite.voc), on hand-written folders."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from sppnet_lite import voc


def write_voc(root, annotations: dict, split="train", classes=None):
    """A hand-written VOC folder.

    ``annotations``: ``{image_id: (w, h, [(name, xmin, ymin, xmax, ymax, difficult)])}``;
    ``classes``: names for a ``classes.txt`` (none written by default).
    """
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id, (w, h, objects) in annotations.items():
        cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.jpg"), np.full((h, w, 3), 128, np.uint8))
        objs = "".join(
            f"<object><name>{n}</name><pose>Left</pose><truncated>0</truncated>"
            f"<difficult>{d}</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
            f"<xmax>{c}</xmax><ymax>{e}</ymax></bndbox></object>" for n, a, b, c, e, d in objects)
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>"
            f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
            f"<segmented>0</segmented>{objs}</annotation>")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(annotations) + "\n")
    if classes is not None:
        (root / "classes.txt").write_text("".join(c + "\n" for c in classes))
    return root


THREE = {"000005": (50, 40, [("dog", 1, 1, 50, 40, 0)]),
         "000007": (60, 30, [("person", 11, 5, 20, 25, 1), ("car", 3, 4, 7, 8, 0)]),
         "000009": (20, 20, [])}


def noise_jpeg(path, height=64, width=80) -> np.ndarray:
    """Write a noisy RGB image as a JPEG (big enough to cut short) and return it."""
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    return image


def test_voc_classes():
    assert len(voc.VOC_CLASSES) == 20 and list(voc.VOC_CLASSES) == sorted(voc.VOC_CLASSES)


def test_dataset_class_on_handwritten_voc(tmp_path):
    root = write_voc(tmp_path / "VOCdevkit" / "VOC2007", THREE)
    for where in (tmp_path, tmp_path / "VOCdevkit", root):
        ds = voc.VOCDataset(where, "train")
        assert ds.image_ids == ["000005", "000007", "000009"] and ds.root == root
    # no classes= and no classes.txt: the sorted names found in the split's annotations
    assert ds.class_names == ("car", "dog", "person") and ds.class_source == "annotations"
    s = ds[1]
    assert s.image.shape == (30, 60, 3) and s.image.dtype == np.uint8 and s.image_id == "000007"
    np.testing.assert_array_equal(s.boxes, np.array([[10, 4, 20, 25], [2, 3, 7, 8]], np.float32))
    assert s.boxes.dtype == np.float32 and s.labels.dtype == np.int64
    np.testing.assert_array_equal(s.labels, [2, 0])
    np.testing.assert_array_equal(s.difficult, [True, False])
    np.testing.assert_array_equal(ds[0].boxes, [[0, 0, 50, 40]])  # whole image, 1-based in XML
    empty = ds[2]
    assert empty.boxes.shape == (0, 4) and empty.labels.shape == (0,)
    assert ds.annotation(1).image is None
    np.testing.assert_array_equal(ds.annotation(1).boxes, s.boxes)
    assert ds.image_size(1) == (30, 60)
    assert ds.image_path(1) == root / "JPEGImages" / "000007.jpg"


def test_class_names_argument_then_classes_txt_then_annotations(tmp_path):
    root = write_voc(tmp_path, THREE, classes=("person", "dog", "car", "cat"))
    from_file = voc.VOCDataset(root, "train")
    assert from_file.class_names == ("person", "dog", "car", "cat")
    assert from_file.class_source == "classes.txt"
    np.testing.assert_array_equal(from_file[1].labels, [0, 2])
    given = voc.VOCDataset(root, "train", classes=("car", "person", "dog"))
    assert given.class_names == ("car", "person", "dog") and given.class_source == "argument"
    np.testing.assert_array_equal(given[1].labels, [1, 0])
    with pytest.raises(ValueError, match="'dog' is not in class_names"):
        voc.VOCDataset(root, "train", classes=("person", "car"))
    (root / "classes.txt").write_text("person\ncar\n")
    with pytest.raises(ValueError, match="'dog' is not in class_names"):
        voc.VOCDataset(root, "train")


def test_splits_and_folders(tmp_path):
    root = write_voc(tmp_path, THREE)
    write_voc(root, {"000011": (30, 30, [("cat", 1, 1, 10, 10, 0)])}, split="val")
    (root / "ImageSets" / "Main" / "dog_train.txt").write_text("000005  1\n")  # a class list
    assert voc.available_splits(root) == ["train", "val"]
    val = voc.VOCDataset(root, "val")
    assert val.class_names == ("cat",)  # discovered from this split's annotations only
    with pytest.raises(ValueError, match="available splits: \\['train', 'val'\\]"):
        voc.VOCDataset(root, "test")
    with pytest.raises(FileNotFoundError, match="VOC-layout"):
        voc.VOCDataset(tmp_path / "nowhere", "train")
    (root / "Annotations" / "000009.xml").write_text("<annotation><object>")
    with pytest.raises(ValueError, match="cannot parse"):
        voc.VOCDataset(root, "train")


def test_subset(tmp_path):
    ds = voc.VOCDataset(write_voc(tmp_path, THREE), "train")
    sub = voc.Subset(ds, [2, 0])
    assert len(sub) == 2 and sub.image_ids == ["000009", "000005"]
    assert sub.class_names == ds.class_names
    assert sub[1].image_id == "000005" and sub[1].image.shape == (40, 50, 3)
    np.testing.assert_array_equal(sub.annotation(1).boxes, ds.annotation(0).boxes)
    assert sub.image_path(0) == ds.image_path(2)


def test_read_image(tmp_path):
    image = noise_jpeg(tmp_path / "good.jpg")
    read = voc.read_image(tmp_path / "good.jpg")
    assert read.shape == image.shape and read.dtype == np.uint8
    expected = cv2.cvtColor(cv2.imread(str(tmp_path / "good.jpg")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(read, expected)  # OpenCV's decoding, in RGB order
    red = np.zeros((32, 32, 3), np.uint8)
    red[..., 0] = 255
    cv2.imwrite(str(tmp_path / "red.png"), cv2.cvtColor(red, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(voc.read_image(tmp_path / "red.png"), red)


def test_read_image_refuses_truncated_missing_and_foreign_files(tmp_path):
    noise_jpeg(tmp_path / "good.jpg")
    data = (tmp_path / "good.jpg").read_bytes()
    assert len(data) > 6000
    (tmp_path / "cut.jpg").write_bytes(data[:3000])  # the first few KB of a real JPEG
    assert cv2.imread(str(tmp_path / "cut.jpg")) is not None  # OpenCV alone would accept it
    with pytest.raises(ValueError, match="cannot read .*cut.jpg.* as an image") as err:
        voc.read_image(tmp_path / "cut.jpg")
    assert "truncated" in str(err.value)
    with pytest.raises(ValueError, match="cannot read .*missing.jpg"):
        voc.read_image(tmp_path / "missing.jpg")
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read .*notes.jpg"):
        voc.read_image(tmp_path / "notes.jpg")


def test_check_images_names_the_bad_file(tmp_path):
    root = write_voc(tmp_path, THREE)
    ds = voc.VOCDataset(root, "train")
    voc.check_images(ds)  # all fine
    noise_jpeg(root / "JPEGImages" / "000007.jpg", 30, 60)
    data = (root / "JPEGImages" / "000007.jpg").read_bytes()
    (root / "JPEGImages" / "000007.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="000007.jpg"):
        voc.check_images(ds)
    with pytest.raises(ValueError, match="000007.jpg"):
        voc.check_images(voc.Subset(ds, [1]))
    voc.check_images(voc.Subset(ds, [0, 2]))
    (root / "JPEGImages" / "000009.jpg").unlink()
    with pytest.raises(ValueError, match="'000009': no file .*000009.jpg"):
        voc.check_images(voc.Subset(ds, [2]))


def test_dataset_stamp_follows_the_annotations(tmp_path):
    root = write_voc(tmp_path, THREE)
    stamp = voc.dataset_stamp(root)
    assert voc.dataset_stamp(root) == stamp and len(stamp) == 16
    xml = root / "Annotations" / "000005.xml"
    original = xml.read_text()
    xml.write_text(original.replace("<xmax>50</xmax>", "<xmax>49</xmax>"))
    edited = voc.dataset_stamp(root)
    assert edited != stamp  # one edited box is a new key
    xml.write_text(original)
    assert voc.dataset_stamp(root) == stamp
    (root / "classes.txt").write_text("car\ndog\nperson\n")
    with_classes = voc.dataset_stamp(root)
    assert with_classes != stamp
    (root / "ImageSets" / "Main" / "train.txt").write_text("000005\n000007\n")
    assert voc.dataset_stamp(root) not in (stamp, with_classes)
    # a generated set carries its recipe's hash
    (root / voc.STAMP_NAME).write_text("0123456789abcdef\n")
    assert voc.dataset_stamp(root) == "0123456789abcdef"


def test_dataset_statistics_by_hand(tmp_path):
    stats = voc.dataset_statistics(voc.VOCDataset(write_voc(tmp_path, THREE), "train"))
    # boxes: dog 50x40 (0,0,50,40); person 10x21 (10,4,20,25); car 5x5 (2,3,7,8)
    np.testing.assert_allclose(stats["width"], [50, 10, 5])
    np.testing.assert_allclose(stats["height"], [40, 21, 5])
    np.testing.assert_allclose(stats["side"], np.sqrt([2000, 210, 25]), rtol=1e-6)
    np.testing.assert_allclose(stats["aspect"], [50 / 40, 10 / 21, 1.0], rtol=1e-6)
    assert stats["label"].tolist() == [1, 2, 0] and stats["difficult"].tolist() == [0, 1, 0]
    assert stats["objects_per_image"].tolist() == [1, 2, 0]
    assert stats["image_height"].tolist() == [40, 30, 20]
    assert stats["image_width"].tolist() == [50, 60, 20]


def test_annotation_xml_is_the_inverse_of_reading(tmp_path):
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (tmp_path / sub).mkdir(parents=True)
    objects = [{"box": (0, 0, 30, 20), "label": 1, "truncated": True, "difficult": False},
               {"box": (5, 6, 7, 9), "label": 0, "truncated": False, "difficult": True}]
    (tmp_path / "Annotations" / "a.xml").write_text(
        voc.annotation_xml("a", (20, 30, 3), objects, ("disc", "square")))
    (tmp_path / "ImageSets" / "Main" / "train.txt").write_text("a\n")
    ds = voc.VOCDataset(tmp_path, "train", classes=("disc", "square"))
    sample = ds.annotation(0)
    np.testing.assert_array_equal(sample.boxes, [o["box"] for o in objects])
    assert sample.labels.tolist() == [1, 0] and sample.difficult.tolist() == [False, True]
    assert ds.image_size(0) == (20, 30) and ds.image_path(0).name == "a.jpg"
