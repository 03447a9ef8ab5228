"""Drawing samples: the EDM Heun sampler, seeded one-step generation, verifier scaling, grids."""
