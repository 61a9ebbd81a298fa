"""Property-based tests (hypothesis): the config parser, --set, --steps and --labels parsing, and the checkpoint and
release loaders never answer bad input with a traceback or a wrong result, only with a one-line error."""
import json
import string

import pytest
import torch

import parscale_ear as pe
from parscale_ear.args import parse_overrides as _overrides, parse_steps as _steps
from parscale_ear.cli import main
from parscale_ear.loading import load_checkpoint

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=True) |
                    st.text(max_size=8), lambda inner: st.lists(inner, max_size=3) |
                    st.dictionaries(st.text(string.ascii_lowercase + "_", max_size=12), inner, max_size=3), max_leaves=6)
FIELDS = st.sampled_from(["name", "num_classes", "cfg", "temperature", "vae", "hybrid", "hybrid.mode", "hybrid.pool",
                          "hybrid.coarse", "hybrid.coarse.width", "hybrid.coarse.heads", "hybrid.fine.streams",
                          "hybrid.fine.alpha", "hybrid.coarse_steps", "vae.latent_channels", "vae.decoder_channels",
                          "hybrid.fine.solver", "hybrid.coarse.objective", "bogus", "hybrid.bogus"])


def nest(key: str, value) -> dict:
    out = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


@FAST
@given(key=FIELDS, value=JSON)
def test_any_config_override_builds_a_model_or_raises_a_one_line_error(key, value):
    try:
        config = pe.get_config("tiny-32", **nest(key, value))
        model = pe.ParScaleEAR(config)
    except (TypeError, ValueError) as e:
        assert "\n" not in str(e) and str(e)
        return
    assert isinstance(config, pe.ParScaleEARConfig) and model.config is config  # accepted: a model built from it


@FAST
@given(items=st.lists(st.text(string.printable, max_size=20), max_size=4))
def test_set_parsing_is_a_dict_or_a_one_line_error(items):
    try:
        out = _overrides(items)
    except ValueError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(out, dict)


@FAST
@given(text=st.text(string.digits + ",-+ x.", max_size=12))
def test_steps_parsing(text):
    import argparse

    try:
        value = _steps(text)
    except argparse.ArgumentTypeError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(value, int) or (isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value))


@FAST
@given(labels=st.lists(st.integers(-10**30, 10**30), min_size=1, max_size=3), steps=st.text("0123456789,x", max_size=6))
def test_sample_cli_with_any_labels_and_steps_is_an_image_or_one_line(labels, steps, tmp_path_factory, capsys):
    out = tmp_path_factory.mktemp("s") / "g.png"
    argv = ["sample", "--n", "1", "--device", "cpu", "--out", str(out), "--labels", *map(str, labels)]
    code = main(argv + (["--steps", steps] if steps else []))
    err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("parscale-ear")]
    if code == 0:
        assert out.is_file() and 0 <= labels[0] < 10
    else:
        assert code == 2 and len(err) == 1 and err[0].startswith("parscale-ear: error: ") and not out.exists()


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    torch.manual_seed(0)
    return pe.create_model("tiny-32-flow").save_pretrained(tmp_path_factory.mktemp("rel") / "tiny")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import numpy as np

    from parscale_ear.train import TrainConfig, train

    root = tmp_path_factory.mktemp("ck")
    rng = np.random.default_rng(0)
    np.savez(root / "d.npz", images=rng.integers(0, 255, (10, 32, 32), dtype=np.uint8), labels=np.arange(10))
    cfg = TrainConfig(kind="vae", steps=1, batch_size=4, warmup_steps=1, sample_every=100, data=str(root / "d.npz"),
                      bf16=False, samples=False)
    return train(cfg, root / "vae", pe.get_config("tiny-32"), progress=False) / "checkpoint.pt"


def corrupt(data: bytes, cuts: list[int], flips: list[int]) -> bytes:
    out = bytearray(data)
    for i in flips:
        out[i % len(out)] ^= 0xFF
    for c in cuts:
        out = out[: max(0, c % (len(out) + 1))]
    return bytes(out)


@FAST
@given(cuts=st.lists(st.integers(0, 10**7), max_size=1), flips=st.lists(st.integers(0, 10**7), max_size=4))
def test_a_corrupted_checkpoint_loads_exactly_or_is_refused(cuts, flips, checkpoint, tmp_path_factory):
    if not cuts and not flips:
        return
    path = tmp_path_factory.mktemp("c") / "checkpoint.pt"
    path.write_bytes(corrupt(checkpoint.read_bytes(), cuts, flips))
    try:
        ckpt = load_checkpoint(path)
    except ValueError as e:
        assert "\n" not in str(e)
        return
    good = load_checkpoint(checkpoint)  # a flip in padding or metadata: what loads must be the same weights
    for key in ("model", "ema"):
        assert set(ckpt[key]) == set(good[key])
        assert all(torch.equal(ckpt[key][k], good[key][k]) for k in good[key])


@FAST
@given(flips=st.lists(st.integers(0, 10**8), min_size=1, max_size=4), cut=st.none() | st.integers(0, 10**8),
       edit=st.sampled_from(["weights", "config"]))
