"""The networks (U-Net, EDM preconditioning, one-step generator, ratio net) and their artifacts."""
