"""Training a network to resist: against universal noise, and PGD adversarial training."""
