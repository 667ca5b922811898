"""Evaluate checkpoints the way the paper does: Arabic knowledge (multiple choice) and alignment (harmlessness)."""
