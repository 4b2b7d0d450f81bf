"""ONNX side of the DHSA ops: schemas, plugin-node translations, portable decompositions."""
