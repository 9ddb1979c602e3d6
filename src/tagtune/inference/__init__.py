"""Tagging with a trained folder: opening it (the torch or ONNX backend), decoding logits into
spans, the Tagger, its evaluation on an annotated file, ranking texts, and ONNX export; and the
span head's tagger (spantagger), spans that may nest or overlap, over windows; what both share
when they run (runtime)."""
