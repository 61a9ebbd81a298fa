"""Evaluation: FID with pytorch-fid's InceptionV3 (fid, fid_weights), reconstruction metrics (metrics), FID of a
model's samples and of its LiteVAE (evaluate), FID and cost per sampling schedule (quality) and latency (benchmark)."""
