import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_mim.data.images import ImageAugmentation, open_image, random_resized_crop_box, to_channels
from hf_mim.data.pipeline import Collator, SamplePipeline, prepare_dataset
from hf_mim.data.sources import DatasetError, builtin_digits, check_size, find_image_column, load_pretraining_dataset

from .images import BAD, GOOD, exif_rotated, make_images, write_image_folder

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


@pytest.mark.parametrize("name", sorted(make_images()))
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_every_mode_becomes_the_model_channels(name, channels):
    image = make_images()[name]
    out = ImageAugmentation(32, [0.5] * channels, [0.25] * channels, channels)(image, torch.Generator().manual_seed(0))
    assert out.shape == (channels, 32, 32) and torch.isfinite(out).all()


def test_exif_orientation_is_applied():
    image = exif_rotated(20, 10)  # stored 20 wide, displayed 10 wide
    assert image.size == (20, 10)
    upright = to_channels(image, 3)
    assert upright.size == (10, 20)


def test_transparency_is_composited_on_white_and_16_bit_is_stretched():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_channels(rgba, 3).getpixel((0, 0)) == (255, 255, 255)
    sixteen = Image.fromarray(np.array([[0, 1000], [30000, 65535]], dtype=np.uint16)).convert("I;16")
    grey = to_channels(sixteen, 1)
    assert grey.mode == "L" and grey.getpixel((0, 0)) == 0 and grey.getpixel((1, 1)) == 255


def _paletted(transparent: bool) -> Image.Image:
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    if transparent:
        image.info["transparency"] = 1  # palette entry 1 is see-through
    return image


def _grey_alpha() -> Image.Image:
    image = Image.new("LA", (2, 1))
    image.putpixel((0, 0), (40, 255))  # opaque dark grey
    image.putpixel((1, 0), (40, 0))  # the same grey, fully transparent
    return image


@pytest.mark.parametrize(
    ("image", "channels", "expected"),
    [
        # pixel values, not only shapes (issue 17): a transparent pixel is white, never black
        (_grey_alpha(), 1, [40, 255]),
        (_grey_alpha(), 3, [(40, 40, 40), (255, 255, 255)]),
        (_paletted(False), 3, [(10, 20, 30), (200, 100, 50)]),
        (_paletted(True), 3, [(10, 20, 30), (255, 255, 255)]),
        # PIL's CMYK to RGB: R = 255 - C - K (clipped), and so on; pure cyan is (0, 255, 255)
        (Image.new("CMYK", (2, 1), (255, 0, 0, 0)), 3, [(0, 255, 255), (0, 255, 255)]),
        (Image.new("CMYK", (2, 1), (0, 0, 0, 255)), 1, [0, 0]),
    ],
)
def test_image_modes_convert_to_the_right_pixel_values(image, channels, expected):
    converted = to_channels(image, channels)
    assert [converted.getpixel((x, 0)) for x in range(2)] == expected


@pytest.mark.parametrize("size", [(2, 2), (3, 500), (500, 3), (1, 1)])
def test_crop_box_stays_inside_tiny_and_thin_images(size):
    width, height = size
    for seed in range(50):
        left, top, w, h = random_resized_crop_box(width, height, torch.Generator().manual_seed(seed))
        assert 0 <= left and 0 <= top and w >= 1 and h >= 1 and left + w <= width and top + h <= height


def test_crop_box_respects_scale_and_is_deterministic():
    areas = []
    for seed in range(200):
        box = random_resized_crop_box(400, 300, torch.Generator().manual_seed(seed))
        assert box == random_resized_crop_box(400, 300, torch.Generator().manual_seed(seed))
        areas.append(box[2] * box[3] / (400 * 300))
    assert min(areas) >= 0.2 * 0.95 and max(areas) <= 1.0 and np.std(areas) > 0.1


def test_open_image_rejects_broken_inputs(tmp_path):
    write_image_folder(tmp_path)
    for name in BAD:
        with pytest.raises((OSError, ValueError)):  # PIL raises OSError subclasses for all of these
            open_image({"path": str(tmp_path / name), "bytes": None})
    for name in GOOD:
        assert open_image({"path": str(tmp_path / name), "bytes": None}).size[0] >= 1


def test_augmentation_depends_only_on_seed_epoch_and_index():
    ds = builtin_digits().select(range(6))
    transform = SamplePipeline(
        "image", ImageAugmentation(16, MEAN, STD), seed=3, sample_inputs=lambda g: {"noise": torch.rand(4, generator=g)}
    )
    prepared = prepare_dataset(ds, "image", transform)
    forward = [prepared[i] for i in range(6)]
    backward = [prepared[i] for i in reversed(range(6))][::-1]
    for a, b in zip(forward, backward, strict=True):
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["noise"], b["noise"])
    transform.epoch = 1
    assert not torch.equal(prepared[0]["pixel_values"], forward[0]["pixel_values"])


