"""Networks from elsewhere (Keras, SavedModel, ONNX) in, frozen graphs out."""
