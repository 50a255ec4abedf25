"""branchrl: branched, verified RL synthetic data for reasoning models."""
