"""A catalog whose items are images: the image modality end to end.

:func:`build_image_catalog` embeds any images keyed by item id;
:func:`sample_images` + :func:`build_sample_image_catalog` make a small example catalog from
the photographs that ship with scikit-image (views and crops of the same scene are
different items, so neighbours can be checked by eye).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mmcompress.data.catalog import ItemCatalog, ModalitySpec
from mmcompress.encoders.image import DIM as IMAGE_DIM
from mmcompress.encoders.image import ImageEncoder, ImageEncoderConfig
from mmcompress.errors import CatalogError

SAMPLE_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "hubble_deep_field",
                "motorcycle_left", "motorcycle_right", "immunohistochemistry", "moon", "page")


def sample_images() -> dict[str, np.ndarray]:
    """scikit-image sample photographs plus a few crops and a flip of the same scenes."""
    from skimage import data

    base = {}
    for name in SAMPLE_NAMES:
        if name.startswith("motorcycle"):
            left, right, _ = data.stereo_motorcycle()
            base["motorcycle_left"], base["motorcycle_right"] = left, right
        else:
            base[name] = getattr(data, name)()
    cat = base["chelsea"]
    h, w = cat.shape[:2]
    base["chelsea_crop"] = cat[: int(h * 0.8), int(w * 0.15): int(w * 0.9)]
    base["chelsea_flip"] = cat[:, ::-1]
    astro = base["astronaut"]
    base["astronaut_crop"] = astro[: int(astro.shape[0] * 0.6), int(astro.shape[1] * 0.15): int(astro.shape[1] * 0.75)]
    base["coffee_crop"] = base["coffee"][:, : int(base["coffee"].shape[1] * 0.7)]
    return base


def build_image_catalog(
    images: Mapping[int, np.ndarray] | Sequence[np.ndarray],
    *,
    titles: Sequence[str] | None = None,
    image: ImageEncoderConfig | dict[str, Any] | None = None,
    progress: bool = True,
) -> ItemCatalog:
    """Embed ``images`` (a mapping item id → image, or a sequence with ids 0..n-1)."""
    if isinstance(images, Mapping):
        ids = np.array([int(k) for k in images], dtype=np.int64)
        imgs = list(images.values())
    else:
        imgs = list(images)
        ids = np.arange(len(imgs), dtype=np.int64)
    if not imgs:
        raise CatalogError("empty catalog", expected="at least 1 image", found=0)
    cfg = image if isinstance(image, ImageEncoderConfig) else ImageEncoderConfig(**(image or {}))
    encoder = ImageEncoder(cfg, progress=progress)
    try:
        X = encoder.encode(imgs)
    except CatalogError as e:
        row = f"{e.row} (item_id={int(ids[e.row])})" if isinstance(e.row, int) else e.row
        raise CatalogError(str(e).split(";")[0], column="image", row=row,
                           expected=e.expected, found=e.found) from e
    shapes = [str(np.asarray(im).shape) for im in imgs]
    attrs = pd.DataFrame({"item_id": ids, "shape": shapes})
    if titles is not None:
        if len(titles) != len(imgs):
            raise CatalogError("titles do not match the images", column="title",
                               expected=len(imgs), found=len(titles))
        attrs.insert(1, "title", list(titles))
    spec = ModalitySpec("image", IMAGE_DIM, metric="ip",
                        source=f"{encoder.model_id} pooled features, {cfg.image_size}px")
    return ItemCatalog(ids, {"image": X}, {"image": np.ones(len(ids), dtype=bool)}, attrs,
                       {"image": spec})


def build_sample_image_catalog(*, image: ImageEncoderConfig | dict[str, Any] | None = None,
                               progress: bool = True) -> ItemCatalog:
    """The scikit-image example catalog; ``title`` names each picture."""
    imgs = sample_images()
    return build_image_catalog(list(imgs.values()), titles=list(imgs), image=image, progress=progress)
