"""The shared training loop: determinism, checkpoints, resume, early stop, non-finite losses."""

import json

import numpy as np
import pytest
import torch

from mmcompress.artifacts import arrays_path
from mmcompress.codecs import load_codec, make_codec
from mmcompress.codecs.learned import TrainConfig, TrainingDivergedError, run_training
from mmcompress.codecs.learned.checkpoint import load_checkpoint, save_checkpoint
from mmcompress.errors import ArtifactError, CodecError

FAST = {"epochs": 4, "batch_size": 256, "patience": 10}


def _state(codec) -> dict[str, np.ndarray]:
    meta, arrays = codec._get_state()
    return arrays


def test_same_seed_same_codec_and_codes(digits):
    a = make_codec("NSQ8x4", random_state=5, train=FAST).fit(digits)
    b = make_codec("NSQ8x4", random_state=5, train=FAST).fit(digits)
    for key, value in _state(a).items():
        np.testing.assert_array_equal(value, _state(b)[key], err_msg=key)
    np.testing.assert_array_equal(a.encode(digits), b.encode(digits))
    c = make_codec("NSQ8x4", random_state=6, train=FAST).fit(digits)
    assert not np.array_equal(_state(a)["A"], _state(c)["A"])


def test_resume_from_checkpoint_equals_uninterrupted(digits, tmp_path):
    full = make_codec("NSQ8x4", train=FAST).fit(digits)
    ckpt = tmp_path / "ckpt"
    first = make_codec("NSQ8x4", train={**FAST, "checkpoint_dir": str(ckpt), "stop_after_epoch": 2})
    first.fit(digits)
    assert not first.train_result_.complete
    manifest = json.loads((ckpt / "checkpoint.json").read_text())
    assert manifest["state"]["epoch"] == 2 and not manifest["state"]["finished"]
    resumed = make_codec("NSQ8x4", train={**FAST, "checkpoint_dir": str(ckpt)}).fit(digits)
    assert resumed.train_result_.resumed_from_epoch == 2
    assert resumed.train_result_.epochs_run == full.train_result_.epochs_run == 4
    for key, value in _state(full).items():
        np.testing.assert_array_equal(value, _state(resumed)[key], err_msg=key)
    np.testing.assert_array_equal(full.encode(digits), resumed.encode(digits))


def test_checkpoint_from_other_setup_is_refused(digits, tmp_path):
    ckpt = tmp_path / "ckpt"
    make_codec("NSQ8x4", train={**FAST, "checkpoint_dir": str(ckpt), "stop_after_epoch": 1}).fit(digits)
    with pytest.raises(CodecError, match="different training setup"):
        make_codec("NSQ8x4", train={**FAST, "lr": 0.5, "checkpoint_dir": str(ckpt)}).fit(digits)


def test_checkpoint_tampering_is_refused(tmp_path):
    save_checkpoint(tmp_path, {"w": torch.arange(6.0)}, {"epoch": 3})
    tensors, state = load_checkpoint(tmp_path)
    assert state["epoch"] == 3 and torch.equal(tensors["w"], torch.arange(6.0))
    blob = next(tmp_path.glob("tensors-*.safetensors"))
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum"):
        load_checkpoint(tmp_path)
    (tmp_path / "checkpoint.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_checkpoint(tmp_path)


class _LinearAutoencoder:
    """A real objective (reconstruction through a linear bottleneck) that can be made to blow up."""

    def __init__(self, blow_up_at_epoch: int | None = None) -> None:
        self.blow_up_at_epoch = blow_up_at_epoch

    def batch_loss(self, model, xb, epoch):
        loss = (model(xb) - xb).pow(2).sum(1).mean()
        if self.blow_up_at_epoch is not None and epoch >= self.blow_up_at_epoch:
            loss = loss * torch.tensor(float("nan"))
        return loss

    def val_loss(self, model, xv, epoch):
        with torch.no_grad():
            return float((model(xv) - xv).pow(2).sum(1).mean())


def _autoencoder(d: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(d, 8), torch.nn.Linear(8, d))


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(digits, tmp_path):
    X = torch.from_numpy(digits)
    cfg = TrainConfig(epochs=6, batch_size=512, checkpoint_dir=str(tmp_path), patience=10)
    model = _autoencoder(X.shape[1])
    with pytest.raises(TrainingDivergedError, match=r"non-finite loss .* epoch 3 .* last good checkpoint"):
        run_training(model, _LinearAutoencoder(blow_up_at_epoch=3), X[:1500], X[1500:], cfg)
    tensors, state = load_checkpoint(tmp_path)
    assert state["epoch"] == 3 and not state["finished"]
    assert all(torch.isfinite(t).all() for k, t in tensors.items() if k.startswith("model."))
    # The kept checkpoint resumes cleanly once the cause is gone.
    result = run_training(_autoencoder(X.shape[1]), _LinearAutoencoder(), X[:1500], X[1500:], cfg)
    assert result.resumed_from_epoch == 3 and result.epochs_run == 6


def test_overflowing_input_raises_diverged_error(digits):
    with pytest.raises(TrainingDivergedError, match="non-finite loss"):
        make_codec("NSQ8x4", train=FAST).fit(digits * 1e25)


def test_early_stop_on_plateau_restores_best(digits):
    X = torch.from_numpy(digits)
    cfg = TrainConfig(epochs=200, batch_size=256, lr=3e-3, patience=2, min_delta=1e-2)
    model = _autoencoder(X.shape[1])
    result = run_training(model, _LinearAutoencoder(), X[:1500], X[1500:], cfg)
    assert result.stopped_early and result.epochs_run < 200
    assert result.best_epoch == result.epochs_run - 1 - cfg.patience
    final = _LinearAutoencoder().val_loss(model, X[1500:], 0)
    assert final == pytest.approx(result.best_val, rel=1e-6)


def test_saved_learned_codec_is_data_only(digits, tmp_path):
    codec = make_codec("NSQ8x4", train=FAST).fit(digits)
    codec.save(tmp_path / "c.json")
    npz = arrays_path(tmp_path / "c.json", json.loads((tmp_path / "c.json").read_text()))
    raw = npz.read_bytes()
    with np.load(npz, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
    assert raw[:2] == b"PK"
    np.testing.assert_array_equal(load_codec(tmp_path / "c.json").encode(digits), codec.encode(digits))
