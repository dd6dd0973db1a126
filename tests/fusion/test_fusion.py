import json

import numpy as np
import pytest
import torch

from mmcompress.artifacts import arrays_path
from mmcompress.data.catalog import ItemCatalog
from mmcompress.errors import ArtifactError, CatalogError
from mmcompress.fusion import (
    FusionConfig,
    ModalityNormalizer,
    fit_fusion,
    load_fusion,
    modality_contribution,
    modality_redundancy,
)
from mmcompress.fusion.attention import modality_views
from mmcompress.fusion.diagnostics import cross_modal_retrieval

FAST = {"epochs": 8, "out_dim": 32, "hidden_dim": 64, "attention_dim": 32, "batch_size": 256}


def _unit_or_zero(F):
    n = np.linalg.norm(F, axis=1)
    return np.all(np.isclose(n, 1.0, atol=1e-5) | (n == 0))


def test_weighted_concat_normalises_and_zeroes_masked_blocks(digits_catalog):
    cat = digits_catalog
    model = fit_fusion(cat, FusionConfig(weights={"top": 1.0, "bottom": 4.0}), progress=False)
    F = model.transform(cat)
    assert F.shape == (len(cat), 64) and F.dtype == np.float32 and model.dim == 64
    np.testing.assert_allclose(np.linalg.norm(F, axis=1), 1.0, atol=1e-5)
    no_top = np.flatnonzero(~cat.masks["top"])[0]
    assert not F[no_top, :32].any()
    top_only = ModalityNormalizer().fit(cat.modalities["top"], cat.masks["top"])
    np.testing.assert_allclose(F[no_top + 7, :32] / np.linalg.norm(F[no_top + 7, :32]),
                               top_only.transform(cat.modalities["top"][[no_top + 7]])[0], atol=1e-5)
    both = np.flatnonzero(cat.masks["top"] & cat.masks["bottom"])
    ratio = np.linalg.norm(F[both, 32:], axis=1) / np.linalg.norm(F[both, :32], axis=1)
    np.testing.assert_allclose(ratio, 2.0, rtol=1e-4)


def test_weights_change_contributions(digits_catalog):
    cat = digits_catalog
    c = {}
    for name, w in (("top_heavy", {"top": 1.0, "bottom": 0.05}), ("bottom_heavy", {"top": 0.05, "bottom": 1.0})):
        F = fit_fusion(cat, FusionConfig(weights=w), progress=False).transform(cat)
        c[name] = modality_contribution(cat, F, k=10, max_queries=500)
    assert c["top_heavy"]["top"] > c["top_heavy"]["bottom"] + 0.2
    assert c["bottom_heavy"]["bottom"] > c["bottom_heavy"]["top"] + 0.2
    assert c["top_heavy"]["top"] > c["bottom_heavy"]["top"]
    zero = fit_fusion(cat, FusionConfig(weights={"top": 1.0, "bottom": 0.0}), progress=False)
    assert zero.modalities == ["top"] and zero.dim == 32


def test_contrastive_training_improves_cross_modal_agreement(digits_catalog):
    cat = digits_catalog
    cfg = {**FAST, "method": "contrastive", "epochs": 15}
    untrained = fit_fusion(cat, FusionConfig(**{**cfg, "epochs": 0}), progress=False)
    trained = fit_fusion(cat, FusionConfig(**cfg), progress=False)
    before = cross_modal_retrieval(untrained, cat, "top", "bottom")
    after = cross_modal_retrieval(trained, cat, "top", "bottom")
    chance = 1 / int((cat.masks["top"] & cat.masks["bottom"]).sum())
    assert before < 5 * chance
    assert after > 40 * chance
    h = trained.history
    assert min(h["val_loss"]) < h["initial_val_loss"]
    F = trained.transform(cat)
    assert F.shape == (len(cat), 32) and _unit_or_zero(F)


def test_learned_fusion_is_deterministic_for_a_seed(digits_catalog):
    cfg = FusionConfig(**{**FAST, "method": "contrastive", "epochs": 2})
    a = fit_fusion(digits_catalog, cfg, progress=False).transform(digits_catalog)
    b = fit_fusion(digits_catalog, cfg, progress=False).transform(digits_catalog)
    np.testing.assert_array_equal(a, b)
    c = fit_fusion(digits_catalog, FusionConfig(**{**FAST, "method": "contrastive", "epochs": 2, "seed": 1}),
                   progress=False).transform(digits_catalog)
    assert not np.allclose(a, c)


def test_early_stopping_keeps_best_weights(digits_catalog):
    cfg = FusionConfig(**{**FAST, "method": "contrastive", "epochs": 20, "patience": 2, "min_delta": 1e6})
    model = fit_fusion(digits_catalog, cfg, progress=False)
    h = model.history
    assert h["stopped_early"] and len(h["val_loss"]) == 2 and h["best_epoch"] == -1
    untrained = fit_fusion(digits_catalog, FusionConfig(**{**FAST, "method": "contrastive", "epochs": 0}),
                           progress=False)
    np.testing.assert_array_equal(model.transform(digits_catalog), untrained.transform(digits_catalog))


