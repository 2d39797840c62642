"""The student outside Python: an ONNX model (:mod:`export.onnx_model`) and an integer-only
form with a generated C evaluator (:mod:`export.fixed`), each verified on held-out rows
before anything is written (:mod:`export.run`)."""
