"""How an image becomes a mask: the settings, the logits, the zoom-in pass, clean-up, quality, exported models."""
