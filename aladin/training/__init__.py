"""Training: the fit loop, losses, batch composition, distillation and cross-encoder training."""
