"""Fréchet distance: the formula against hand-worked cases, the feature networks (offline random CNN; the
Inception loader's offline error and local-file paths, never downloading), and the `fid` recipe metric."""

from __future__ import annotations

import math
import urllib.error

import numpy as np
import pytest
import torch
from torch import nn

from slotrun.errors import UserError
from slotrun.metrics import fid as fid_module
from slotrun.metrics.components import METRICS
from slotrun.metrics.fid import (
    FID_WEIGHTS_FILE, FeatureStats, FidConfig, FidMetric, RandomConvFeatures, build_feature_net, frechet_distance,
    load_fid_inception,
)
from slotrun.protocols import MetricInputs
from slotrun.types import Batch, DecoderOutput


# ---- the distance -----------------------------------------------------------------------------------------------


def test_identical_gaussians_are_at_distance_zero() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((6, 6))
    sigma = a @ a.T + 0.1 * np.eye(6)
    mu = rng.standard_normal(6)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_diagonal_covariances_match_the_closed_form() -> None:
    # d^2 = sum (mu1 - mu2)^2 + sum (sqrt(a) - sqrt(b))^2 for diagonal covariances diag(a), diag(b).
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()  # 7.25 + 4 + 1 = 12.25
    assert want == pytest.approx(12.25)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-12)
    # One dimension: (m1 - m2)^2 + (s1 - s2)^2.
    assert frechet_distance([3.0], [[4.0]], [1.0], [[1.0]]) == pytest.approx(4.0 + 1.0)


def test_a_common_rotation_leaves_the_distance_unchanged() -> None:
    # Rotating both Gaussians by the same orthogonal Q: non-diagonal covariances, same closed-form answer.
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((3, 3)))
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    a, b = np.diag([1.0, 4.0, 0.25]), np.diag([9.0, 1.0, 0.25])
    got = frechet_distance(q @ mu1, q @ a @ q.T, q @ mu2, q @ b @ q.T)
    assert got == pytest.approx(12.25, rel=1e-9)


def test_singular_covariances_stay_finite() -> None:
    # Fewer samples than dimensions: rank-deficient covariances, as with few images and many features.
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((5, 20)), rng.standard_normal((5, 20)) + 1.0
    d = frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert math.isfinite(d) and d > 0


def test_small_imaginary_parts_are_dropped_and_large_ones_refused(monkeypatch) -> None:
    real_sqrtm = fid_module.linalg.sqrtm
    noise = {"value": 1e-9}
    monkeypatch.setattr(fid_module.linalg, "sqrtm", lambda m: real_sqrtm(m) + 1j * noise["value"])
    mu, a, b = np.zeros(2), np.diag([1.0, 4.0]), np.diag([4.0, 1.0])
    assert frechet_distance(mu, a, mu, b) == pytest.approx(2.0)  # (1 - 2)^2 + (2 - 1)^2
    noise["value"] = 0.5
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(mu, a, mu, b)


def test_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="means"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(3))


