"""How a trained model is used outside the pipeline: image files in and masks out, ONNX and MLflow exports."""
