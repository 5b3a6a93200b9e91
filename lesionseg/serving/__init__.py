"""Applying a trained model to image files, and exporting it (ONNX, MLflow pyfunc)."""