def test_feature_stats_match_numpy_and_merge_exactly() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 4)) * 3 + 5
    whole, parts = FeatureStats(4), [FeatureStats(4), FeatureStats(4)]
    whole.update(torch.from_numpy(x))
    parts[0].update(x[:17])
    parts[1].update(x[17:])
    np.testing.assert_allclose(whole.mean(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(whole.cov(), np.cov(x, rowvar=False), rtol=1e-10)
    merged = FeatureStats(4)
    merged.load_rows(torch.stack([p.row() for p in parts]))
    np.testing.assert_allclose(merged.cov(), whole.cov(), rtol=1e-12)
    assert merged.count == 50


# ---- feature networks ---------------------------------------------------------------------------------------------


def test_random_cnn_is_fixed_by_its_seed_and_separates_distributions(one_thread) -> None:
    a, b, other = RandomConvFeatures(0), RandomConvFeatures(0), RandomConvFeatures(1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.net[0].weight, other.net[0].weight)
    # The first weights are numpy's legacy RandomState(0) stream: the same on every machine and numpy version.
    first = np.random.RandomState(0).standard_normal(3) * math.sqrt(2.0 / 27)
    np.testing.assert_allclose(a.net[0].weight.flatten()[:3].numpy(), first, rtol=1e-6)
    gen = torch.Generator().manual_seed(0)

    def blobs(n: int, colour: float) -> torch.Tensor:
        images = torch.full((n, 3, 32, 32), 0.5)
        for i in range(n):
            y, x = torch.randint(0, 24, (2,), generator=gen)
            images[i, :, y : y + 8, x : x + 8] = colour
        return images

    feats = {name: FeatureStats(a.dim) for name in ("red1", "red2", "dark")}
    with torch.no_grad():
        feats["red1"].update(a(blobs(300, 0.9)))
        feats["red2"].update(a(blobs(300, 0.9)))
        feats["dark"].update(a(blobs(300, 0.1)))
    same = fid_module.feature_distance(feats["red1"], feats["red2"])
    apart = fid_module.feature_distance(feats["red1"], feats["dark"])
    assert a(torch.rand(2, 3, 48, 48)).shape == (2, 256)  # any input size: resized to 64 px
    assert 0 <= same < 0.1 * apart


def test_unknown_feature_network() -> None:
    with pytest.raises(ValueError, match="random_cnn"):
        build_feature_net("vgg")


@pytest.fixture
def pfi():
    return pytest.importorskip("pytorch_fid.inception", reason="pytorch-fid is a dependency of slotrun")


def test_inception_offline_is_a_one_line_user_error(pfi, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache: the loader must download

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(pfi, "load_state_dict_from_url", offline)
    with pytest.raises(UserError) as err:
        load_fid_inception()
    message = str(err.value)
    assert "\n" not in message
    assert "URLError" in message and pfi.FID_WEIGHTS_URL in message and "weights = " in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / FID_WEIGHTS_FILE) in message
    assert pfi.load_state_dict_from_url is offline  # the library's loader is restored
    # The recipe metric: building it (slotrun check) loads nothing; loading it (the trainer does, before step 0)
    # fails the same way.
    metric = FidConfig().build(MetricInputs())
    with pytest.raises(UserError, match="FID Inception weights"):
        metric.load_pretrained()


def test_inception_from_a_local_weights_file(pfi, monkeypatch, tmp_path, one_thread) -> None:
    # A weights file of the right layout without downloading: capture a randomly initialised FID Inception's own
    # state dict while pytorch-fid "loads" (the real file is the same layout, from pytorch-fid's release URL).
    captured = {}
    original = nn.Module.load_state_dict

    def capture(self, state_dict, *args, **kwargs):
        captured.update(self.state_dict())
        return original(self, self.state_dict(), *args, **kwargs)

    def no_network(url, *args, **kwargs):
        return {}

    with monkeypatch.context() as m:
        m.setattr(nn.Module, "load_state_dict", capture)
        m.setattr(pfi, "load_state_dict_from_url", no_network)
        load_fid_inception()
    path = tmp_path / FID_WEIGHTS_FILE
    torch.save(captured, path)

    def forbidden(url, *args, **kwargs):
        raise AssertionError("a local weights file must not download")

    monkeypatch.setattr(pfi, "load_state_dict_from_url", forbidden)
    net = FidConfig(weights=str(path)).build(MetricInputs()).net
    assert torch.equal(net.inception.blocks[0][0].conv.weight, captured["Conv2d_1a_3x3.conv.weight"])
    with torch.no_grad():
        assert net(torch.rand(2, 3, 32, 32)).shape == (2, 2048)
    with pytest.raises(UserError, match="no file"):
        load_fid_inception(tmp_path / "missing.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not pytorch-fid's"):
        load_fid_inception(tmp_path / "bad.pth")


# ---- the recipe metric ---------------------------------------------------------------------------------------------


class _Prior(nn.Module):
    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = offset

    def sample(self, n: int, num_slots: int, temperature: float = 1.0) -> torch.Tensor:
        return torch.rand(n, num_slots, 3) * temperature + self.offset


class _Decoder(nn.Module):
    def decode_slots(self, slots: torch.Tensor) -> DecoderOutput:
        colour = slots.mean(1).clamp(0, 1)  # [n, 3]: a flat image of the slots' mean colour
        return DecoderOutput(losses={}, recon=colour[:, :, None, None].expand(-1, -1, 16, 16).contiguous())


class _Grouper(nn.Module):
    num_slots = 2


class _Generator(nn.Module):
    """A stand-in generative model: flat images of random colours (offset shifts them)."""

    def __init__(self, offset: float = 0.0) -> None:
        super().__init__()
        self.prior, self.decoder, self.grouper = _Prior(offset), _Decoder(), _Grouper()


def _real(n: int, gen: torch.Generator) -> Batch:
    colour = (torch.rand(n, 3, generator=gen) + torch.rand(n, 3, generator=gen)) / 2  # like the prior's mean of 2
    return Batch(image=colour[:, :, None, None].expand(-1, -1, 16, 16).contiguous())


def test_fid_metric_registered_with_offline_conformance() -> None:
    assert METRICS["fid"] is FidConfig
    metric = FidConfig.conformance().build(MetricInputs())
    assert isinstance(metric, FidMetric) and metric.name == "fd_random_cnn"
    with pytest.raises(ValueError, match="inception"):
        FidConfig(features="random_cnn", weights="x.pth")
    with pytest.raises(ValueError, match="high > low"):
        FidConfig(value_range=(1.0, 0.0))


def test_fid_metric_scores_prior_samples_against_real_images(one_thread) -> None:
    gen = torch.Generator().manual_seed(0)
    batches = [_real(64, gen) for _ in range(5)]
    scores = {}
    for offset in (0.0, 0.5):
        metric = FidConfig(features="random_cnn").build(MetricInputs())
        torch.manual_seed(0)
        with pytest.raises(UserError, match="bind_model"):
            metric.update(batches[0], None)
        metric.bind_model(_Generator(offset))
        metric.reset()  # keeps the model
        for batch in batches:
            metric.update(batch, None)
        assert metric.real.count == metric.fake.count == 320
        scores[offset] = metric.compute()["fd_random_cnn"]
    assert 0 <= scores[0.0] < 0.25 * scores[0.5]  # the matching generator is much closer to the data
    # Splitting the records over "processes" and merging gives the same number.
    ranks = [FidConfig(features="random_cnn").build(MetricInputs()) for _ in range(2)]
    torch.manual_seed(0)  # the same prior samples as above (building a metric draws no random numbers)
    for i, batch in enumerate(batches):
        ranks[i % 2].bind_model(_Generator(0.0))
        ranks[i % 2].update(batch, None)
    merged = FidConfig(features="random_cnn").build(MetricInputs())
    merged.load_state(torch.cat([r.state() for r in ranks]))
    assert merged.compute()["fd_random_cnn"] == pytest.approx(scores[0.0], rel=1e-6)


def test_fid_metric_reconstructions_value_range_and_models_without_prior(one_thread) -> None:
    gen = torch.Generator().manual_seed(1)
    batch = _real(8, gen)
    metric = FidConfig(features="random_cnn", compare="reconstructions").build(MetricInputs())
    output = type("Out", (), {"decoded": DecoderOutput(losses={}, recon=batch.image)})()
    metric.update(batch, output)
    metric.update(batch, output)
    # Perfect reconstructions: 0 up to the eps the singular covariances (16 images, 256 features) need.
    assert metric.compute()["fd_random_cnn"] == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(UserError, match="value_range"):
        metric.update(Batch(image=batch.image * 2 - 1), output)  # [-1, 1] data with the default [0, 1]
    minus_one_one = FidConfig(features="random_cnn", compare="reconstructions",
                              value_range=(-1.0, 1.0)).build(MetricInputs())
    minus_one_one.update(Batch(image=batch.image * 2 - 1), type("Out", (), {
        "decoded": DecoderOutput(losses={}, recon=batch.image * 2 - 1)})())
    no_prior = FidConfig(features="random_cnn").build(MetricInputs())
    model = _Generator()
    model.prior = None
    with pytest.raises(UserError, match="prior"):
        no_prior.bind_model(model)


def test_building_the_metric_loads_no_weights(monkeypatch) -> None:
    """`slotrun check` builds eval.metrics: an Inception FID must not load (or download) anything until it runs."""
    import slotrun.metrics.fid as fid

    calls = []
    monkeypatch.setattr(fid, "build_feature_net", lambda *a, **k: calls.append(a) or fid.RandomConvFeatures())
    metric = fid.FidConfig(features="random_cnn").build(None)
    inception = fid.FidConfig().build(None)
    assert calls == [] and inception.dim == 2048 and metric.dim == 256
    metric.net  # noqa: B018 - first use builds it
    assert len(calls) == 1
