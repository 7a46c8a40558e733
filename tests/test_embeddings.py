"""MiniLM sentence embeddings exported to int8 ONNX (`router train embeddings`): the shipped encoder runs
with onnxruntime + tokenizers only; the comparison against sentence-transformers needs the `embeddings`
extra (torch) and is skipped without it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from router.training.embeddings import EMBED_DIR, OnnxEncoder, available

needs_encoder = pytest.mark.skipif(not available(EMBED_DIR), reason="run `router train embeddings` first")


@needs_encoder
def test_shipped_encoder_runs_without_torch_and_separates_meaning() -> None:
    enc = OnnxEncoder(EMBED_DIR)
    emb = enc.encode(
        ["The film was wonderful and moving.", "A beautiful, touching movie.", "How do I reset my router password?"]
    )
    assert emb.shape == (3, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-3)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2


@needs_encoder
def test_odd_input_and_long_text_are_bounded() -> None:
    emb = OnnxEncoder(EMBED_DIR).encode(["", "   ", "😀🎉", "\x00\x01", "x " * 50_000])
    assert emb.shape == (5, 384) and np.isfinite(emb).all()


@needs_encoder
def test_export_metadata_records_agreement_with_the_reference() -> None:
    meta = json.loads((EMBED_DIR / "embeddings.json").read_text())
    assert meta["cosine_vs_sentence_transformers"]["int8_min"] >= 0.97
    assert meta["int8_onnx_bytes"] < 50_000_000


@pytest.mark.slow
@needs_encoder
def test_int8_encoder_matches_sentence_transformers() -> None:
    pytest.importorskip("torch", reason="the `embeddings` extra (torch) is not installed", exc_type=ImportError)
    st = pytest.importorskip(
        "sentence_transformers", reason="the `embeddings` extra is not installed", exc_type=ImportError
    )
    from router.training.embeddings import MAX_TOKENS, source_dir

    texts = ["a gorgeous, witty, seductive movie.", "dull and painfully slow.", "What is 12 times 7?"]
    ref_model = st.SentenceTransformer(str(source_dir()), device="cpu", local_files_only=True)
    ref_model.max_seq_length = MAX_TOKENS
    ref = ref_model.encode(texts, normalize_embeddings=True)
    cos = (OnnxEncoder(EMBED_DIR).encode(texts) * ref).sum(1)
    assert cos.min() > 0.97
