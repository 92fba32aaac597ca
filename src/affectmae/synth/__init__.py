"""Generated data in the Aff-Wild2 layout: latent affect trajectories, faces drawn (cartoon) or animated from real photographs, and scene videos."""
