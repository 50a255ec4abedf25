"""The inference group: rollout workers (`worker`) run the engine through the branching sampler (`sampler`)
under a branch policy (`policies/`), and return finished trees. No verification and no training here."""
