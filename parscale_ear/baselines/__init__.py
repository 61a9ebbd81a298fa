"""Peer baselines trained and scored in this project's pipeline (same latents, loop, sampler API, FID)."""
