"""FastSampler: the whole noise -> pixels path for one fixed batch shape, set up once and replayed.

`ParScaleEAR.compile_sampler(batch_size, ...)` returns one. On CUDA it runs in bfloat16 autocast and
captures the path in a CUDA graph (one for seeded calls, one for device-random calls), so a call
costs what the benchmark measures; `compile=True` adds torch.compile on the decoder. On the CPU it
runs eagerly in float32.

What is and is not identical to `generate`:
- `sampler(seed=s)` draws image i's randomness from seed s + i exactly as `generate(B, seed=s)`
  does (on the CPU, copied into the sampler's input buffers), with the same default labels. In
  float32 without graphs (the CPU default) the images are bit-identical to `generate`'s.
- In bfloat16 they differ by rounding (close, not equal); a float32 CUDA-graph replay runs the
  same kernels as eager mode and matched it in our tests, but cuBLAS does not promise it.
- `sampler()` with no seed draws all noise on the device inside the graph: the fastest path,
  random, and not tied to per-image seeds.
- The returned tensor is the sampler's output buffer, overwritten by the next call: clone it to keep it.
"""
from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import Callable

import torch

from .checks import check_int, check_labels, check_real


class FastSampler:
    """noise -> latents -> pixels for `batch_size` images at a fixed schedule (see the module doc)."""

    def __init__(self, model, batch_size: int, steps=None, cfg: float | None = None, temperature: float | None = None,
                 dtype: torch.dtype | None = None, graphs: bool | None = None, compile: bool = False,
                 channels_last: bool = False, solver: str | None = None):
        for name, flag in (("graphs", graphs), ("compile", compile), ("channels_last", channels_last)):
            if not (isinstance(flag, bool) or (name == "graphs" and flag is None)):
                raise TypeError(f"compile_sampler: {name} must be True or False, got {flag!r}")
        self.model = model.eval()
        self.batch_size = B = check_int(batch_size, "batch_size")
        config = model.config
        self.steps = model.resolve_steps(steps)
        self.cfg = check_real(config.cfg if cfg is None else cfg, "cfg", minimum=0.0)
        self.temperature = check_real(config.temperature if temperature is None else temperature, "temperature",
                                      minimum=0.0)
        self.solver = solver
        model.generator.check_sampling(self.steps, self.cfg, self.temperature, solver)
        self.device = device = model.device
        cuda = device.type == "cuda"
        self.dtype = dtype if dtype is not None else (torch.bfloat16 if cuda else torch.float32)
        if self.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"compile_sampler: dtype must be float32, bfloat16 or float16, got {self.dtype}")
        self.graphs = cuda if graphs is None else graphs
        if self.graphs and not cuda:
            raise ValueError("compile_sampler: CUDA graphs need a model on a CUDA device")
        self._amp = torch.autocast(device.type, dtype=self.dtype) if self.dtype != torch.float32 else nullcontext()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self._fmt = fmt
        model.vae.decoder.to(memory_format=fmt)
        self._decoder = torch.compile(model.vae.decoder) if compile else model.vae.decoder
        self.settings = {"batch_size": B, "steps": list(self.steps), "cfg": self.cfg, "temperature": self.temperature,
                         "solver": solver, "dtype": str(self.dtype).replace("torch.", ""), "cuda_graphs": self.graphs,
                         "compile": compile, "channels_last": channels_last}
        # static inputs: per-image noise (filled from seeds) and labels
        self._noise = model.draw_noise_on_device(B)
        self._labels = None
        if config.num_classes:
            self._labels = model.default_labels(range(B)).to(device)
        self._default_labels = True  # the buffer holds labels 0, 1, ... (mod classes)
        self._replays: dict[str, Callable[[], torch.Tensor]] = {}

    # ------------------------------------------------------------------ the path
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1] through the sampler's decoder (memory format, compile)."""
        x = latents / self.model.vae.config.latent_scale
        if self._fmt is torch.channels_last:  # otherwise as generate: the layout picks the conv kernels
            x = x.contiguous(memory_format=self._fmt)
        return self._decoder(x).clamp(-1, 1)

    def _run(self, noise: dict) -> torch.Tensor:
        with torch.no_grad(), self._amp:
            z = self.model.generator.sample(noise, self._labels, self.steps, self.cfg, self.temperature, self.solver)
            return self.decode(z).float()

    def _seeded(self) -> torch.Tensor:
        return self._run(self._noise)

    def _random(self) -> torch.Tensor:
        return self._run(self.model.draw_noise_on_device(self.batch_size))  # default generator: capture-safe

    def _replay(self, name: str, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        if name not in self._replays:
            if self.graphs:
                try:
                    self._replays[name] = _capture(fn, self.device)
                except RuntimeError as e:  # say so, and run eagerly
                    print(f"compile_sampler: CUDA graph capture failed ({str(e).splitlines()[0]}); running eagerly",
                          file=sys.stderr)
                    self._replays[name] = fn
            else:
                self._replays[name] = fn
        return self._replays[name]()

    # ------------------------------------------------------------------ public
    def set_inputs(self, seed: int = 0, labels=None) -> None:
        """Fill the input buffers: image i's noise from seed + i, labels (default: by seed, as generate)."""
        seed = check_int(seed, "seed", minimum=0)
        seeds = list(range(seed, seed + self.batch_size))
        drawn = self.model.draw_noise(seeds)
        for name, parts in drawn.items():
            for part, value in parts.items():
                self._noise[name][part].copy_(value)
        self._set_labels(labels, seeds)

    def _set_labels(self, labels, seeds) -> None:
        if self._labels is None:
            if labels is not None:
                raise ValueError("labels given to an unconditional model")
            return
        default = labels is None and seeds[0] == 0
        if default and self._default_labels:
            return  # already there: no host-to-device copy on the timed path
        if labels is None:
            labels = self.model.default_labels(seeds)
        else:
            labels = check_labels(labels, self.model.config.num_classes, batch=self.batch_size)
        self._labels.copy_(labels)
        self._default_labels = default

    def __call__(self, seed: int | None = None, labels=None) -> torch.Tensor:
        """Images (batch_size, C, H, W) float32 in [-1, 1]. seed=None (the fast path): noise drawn on
        the device inside the graph, labels default to 0, 1, ... (mod classes). seed=s: image i from
        seed s + i with generate's default labels, as `generate(B, seed=s)`."""
        if seed is None:
            self._set_labels(labels, range(self.batch_size))
            return self._replay("random", self._random)
        self.set_inputs(seed, labels)
        return self._replay("seeded", self._seeded)

    def replay(self) -> torch.Tensor:
        """Run again on the current input buffers (no host work): what a timing loop calls."""
        return self._replay("seeded", self._seeded)


def _capture(fn: Callable[[], torch.Tensor], device: torch.device) -> Callable[[], torch.Tensor]:
    """Capture `fn` (static shapes, no host syncs) in a CUDA graph after warm-up on a side stream."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    return replay