def test_a_corrupted_release_loads_or_is_refused(flips, cut, edit, release, tmp_path_factory):
    import shutil

    folder = tmp_path_factory.mktemp("r") / "rel"
    shutil.copytree(release, folder)
    target = folder / ("model.safetensors" if edit == "weights" else "config.json")
    target.write_bytes(corrupt(target.read_bytes(), [] if cut is None else [cut], flips))
    try:
        model = pe.ParScaleEAR.from_pretrained(folder)
    except (ValueError, OSError) as e:
        assert "\n" not in str(e)
        return
    good = pe.ParScaleEAR.from_pretrained(release)  # what loads is exactly the release: the digests catch the rest
    assert model.config == good.config
    for k, v in good.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def _paths(d: dict, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a nested dict."""
    out = []
    for k, v in d.items():
        out.append(prefix + (k,))
        if isinstance(v, dict):
            out += _paths(v, prefix + (k,))
    return out


@FAST
@given(data=st.data())
def test_a_release_config_with_fields_removed_loads_the_same_model_or_is_refused(data, release, tmp_path_factory):
    """Any fields deleted from config.json (its digest recomputed, as a hand edit would): the release is refused with
    one line, or what loads samples exactly what the release samples."""
    import shutil

    from parscale_ear.release import config_digest

    meta = json.loads((release / "config.json").read_text())
    paths = data.draw(st.lists(st.sampled_from(_paths(meta["config"])), min_size=1, max_size=3, unique=True))
    for path in sorted(paths, key=len, reverse=True):
        node = meta["config"]
        for key in path[:-1]:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(path[-1], None)
    meta["config_sha256"] = config_digest(meta["config"])
    folder = tmp_path_factory.mktemp("f") / "rel"
    shutil.copytree(release, folder)
    (folder / "config.json").write_text(json.dumps(meta))
    try:
        model = pe.ParScaleEAR.from_pretrained(folder)
    except (ValueError, OSError) as e:
        assert "\n" not in str(e)
        return
    good = pe.ParScaleEAR.from_pretrained(release)
    assert torch.equal(model.generate(2, seed=0), good.generate(2, seed=0)), paths


@pytest.fixture(scope="module")
def pairs_setup(tmp_path_factory):
    """A tiny flow teacher and the clean cache of its 6 pairs in a folder."""
    from parscale_ear.distill import cached_teacher_pairs

    torch.manual_seed(0)
    teacher = pe.create_model("tiny-32-flow").eval()
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    folder = tmp_path_factory.mktemp("pairs")
    clean = cached_teacher_pairs(folder, teacher, 6, (1, 1), None)
    return teacher, folder, clean


EDITS = st.sampled_from(["flip", "cut", "drop_key", "drop_pairs", "fewer", "slice_dim", "half_to_float", "labels+100",
                         "no_digest", "nan", "scale_one", "other_key"])


@FAST
@given(edit=EDITS, where=st.integers(0, 10**6))
def test_a_damaged_teacher_pairs_cache_gives_the_teachers_pairs_or_is_made_again(edit, where, pairs_setup, capsys):
    """Whatever happens to teacher-pairs-*.pt (bytes flipped, cut, tensors dropped, sliced, retyped, labels out of
    range, NaN, one value changed, the digest or the key edited), the cache returns exactly the teacher's pairs."""
    from parscale_ear.distill import cached_teacher_pairs

    teacher, folder, clean = pairs_setup
    path = clean["path"]
    cache = torch.load(path, weights_only=True)  # the good file: each example ends by checking it is good again
    pairs = cache["pairs"]
    name = sorted(pairs)[where % len(pairs)]
    if edit in ("flip", "cut"):
        raw = bytearray(path.read_bytes())
        if edit == "flip":
            raw[where % len(raw)] ^= 0xFF
        else:
            raw = raw[: where % len(raw)]
        path.write_bytes(bytes(raw))
    else:
        if edit == "drop_key":
            pairs.pop(name)
        elif edit == "drop_pairs":
            cache.pop("pairs")
        elif edit == "fewer":
            pairs[name] = pairs[name][:3]
        elif edit == "slice_dim" and pairs[name].ndim == 3:
            pairs[name] = pairs[name][..., :1]
        elif edit == "half_to_float":
            pairs[name] = pairs[name].float()
        elif edit == "labels+100":
            pairs["labels"] = pairs["labels"] + 100
        elif edit == "no_digest":
            cache.pop("digest", None)
        elif edit == "nan" and pairs[name].is_floating_point():
            pairs[name] = pairs[name].clone()
            pairs[name].view(-1)[where % pairs[name].numel()] = float("nan")
        elif edit == "scale_one" and pairs[name].is_floating_point():
            pairs[name] = pairs[name].clone()
            pairs[name].view(-1)[where % pairs[name].numel()] += 17.4
        elif edit == "other_key":
            cache["key"] = {**cache["key"], "n": 7}
        torch.save(cache, path)
    got = cached_teacher_pairs(folder, teacher, 6, (1, 1), None)
    assert set(got["pairs"]) == set(clean["pairs"])
    for k, v in clean["pairs"].items():
        assert got["pairs"][k].dtype == v.dtype and torch.equal(got["pairs"][k], v), (edit, k)
    reread = cached_teacher_pairs(folder, teacher, 6, (1, 1), None)  # and the file is good again
    assert all(torch.equal(reread["pairs"][k], v) for k, v in clean["pairs"].items())
    warned = [l for l in capsys.readouterr().err.splitlines() if l.startswith("parscale-ear: warning: teacher pairs")]
    assert len(warned) <= 1