def test_attention_fusion(digits_catalog):
    cat = digits_catalog
    cfg = FusionConfig(**{**FAST, "method": "attention", "epochs": 6})
    model = fit_fusion(cat, cfg, progress=False)
    F = model.transform(cat)
    assert F.shape == (len(cat), 32) and _unit_or_zero(F)
    assert (np.linalg.norm(F, axis=1) > 0).all()
    assert min(model.history["val_loss"]) < model.history["initial_val_loss"]
    np.testing.assert_array_equal(F, fit_fusion(cat, cfg, progress=False).transform(cat))
    y = cat.attributes["label"].to_numpy()
    S = F @ F.T
    np.fill_diagonal(S, -np.inf)
    assert np.mean(y[S.argmax(axis=1)] == y) > 0.5
    none = cat.subset(np.arange(5))
    none.masks["top"][:] = False
    none.masks["bottom"][0] = False
    G = model.transform(none)
    assert not G[0].any() and np.isclose(np.linalg.norm(G[1]), 1.0, atol=1e-5)


def test_modality_views_are_valid_subsets():
    present = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 0], [1, 1, 0]] * 50, dtype=torch.bool)
    a, b = modality_views(present, torch.Generator().manual_seed(0))
    assert (a & ~present).sum() == 0 and (b & ~present).sum() == 0
    assert a.any(dim=1).all() and b.any(dim=1).all()
    multi = present.sum(dim=1) > 1
    assert (a.sum(dim=1)[multi] < present.sum(dim=1)[multi]).all()
    single = ~multi
    assert torch.equal(a[single], present[single]) and torch.equal(b[single], present[single])


@pytest.mark.parametrize("method", ["weighted_concat", "contrastive", "attention"])
def test_save_load_round_trip(tmp_path, digits_catalog, method):
    model = fit_fusion(digits_catalog, FusionConfig(**{**FAST, "method": method, "epochs": 1}), progress=False)
    model.save(tmp_path / "f")
    back = load_fusion(tmp_path / "f")
    np.testing.assert_array_equal(back.transform(digits_catalog), model.transform(digits_catalog))
    assert back.config == model.config


def test_tampered_artifacts_are_refused(tmp_path, digits_catalog):
    model = fit_fusion(digits_catalog, FusionConfig(**{**FAST, "method": "contrastive", "epochs": 1}),
                       progress=False)
    model.save(tmp_path / "f")
    header = tmp_path / "f" / "fusion.json"
    npz = arrays_path(header, json.loads(header.read_text()))
    good_npz, good_header = npz.read_bytes(), header.read_text()
    npz.write_bytes(good_npz[:-50])
    with pytest.raises(ArtifactError, match="checksum"):
        load_fusion(tmp_path / "f")
    npz.write_bytes(good_npz)
    h = json.loads(good_header)
    h["meta"]["config"]["out_dim"] = 16
    header.write_text(json.dumps(h))
    with pytest.raises(ArtifactError, match="header does not match"):
        load_fusion(tmp_path / "f")
    h = json.loads(good_header)
    h["format_version"] = 99
    header.write_text(json.dumps(h))
    with pytest.raises(ArtifactError, match="format_version"):
        load_fusion(tmp_path / "f")
    header.unlink()
    with pytest.raises(ArtifactError, match="not found"):
        load_fusion(tmp_path / "f")


def test_transform_checks_the_catalog(digits_catalog):
    model = fit_fusion(digits_catalog, FusionConfig(), progress=False)
    only_top = ItemCatalog(digits_catalog.item_ids, {"top": digits_catalog.modalities["top"]})
    with pytest.raises(CatalogError, match=r"modality missing.*column='bottom'"):
        model.transform(only_top)
    narrow = ItemCatalog(digits_catalog.item_ids, {"top": digits_catalog.modalities["top"][:, :8],
                                                   "bottom": digits_catalog.modalities["bottom"]})
    with pytest.raises(CatalogError, match=r"dimension differs.*expected=32.*found=8"):
        model.transform(narrow)
    with pytest.raises(CatalogError, match="missing from the catalog"):
        fit_fusion(digits_catalog, FusionConfig(modalities=["top", "image"]), progress=False)
    with pytest.raises(CatalogError, match="at least two modalities"):
        fit_fusion(only_top, FusionConfig(method="contrastive"), progress=False)


def test_bad_config():
    with pytest.raises(ValueError, match="method"):
        FusionConfig(method="sum")
    with pytest.raises(ValueError, match="unknown keys"):
        FusionConfig.from_dict({"methd": "weighted_concat"})
    with pytest.raises(ValueError, match="weights"):
        FusionConfig(weights={"text": -1})


def test_redundancy_diagnostics(digits_catalog):
    cat = digits_catalog
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(len(cat), 16)).astype(np.float32)
    from mmcompress.data.catalog import ModalitySpec

    cat3 = cat.with_modality(ModalitySpec("noise", 16), noise)
    red = modality_redundancy(cat3, k=10, n_components=8, max_queries=500)
    assert set(red) == {"top|bottom", "top|noise", "bottom|noise"}
    tb, tn = red["top|bottom"], red["top|noise"]
    assert tb["cca_top"] > 0.5 > tn["cca_top"]
    assert tb["cca_mean"] > 2 * tb["cca_chance_mean"]
    assert tn["cca_mean"] < 2 * tn["cca_chance_mean"]
    assert tb["knn_overlap"] > 5 * tb["knn_overlap_chance"]
    assert tn["knn_overlap"] < 5 * tn["knn_overlap_chance"]
    assert tb["n_items"] == int((cat.masks["top"] & cat.masks["bottom"]).sum())
