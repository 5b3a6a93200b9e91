"""How a model is trained: the loop, its phases as MLflow runs, data-parallel training, cross-validation."""
