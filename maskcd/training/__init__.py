"""Training on accelerate: datasets for training/testing, the training loop, exact distributed evaluation."""