def test_folder_with_bad_files_decodes_the_good_and_names_the_bad(tmp_path):
    dataset, _ = load_pretraining_dataset(str(write_image_folder(tmp_path / "imgs")))
    transform = SamplePipeline("image", ImageAugmentation(16, MEAN, STD), seed=0)
    prepared = prepare_dataset(dataset, "image", transform)
    items = [prepared[i] for i in range(len(prepared))]
    failed = {item["name"] for item in items if item["error"] is not None}
    assert failed == set(BAD)
    batch = Collator((3, 16, 16))(items)
    assert batch["pixel_values"].shape == (len(items), 3, 16, 16)
    assert sorted(batch["skipped_names"]) == sorted(BAD) and batch["loss_weight"] == 1


def test_collator_keeps_shape_when_nothing_decodes():
    items = [
        {"pixel_values": None, "error": "OSError: broken", "name": f"f{i}", "noise": torch.rand(4)} for i in range(3)
    ]
    batch = Collator((3, 8, 8))(items)
    assert batch["pixel_values"].shape == (3, 3, 8, 8) and batch["loss_weight"] == 0
    assert batch["noise"].shape == (3, 4)


def test_builtin_dataset_is_real_and_labelled():
    ds = builtin_digits(None)
    assert len(ds) == 1797 and set(ds.column_names) == {"image", "label"}
    assert ds.features["label"].num_classes == 10
    image = ds[0]["image"]
    assert image.size == (8, 8) and image.mode == "L" and np.asarray(image).max() > 0


def test_image_column_detection_and_errors():
    ds = datasets.Dataset.from_dict({"img": [Image.new("RGB", (4, 4))], "label": [0]})
    assert find_image_column(ds) == "img"
    with pytest.raises(DatasetError, match=r"the columns are \['img', 'label'\]"):
        find_image_column(ds, "photo")
    no_images = datasets.Dataset.from_dict({"text": ["a"], "label": [0]})
    with pytest.raises(DatasetError, match=r"found no image column; the columns are \['text', 'label'\]"):
        find_image_column(no_images)


def test_empty_dataset_and_too_few_samples_fail_early():
    ds = builtin_digits()
    with pytest.raises(DatasetError, match="is empty"):
        check_size(ds.select([]), 1, "x")
    with pytest.raises(DatasetError, match="3 samples, fewer than the 4 processes"):
        check_size(ds.select(range(3)), 4, "x")


def test_dataset_resolution(tmp_path):
    with pytest.raises(DatasetError, match="^dataset path not found: ./nowhere$"):
        load_pretraining_dataset("./nowhere")
    with pytest.raises(DatasetError, match="from the Hub"):
        load_pretraining_dataset("someone/not-a-dataset")  # HF_HUB_OFFLINE=1 in tests
    saved = builtin_digits().select(range(10))
    saved.save_to_disk(tmp_path / "flat")
    datasets.DatasetDict({"train": saved, "test": saved.select(range(2))}).save_to_disk(tmp_path / "dict")
    assert len(load_pretraining_dataset(str(tmp_path / "flat"))[0]) == 10
    test_split, description = load_pretraining_dataset(str(tmp_path / "dict"), split="test")
    assert len(test_split) == 2
    assert description == "dict (saved dataset), 'test' split"  # the record says which split a run read
    with pytest.raises(DatasetError, match="splits"):
        load_pretraining_dataset(str(tmp_path / "dict"), split="validation")


def _pixels(dataset) -> set[bytes]:
    return {open_image(v).tobytes() for v in dataset.cast_column("image", datasets.Image(decode=False))["image"]}


def test_builtin_digits_train_and_test_splits_partition_the_data_without_sharing_an_image():
    train, test, everything = builtin_digits("train"), builtin_digits("test"), builtin_digits(None)
    assert (len(train), len(test), len(everything)) == (1437, 360, 1797)
    train_pixels, test_pixels = _pixels(train), _pixels(test)
    assert len(train_pixels) == 1437 and len(test_pixels) == 360  # no image occurs twice
    assert not train_pixels & test_pixels and train_pixels | test_pixels == _pixels(everything)
    per_class = np.bincount(test["label"], minlength=10)
    assert per_class.min() >= 35 and per_class.max() <= 37  # stratified: 20% of every class
    assert _pixels(builtin_digits("test")) == test_pixels  # the same cut every time
    with pytest.raises(DatasetError, match=r"splits \['test', 'train'\], not 'validation'"):
        load_pretraining_dataset("digits", split="validation")


def test_one_saved_split_is_not_taken_for_another_when_strict(tmp_path):
    builtin_digits("test").select(range(4)).save_to_disk(str(tmp_path / "saved"))
    loaded, _ = load_pretraining_dataset(str(tmp_path / "saved"), split="train")
    assert len(loaded) == 4  # pretraining takes a saved dataset whatever split it was
    with pytest.raises(DatasetError, match="holds one split"):
        load_pretraining_dataset(str(tmp_path / "saved"), split="validation", strict_split=True)


