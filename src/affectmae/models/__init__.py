"""Neural network modules: the ViT frame encoder, the MAE, the temporal model."""
