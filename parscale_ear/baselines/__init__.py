"""Peer baselines trained and scored in this project's pipeline (same latents, loop, sampler API, FID)."""

# The peer models' names (presets of baselines/dit.py); kept here, free of torch, for the CLI's choices.
PEER_NAMES = ("dit-xs", "dit-s", "dit-b", "meanflow-s")