def _photo_jpeg(width=500, height=375, seed=0) -> bytes:
    """A JPEG that decodes like a photo: smooth colour with texture noise."""
    import io

    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs / width, ys / height, (xs + ys) / (width + height)], axis=-1) * 200 + 20
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_jpeg_draft_decodes_at_reduced_scale_with_the_same_crop_and_flip():
    from hf_mim.data.images import draft_for_crop

    data = _photo_jpeg()
    lazy = open_image(data, load=False)
    box = draft_for_crop(lazy, (0, 0, 500, 375), (64, 64))
    assert lazy.size == (125, 94) and box == pytest.approx((0, 0, 125, 375 / (375 / 94)))  # libjpeg's 1/4 scale
    full, draft = (ImageAugmentation(64, MEAN, STD, jpeg_draft=d) for d in (False, True))
    for seed in range(8):  # crops large and small; each pair shares its crop and flip
        a = full(open_image(data, load=False), torch.Generator().manual_seed(seed))
        b = draft(open_image(data, load=False), torch.Generator().manual_seed(seed))
        difference = ((a - b).abs() * 0.25).mean().item() * 255  # in 0-255 grey levels
        assert 0 <= difference < 6, (seed, difference)
        flipped = full(open_image(data, load=False), torch.Generator().manual_seed(seed)).flip(-1)
        assert ((flipped - b).abs() * 0.25).mean().item() * 255 > 3 * difference + 1  # the flip is shared, not lost


def test_jpeg_draft_leaves_decoded_rotated_small_and_non_jpeg_images_alone():
    import io

    data = _photo_jpeg()
    png = io.BytesIO()
    Image.open(io.BytesIO(data)).save(png, "PNG")
    rotated = io.BytesIO()
    Image.open(io.BytesIO(data)).save(rotated, "JPEG", exif=exif_rotated().getexif().tobytes())
    cases = {
        "decoded": lambda: open_image(data),  # loaded already: as evaluation and user code pass images
        "png": lambda: open_image(png.getvalue(), load=False),
        "exif_rotated": lambda: open_image(rotated.getvalue(), load=False),
        "crop_below_twice_the_output": lambda: open_image(data, load=False),
    }
    for name, make in cases.items():
        size = 300 if name == "crop_below_twice_the_output" else 64
        full, draft = (ImageAugmentation(size, MEAN, STD, jpeg_draft=d, train=False) for d in (False, True))
        assert torch.equal(full(make(), None), draft(make(), None)), name


def test_uint8_crops_normalised_later_equal_the_float_path_bit_for_bit():
    """hf-mim pretrain ships uint8 crops from its workers and normalises on the device: the same numbers as
    normalising in the worker, and as the NumPy formula the pipeline used before."""
    from hf_mim.data.images import pil_to_tensor

    augment = ImageAugmentation(24, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    data = _photo_jpeg(60, 40)
    for seed in range(4):
        crop = augment.crop(open_image(data, load=False), torch.Generator().manual_seed(seed))
        assert crop.dtype == torch.uint8 and crop.shape == (3, 24, 24)
        floats = augment(open_image(data, load=False), torch.Generator().manual_seed(seed))
        assert torch.equal(augment.normalize(crop), floats)
        assert torch.equal(augment.normalize(crop[None])[0], floats)  # batched, as the training loop does
    image = make_images()["rgb.jpg"]
    old = torch.from_numpy((np.asarray(image, dtype=np.float32) / 255.0).copy()).permute(2, 0, 1)
    assert torch.equal(pil_to_tensor(image, 3), old)
    transform = SamplePipeline("image", augment, seed=0, normalize=False)
    assert transform.sample(data, 0)["pixel_values"].dtype == torch.uint8


def test_first_decoded_skips_bad_images_names_them_and_decodes_no_more_than_it_needs(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, colour in (("a.png", 10), ("c.png", 200), ("d.png", 90)):
        Image.new("L", (8, 8), colour).save(folder / name)
    (folder / "b.png").write_bytes(b"not an image")
    paths = [str(folder / name) for name in ("a.png", "b.png", "c.png", "d.png")]
    read = []

    def values():
        for path in paths:
            read.append(path)
            yield path

    pipeline = SamplePipeline(None, ImageAugmentation(4, MEAN, STD), seed=None, decode_lazily=False)
    images, skipped = pipeline.first_decoded(values(), 2)
    assert len(images) == 2 and len(read) == 3  # d.png is never read
    expected = [(torch.full((3, 4, 4), colour / 255) - 0.5) / 0.25 for colour in (10, 200)]
    for image, want in zip(images, expected, strict=True):
        torch.testing.assert_close(image, want, atol=1e-6, rtol=0)
    assert len(skipped) == 1 and skipped[0].startswith("b.png: ")  # its file name, never its folder
