"""What skl2onnx's text graphs need so that onnxruntime scores exactly as scikit-learn did, on any machine.

Shared by the sentiment specialist's linear recipe (:mod:`router.training.sentiment`) and the request classifier
(:mod:`router.training.classifier`).
"""

from __future__ import annotations

from typing import Any


def portable_lowercase(onx: Any) -> None:
    """skl2onnx's StringNormalizer carries no locale, so onnxruntime asks for en_US.UTF-8 and fails to load
    on machines without that locale (this one). The "C" locale always exists; it lower-cases ASCII, which
    covers the English training data (non-ASCII capitals stay as they are)."""
    from onnx import helper

    for node in onx.graph.node:
        if node.op_type == "StringNormalizer":
            kept = [a for a in node.attribute if a.name != "locale"]
            del node.attribute[:]
            node.attribute.extend([*kept, helper.make_attribute("locale", "C")])


def sklearn_sublinear_tf(onx: Any) -> None:
    """scikit-learn's ``sublinear_tf`` weight is ``1 + log(tf)`` (0 where tf = 0), but skl2onnx writes
    ``log(1 + tf)``: the same ranking of one word against another, but a different weight for repeated words, so
    the graph's probabilities drifted from the trained model's (by up to ~0.03 on review sentences). Rewrites each
    ``Add(counts, ones) -> Log`` pair to ``Where(counts > 0, 1 + Log(counts), 0)``."""
    import numpy as np
    from onnx import helper, numpy_helper

    nodes = list(onx.graph.node)
    counts_of = {n.output[0] for n in nodes if n.op_type == "TfIdfVectorizer"}
    plus_one = {n.output[0]: n for n in nodes if n.op_type == "Add" and n.input[0] in counts_of}
    logs = {n.input[0]: n for n in nodes if n.op_type == "Log" and n.input[0] in plus_one}
    rewritten: list[Any] = []
    for node in nodes:
        if node.op_type == "Log" and node.input[0] in plus_one:
            continue  # replaced together with its Add, below
        if node.op_type != "Add" or node.output[0] not in logs:
            rewritten.append(node)
            continue
        counts, out = node.input[0], logs[node.output[0]].output[0]
        rewritten += [
            helper.make_node("Log", [counts], [f"{out}_log_tf"]),
            helper.make_node("Add", [f"{out}_log_tf", "sublinear_one"], [f"{out}_1_plus_log_tf"]),
            helper.make_node("Greater", [counts, "sublinear_zero"], [f"{out}_present"]),
            helper.make_node("Where", [f"{out}_present", f"{out}_1_plus_log_tf", "sublinear_zero"], [out]),
        ]
    if not logs:
        return  # no sublinear TF-IDF in this graph
    del onx.graph.node[:]
    onx.graph.node.extend(rewritten)
    onx.graph.initializer.extend([numpy_helper.from_array(np.array(1.0, dtype=np.float32), "sublinear_one"),
                                  numpy_helper.from_array(np.array(0.0, dtype=np.float32), "sublinear_zero")])
    used = {name for n in onx.graph.node for name in n.input}
    inits = [i for i in onx.graph.initializer if i.name in used]
    del onx.graph.initializer[:]
    onx.graph.initializer.extend(inits)
