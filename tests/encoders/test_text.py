import numpy as np
import pytest

from mmcompress.data.movielens import movie_text
from mmcompress.encoders.text import EmbeddingCache, TextEncoder, TextEncoderConfig, text_key

pytestmark = pytest.mark.slow

IDS = [1, 3114, 2355, 260, 1196, 1210, 1258, 1347, 1387, 1997, 2710, 1327, 2, 3, 4, 5, 6, 7, 8, 9, 10,
       318, 356, 296, 593, 480, 527, 589, 2571, 858]


@pytest.fixture(scope="module")
def texts(raw_movies):
    m = raw_movies.set_index("movieId").loc[IDS]
    return [movie_text(t, g, []) for t, g in zip(m["title"], m["genres"], strict=True)]


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder(TextEncoderConfig(batch_size=16), progress=False)


def test_embeddings_are_normalised_and_meaningful(encoder, texts):
    X = encoder.encode(texts)
    assert X.shape == (len(IDS), 384) and X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    row = {mid: i for i, mid in enumerate(IDS)}
    toy, toy2 = X[row[1]], X[row[3114]]
    for horror in (1258, 1347, 1997, 2710, 1327):
        assert toy @ toy2 > toy @ X[row[horror]]
    sims = X[row[260]] @ X.T
    sims[row[260]] = -1
    assert IDS[int(np.argmax(sims))] in (1196, 1210)


def test_cache_skips_unchanged_texts_and_survives_a_bad_shard(tmp_path, texts, encoder):
    cfg = TextEncoderConfig(batch_size=16, cache_dir=str(tmp_path), chunk_size=10)
    cold = TextEncoder(cfg, progress=False)
    cold._model = encoder._load()
    A = cold.encode(texts)
    assert cold.last_stats_["computed"] == len(texts)
    shards = sorted(tmp_path.rglob("shard-*.npz"))
    assert len(shards) == 3
    warm = TextEncoder(cfg, progress=False)
    B = warm.encode(texts + [texts[0]])
    assert warm.last_stats_ == {"n_texts": len(texts) + 1, "n_unique": len(texts),
                                "from_cache": len(texts), "computed": 0}
    assert warm._model is None
    np.testing.assert_array_equal(B[:-1], A)
    np.testing.assert_array_equal(B[-1], A[0])
    shards[0].write_bytes(shards[0].read_bytes()[:-100])
    again = TextEncoder(cfg, progress=False)
    again._model = encoder._load()
    C = again.encode(texts)
    assert again.last_stats_["computed"] == 10
    np.testing.assert_allclose(C, A, atol=1e-5)


def test_cache_keys_depend_on_model_and_text(tmp_path):
    assert text_key("m1", "a") != text_key("m2", "a") != text_key("m1", "b")
    cache = EmbeddingCache(tmp_path, dim=4)
    keys = [text_key("m", str(i)) for i in range(5)]
    cache.put(keys[:3], np.eye(4, dtype=np.float32)[:3])
    vecs, found = EmbeddingCache(tmp_path, dim=4).get(keys)
    assert found.tolist() == [True, True, True, False, False]
    np.testing.assert_array_equal(vecs[:3], np.eye(4)[:3])
    for i in range(3, 5):
        cache.put([keys[i]], np.ones((1, 4), np.float32))
    cache.compact()
    assert len(list(tmp_path.glob("shard-*.npz"))) == 1
    assert EmbeddingCache(tmp_path, dim=4).get(keys)[1].all()
