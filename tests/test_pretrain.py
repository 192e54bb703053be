"""Tests of the mini-world pretraining stages (megafr.pretrain): losses, layer mixing, metrics,
training steps, exact resume, and products that load through the official loaders.

Everything runs on tiny networks (32 px generator, 16-channel encoder) and random images, so
the file stays well under a minute on two cores.
"""

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megafr import losses, metrics, training
from megafr.errors import InputError
from megafr.nets.checkpoints import load_arcface, load_e4e, load_latent_discriminator, load_psp, load_stylegan2
from megafr.nets.encoders import layer_groups
from megafr.pretrain import autoencoder as ae
from megafr.pretrain import common, idnet, inversion
from megafr.pretrain import evaluate as ev
from megafr.pretrain.latent_structure import (
    YAW_TOLERANCE_DEG, border_colour, geometry_layers, layer_swap_report, mix_codes, swap_pairs,
)

SIZE = 32  # tiny generator / data size
N_IMAGES = 24


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (N_IMAGES, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def pool(images):
    rng = np.random.default_rng(1)
    identity = np.repeat(np.arange(6), 4)
    a, b = swap_pairs(0, identity, 8)
    return {"a": a, "b": b, "truth": rng.integers(0, 256, (8, SIZE, SIZE, 3), dtype=np.uint8)}


def _gen_cfg(out_dir, **overrides) -> ae.GeneratorStageConfig:
    values = dict(profile="smoke", seed=3, mode="train", data_dir="unused", model_path="", landmark_path="",
                  official_stylegan2="", official_e4e="", image_size=SIZE, style_dim=16, n_mlp=2, max_channels=16,
                  enc_width=4, enc_units=1, encoder_passes=1, steps=4, batch_size=2,
                  swap_batch=2, swap_pool=8, lr_g=2e-3, lr_e=1e-3, lr_d=1e-3, lr_mapping=0.0, lambda_l2=1.0, lambda_swap=1.0,
                  lambda_lap=0.5, lambda_latent=0.1, lambda_delta=1e-3, lambda_lpips=0.0, lambda_id=0.0, lambda_adv=0.0, r1_gamma=1.0,
                  r1_image=10.0, ema_decay=0.9, finetune_steps=0, finetune_adv=0.2, finetune_lr=0.5, finetune_face3d=0.0, finetune_ssim=0.0, init_from="",
                  idnet_path="", face3d_path="", n_eval=4, n_fd_samples=4, n_swap_eval=2, n_wplus_eval=0, wplus_steps=1,
                  checkpoint_every=1, threads=0, out_dir=str(out_dir / "products"))
    values.update(overrides)
    return ae.GeneratorStageConfig(**values)


def _id_cfg(out_dir, **overrides) -> idnet.IdNetConfig:
    values = dict(profile="smoke", seed=5, mode="train", data_dir="unused", official_path="", input_size=16,
                  embedding_dim=8, width=4, units=1, drop_ratio=0.2,
                  margin=0.3, scale=8.0, steps=4, batch_size=6, lr=1e-3, weight_decay=1e-4, blur_sigma_max=1.0,
                  checkpoint_every=1, threads=0, out_dir=str(out_dir / "products"))
    values.update(overrides)
    return idnet.IdNetConfig(**values)


def _psp_cfg(out_dir, **overrides) -> inversion.InversionStageConfig:
    values = dict(profile="smoke", seed=2, mode="train", data_dir="unused", stylegan2_path="", e4e_path="",
                  idnet_path="", official_psp="", steps=4, batch_size=4, lr=1e-3, lambda_l2=1.0, lambda_id=0.1,
                  lambda_wnorm=1e-3, lambda_lpips=0.0, n_eval=4, checkpoint_every=1, threads=0,
                  out_dir=str(out_dir / "products"))
    values.update(overrides)
    return inversion.InversionStageConfig(**values)

def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- margin loss
def test_arcface_margin_zero_is_softmax_cross_entropy():
    torch.manual_seed(0)
    head = idnet.ArcMarginHead(8, 5, margin=0.0, scale=10.0)
    emb, labels = torch.randn(7, 8), torch.randint(0, 5, (7,))
    expected = F.cross_entropy(10.0 * head.cosines(emb), labels)
    assert torch.allclose(idnet.arcface_loss(head, emb, labels), expected, atol=1e-6)


def test_arcface_margin_adds_angle_to_the_target_only():
    head = idnet.ArcMarginHead(2, 2, margin=0.5, scale=1.0)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    theta = 0.3
    emb = torch.tensor([[np.cos(theta), np.sin(theta)]], dtype=torch.float32)
    logits = head(emb, torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(np.cos(theta + 0.5), abs=1e-6)  # target: cos(theta + m)
    assert logits[0, 1].item() == pytest.approx(np.sin(theta), abs=1e-6)  # other class untouched
    # past pi - m the logit continues linearly (cos theta - m sin m) and stays below cos(pi - m)
    far = torch.tensor([[-1.0, 0.0]])
    assert head(far, torch.tensor([0]))[0, 0].item() == pytest.approx(-1.0 - 0.5 * np.sin(0.5), abs=1e-6)


# ------------------------------------------------------------------------------- mixing
def test_mix_codes_takes_coarse_and_medium_from_geometry_and_fine_from_colour():
    for n_latent in (10, 18):
        geometry, colour = torch.zeros(2, n_latent, 3), torch.ones(2, n_latent, 3)
        mixed = mix_codes(geometry, colour)
        groups = layer_groups(n_latent)
        assert geometry_layers(n_latent) == list(range(7))  # coarse 0-2 + medium 3-6 at 64 and 1024 px
        assert torch.all(mixed[:, : len(groups["coarse"]) + len(groups["medium"])] == 0)
        assert torch.all(mixed[:, list(groups["fine"])] == 1)
    # at 32 px there are no fine entries: everything comes from the geometry code
    assert torch.all(mix_codes(torch.zeros(1, 8, 2), torch.ones(1, 8, 2)) == 0)
    with pytest.raises(ValueError):
        mix_codes(torch.zeros(1, 10, 2), torch.zeros(1, 8, 2))


def test_swap_pairs_are_of_different_identities_and_deterministic():
    identity = np.repeat(np.arange(5), 3)
    a, b = swap_pairs(7, identity, 50)
    assert np.all(identity[a] != identity[b])
    a2, b2 = swap_pairs(7, identity, 50)
    assert np.array_equal(a, a2) and np.array_equal(b, b2)


def test_layer_swap_report_arithmetic():
    n = 4
    mixed = torch.zeros(n, 3, 16, 16)
    image_b = torch.full((n, 3, 16, 16), 0.5)
    truth = mixed.clone()
    true_pose = torch.tensor([[10.0, 0, 0], [20.0, 0, 0], [-30.0, 0, 0], [0.0, 5, 0]])
    answers = iter([true_pose + torch.tensor([[5.0, 0, 0], [15.0, 0, 0], [0.0, 0, 0], [-2.0, 0, 0]]), true_pose])
    report = layer_swap_report(mixed, image_b, truth, true_pose, lambda images: next(answers))
    assert report["psnr_vs_truth"] == metrics.PSNR_MAX
    assert report["background_colour_error_vs_truth"] == 0.0
    assert report["background_colour_error_vs_b"] == pytest.approx(0.5)
    assert report["yaw_error_vs_true_b_deg"] == pytest.approx((5 + 15 + 0 + 2) / 4)
    assert report["yaw_within_tolerance_vs_true_b"] == pytest.approx(3 / 4)  # 15 > YAW_TOLERANCE_DEG
    assert 5 < YAW_TOLERANCE_DEG < 15
    assert layer_swap_report(mixed, image_b, truth, true_pose, None)["pose_measured"] == 0


def test_border_colour_reads_only_the_border():
    image = torch.zeros(1, 3, 20, 20)
    image[:, :, 2:18, 2:18] = 1.0  # centre differs, border (2 px at fraction 0.1) stays 0
    assert torch.all(border_colour(image) == 0)


# ------------------------------------------------------------------------------ metrics
def test_laplacian_l1_counts_each_scale_separately():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    i = torch.arange(32)
    checker = ((i.view(-1, 1) + i.view(1, -1)) % 2 * 2 - 1).float() * 0.2  # finest detail, amplitude 0.2
    assert float(losses.laplacian_l1(x, x)) == 0.0
    assert float(losses.laplacian_l1(x, x + 0.3)) == pytest.approx(0.3, abs=1e-5)  # low-pass residual only
    assert float(losses.laplacian_l1(x, x + checker)) == pytest.approx(0.2, abs=1e-5)  # finest band only
    # Both errors at once: the pyramid adds them (0.5), where a plain L1 would let the offset hide
    # the detail (the mean of |0.3 + 0.2| and |0.3 - 0.2| is 0.3).
    assert float(losses.laplacian_l1(x, x + 0.3 + checker)) == pytest.approx(0.5, abs=1e-5)


def test_psnr_ssim_known_values():
    x = torch.zeros(2, 3, 16, 16)
    y = x + 0.2  # 0.1 in [0, 1] units -> MSE 0.01 -> 20 dB
    assert torch.allclose(metrics.psnr(x, y), torch.full((2,), 20.0), atol=1e-4)
    assert torch.allclose(metrics.ssim(x, x), torch.ones(2), atol=1e-6)
    assert metrics.ssim(x, torch.rand(2, 3, 16, 16) * 2 - 1).max() < 0.5


def test_tar_at_far():
    impostor = np.arange(1000) / 1000.0  # 0.000 .. 0.999
    genuine = np.array([0.5, 0.9985, 0.9995, 2.0])
    tar, threshold = metrics.tar_at_far(genuine, impostor, 1e-3)
    assert threshold == pytest.approx(0.998)  # exactly one impostor (0.999) above it
    assert tar == pytest.approx(3 / 4)
    emb = F.normalize(torch.tensor([[1.0, 0], [1.0, 0.01], [0, 1.0]]), dim=1)
    genuine, impostor = metrics.verification_pairs(emb, np.array([0, 0, 1]))
    assert len(genuine) == 1 and len(impostor) == 2 and genuine[0] > 0.99


def test_frechet_distance_identical_zero_and_shift():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((500, 6))
    mu, sigma = metrics.feature_statistics(feats)
    assert abs(metrics.frechet_distance(mu, sigma, mu, sigma)) < 1e-6
    shift = np.full(6, 0.5)
    assert metrics.frechet_distance(mu, sigma, mu + shift, sigma) == pytest.approx(6 * 0.25, abs=1e-6)
    try:
        from cleanfid.fid import frechet_distance as clean_fd
    except Exception:  # clean-fid imports torchvision, which fails with this torch build
        return
    other = metrics.feature_statistics(rng.standard_normal((500, 6)) * 1.3)
    assert metrics.frechet_distance(mu, sigma, *other) == pytest.approx(clean_fd(mu, sigma, *other), rel=1e-6)


def test_fd_id_of_identical_sets_is_zero():
    torch.manual_seed(0)
    net = idnet.ArcFace(_id_cfg(Path("unused")).arcface_config()).eval()
    x = torch.rand(12, 3, SIZE, SIZE) * 2 - 1
    assert abs(metrics.fd_id(net, x, x)) < 1e-6
    assert metrics.fd_id(net, x, -x) > 1e-4


# ------------------------------------------------------------------------- schedule, data
def test_batch_rows_cover_each_epoch_and_are_pure():
    rows = np.concatenate([common.batch_rows(1, k, 10, 5) for k in range(2)])
    assert sorted(rows) == list(range(10))
    assert np.array_equal(common.batch_rows(1, 3, 10, 4), common.batch_rows(1, 3, 10, 4))


def test_fused_adam_follows_the_default_update():
    from megafr.training import adam

    torch.manual_seed(0)
    start = torch.randn(50, 7)
    params = {name: torch.nn.Parameter(start.clone()) for name in ("default", "fused")}
    optimizers = {"default": torch.optim.Adam([params["default"]], lr=0.01, betas=(0.0, 0.99)),
                  "fused": adam([params["fused"]], 0.01, (0.0, 0.99))}
    assert optimizers["fused"].defaults["fused"] is True
    for _ in range(5):
        grad = torch.randn(50, 7)
        for name, opt in optimizers.items():
            params[name].grad = grad.clone()
            opt.step()
    assert not torch.equal(params["fused"].detach(), start)
    torch.testing.assert_close(params["fused"].detach(), params["default"].detach(), rtol=1e-5, atol=1e-6)


def test_lpips_is_off_without_backbone_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    available, message = losses.lpips_status()
    assert not available and message.startswith("LPIPS off")


def test_config_refuses_bad_values(tmp_path):
    from megafr.errors import InputError

    with pytest.raises(InputError):
        _gen_cfg(tmp_path, mode="finetune")
    with pytest.raises(InputError):
        _gen_cfg(tmp_path, swap_pool=1, swap_batch=2)
    with pytest.raises(InputError):
        _id_cfg(tmp_path, input_size=20)
    with pytest.raises(InputError):
        _id_cfg(tmp_path, blur_sigma_max=-1.0)
    with pytest.raises(InputError, match="lambda_lap"):
        _gen_cfg(tmp_path, lambda_lap=-0.5)


@pytest.mark.parametrize("make, field", [
    (lambda tmp: _gen_cfg(tmp, mode="official", official_stylegan2="g.pt"), "official_e4e"),
    (lambda tmp: _id_cfg(tmp, mode="official"), "official_path"),
    (lambda tmp: _psp_cfg(tmp, mode="official"), "official_psp")])
def test_official_mode_names_the_missing_released_file(tmp_path, make, field):
    with pytest.raises(InputError, match=f"{field}.*must name .* in the paper profile"):
        make(tmp_path)


def test_release_mode_needs_the_files_named_and_still_checks_the_recipe(tmp_path):
    with pytest.raises(InputError, match="official_psp must name the released files"):
        _psp_cfg(tmp_path, mode="release")
    with pytest.raises(InputError, match="lambda_lap"):  # the release's recipe is validated like a training run's
        _gen_cfg(tmp_path, mode="release", official_stylegan2="g.pt", official_e4e="e.pt", lambda_lap=-0.5)
    with pytest.raises(InputError, match="encoder_passes"):
        _gen_cfg(tmp_path, mode="release", official_stylegan2="g.pt", official_e4e="e.pt", encoder_passes=2)


def test_idnet_blur_augmentation():
    torch.manual_seed(0)
    x = torch.rand(6, 3, SIZE, SIZE) * 2 - 1
    assert torch.equal(idnet.random_blur(x, 0.0), x)  # off
    flat = torch.full((2, 3, SIZE, SIZE), 0.25)
    assert torch.allclose(idnet.random_blur(flat, 2.0), flat, atol=1e-6)  # a blur keeps a constant image
    torch.manual_seed(1)
    y = idnet.random_blur(x, 2.0)
    assert torch.allclose(y.mean((2, 3)), x.mean((2, 3)), atol=0.02)  # the mean colour stays
    rough = lambda im: (im[..., 1:] - im[..., :-1]).abs().mean((1, 2, 3))  # mean horizontal gradient
    assert (rough(y) <= rough(x) + 1e-6).all() and (rough(y) < 0.5 * rough(x)).sum() >= 3  # smoother, never rougher
    assert rough(y).std() > 0.01  # each image draws its own sigma (some near 0)
    torch.manual_seed(1)
    assert torch.equal(idnet.random_blur(x, 2.0), y)  # torch's RNG (seeded per step) decides


# -------------------------------------------------------------------------- generator
def test_generator_step_changes_only_what_it_should(tmp_path, images, pool):
    cfg = _gen_cfg(tmp_path / "g", steps=1)
    before = ae.build_networks(cfg)
    result = ae.train_generator(cfg, images, pool, progress=False)
    after = result.nets
    assert _state_equal(before.generator.style, after.generator.style)  # the mapping network is frozen
    assert "mapping" not in result.curve.columns  # and its term is not in the curve
    assert not _state_equal(before.generator.convs, after.generator.convs)
    assert not _state_equal(before.g_ema.convs, after.g_ema.convs)  # moving average follows
    assert not _state_equal(before.encoder, after.encoder)
    assert not _state_equal(before.latent_d, after.latent_d)
    assert torch.equal(before.latent_avg, after.latent_avg)
    # without the adversarial term the latent discriminator is left alone
    cfg0 = _gen_cfg(tmp_path / "g0", steps=1, lambda_latent=0.0)
    assert _state_equal(ae.build_networks(cfg0).latent_d, ae.train_generator(cfg0, images, pool, progress=False).nets.latent_d)


def test_generator_mapping_trains_against_the_latent_discriminator(tmp_path, images, pool):
    cfg = _gen_cfg(tmp_path / "m", steps=2, lr_mapping=2e-3)
    before = ae.build_networks(cfg)
    result = ae.train_generator(cfg, images, pool, progress=False)
    assert not _state_equal(before.generator.style, result.nets.generator.style)
    assert not _state_equal(before.g_ema.style, result.nets.g_ema.style)  # the moving average follows it too
    assert torch.equal(before.latent_avg, result.nets.latent_avg)  # the encoders' anchor stays put
    assert (result.curve["mapping"] > 0).all()
    # a step on mapping_loss moves mapping(z) to D's "fake" side, where it puts the encoder's codes
    torch.manual_seed(0)
    d, mapping = ae.LatentCodesDiscriminator(16), torch.nn.Linear(16, 16)
    z = torch.randn(64, 16)

    def fake_score() -> float:  # D's belief that the codes are mapping(z)
        with torch.no_grad():
            return float(torch.sigmoid(d(mapping(z))).mean())

    before_score = fake_score()
    opt = torch.optim.SGD(mapping.parameters(), lr=0.5)
    for _ in range(5):
        opt.zero_grad()
        losses.mapping_loss(d, mapping(z)).backward()
        opt.step()
    assert fake_score() < before_score
    # resumes like the other optimizers
    whole = ae.train_generator(_gen_cfg(tmp_path / "ma", steps=3, lr_mapping=2e-3), images, pool, progress=False)
    part = _gen_cfg(tmp_path / "mb", steps=3, lr_mapping=2e-3)
    ae.train_generator(part, images, pool, progress=False, stop_after=2)
    rest = ae.train_generator(part, images, pool, progress=False)
    assert rest.resumed_from == 2 and _state_equal(whole.nets.generator.style, rest.nets.generator.style)
    with pytest.raises(InputError, match="lr_mapping"):
        _gen_cfg(tmp_path, lr_mapping=-1.0)
    with pytest.raises(InputError, match="lambda_latent"):
        _gen_cfg(tmp_path, lr_mapping=1e-3, lambda_latent=0.0)


def test_generator_identity_term_needs_the_network_and_leaves_it_frozen(tmp_path, images, pool):
    cfg = _gen_cfg(tmp_path / "id", steps=2, lambda_id=0.5)
    with pytest.raises(InputError, match="identity network"):
        ae.train_generator(cfg, images, pool, progress=False)
    ident = idnet.ArcFace(_id_cfg(Path("unused")).arcface_config()).eval()
    frozen = {k: v.clone() for k, v in ident.state_dict().items()}
    result = ae.train_generator(cfg, images, pool, progress=False, idnet=ident)
    assert all(torch.equal(frozen[k], v) for k, v in ident.state_dict().items())
    assert all(p.grad is None for p in ident.parameters())
    assert (result.curve["id"] > 0).all()  # the term is logged, and non-zero for imperfect reconstructions
    assert (result.curve["lap"] > 0).all()  # so is the Laplacian-pyramid term
    no_swap = ae.train_generator(_gen_cfg(tmp_path / "ns", steps=1, swap_batch=0), images, None, progress=False)
    assert (no_swap.curve["lap"] > 0).all() and (no_swap.curve["swap"] == 0).all()


def test_generator_resume_equals_uninterrupted(tmp_path, images, pool):
    whole = ae.train_generator(_gen_cfg(tmp_path / "a"), images, pool, progress=False)
    cfg = _gen_cfg(tmp_path / "b", checkpoint_every=2)
    first = ae.train_generator(cfg, images, pool, progress=False, stop_after=2)
    assert first.steps_run == 2
    rest = ae.train_generator(cfg, images, pool, progress=False)
    assert rest.resumed_from == 2 and rest.steps_run == 2
    for name in ("generator", "g_ema", "encoder", "latent_d"):
        assert _state_equal(getattr(whole.nets, name), getattr(rest.nets, name)), name
    assert whole.curve.equals(rest.curve)
    # a changed training parameter starts afresh instead of resuming a foreign run
    fresh = ae.train_generator(replace(cfg, lr_g=1e-3), images, pool, progress=False, stop_after=1)
    assert fresh.resumed_from == 0


def test_generator_refining_encoder_trains_resumes_and_encodes(tmp_path, images, pool):
    """ReStyle's iterative encoding (encoder_passes > 1): a 6-channel encoder, finite losses, every trained
    network moves, resume equals an uninterrupted run, and encode() runs the passes with g_ema."""
    cfg = _gen_cfg(tmp_path / "r", encoder_passes=2, steps=3)
    assert cfg.encoder_config().input_nc == 6 and _gen_cfg(tmp_path / "s").encoder_config().input_nc == 3
    before = ae.build_networks(cfg)
    whole = ae.train_generator(cfg, images, pool, progress=False)
    assert np.isfinite(whole.curve.drop(columns=["step"]).to_numpy()).all()
    for name in ("generator", "encoder", "latent_d"):
        assert not _state_equal(getattr(before, name), getattr(whole.nets, name)), name
    part = _gen_cfg(tmp_path / "r2", encoder_passes=2, steps=3)
    ae.train_generator(part, images, pool, progress=False, stop_after=1)
    rest = ae.train_generator(part, images, pool, progress=False)
    assert rest.resumed_from == 1
    for name in ("generator", "g_ema", "encoder", "latent_d"):
        assert _state_equal(getattr(whole.nets, name), getattr(rest.nets, name)), name
    x = common.images_to_tensor(images[:3])
    with torch.no_grad():
        codes = whole.nets.encode(x)
        passes = list(ae.refine(whole.nets, x, whole.nets.g_ema, whole.nets.g_ema.stored_noise()))
    assert codes.shape == (3, cfg.n_latent, cfg.style_dim) and len(passes) == 2
    assert torch.equal(codes, passes[-1]) and not torch.equal(passes[0], passes[1])
    with pytest.raises(InputError, match="encoder_passes"):
        _gen_cfg(tmp_path / "bad", encoder_passes=0)


def test_generator_image_discriminator_trains_and_resumes(tmp_path, images, pool):
    """lambda_adv > 0 adds StyleGAN2's image discriminator (R1 on real images): finite losses, it learns,
    its terms are logged, and resume equals an uninterrupted run; with lambda_adv = 0 there is none."""
    assert ae.build_networks(_gen_cfg(tmp_path / "off")).image_d is None
    cfg = _gen_cfg(tmp_path / "d", lambda_adv=0.1, steps=3)
    before = ae.build_networks(cfg)
    whole = ae.train_generator(cfg, images, pool, progress=False)
    assert not _state_equal(before.image_d, whole.nets.image_d)
    assert {"adv", "d_image", "r1_image"} <= set(whole.curve.columns)
    assert (whole.curve[["adv", "d_image", "r1_image"]] > 0).all().all()
    assert np.isfinite(whole.curve.drop(columns=["step"]).to_numpy()).all()
    part = _gen_cfg(tmp_path / "d2", lambda_adv=0.1, steps=3)
    ae.train_generator(part, images, pool, progress=False, stop_after=2)
    rest = ae.train_generator(part, images, pool, progress=False)
    assert rest.resumed_from == 2
    for name in ("generator", "encoder", "image_d"):
        assert _state_equal(getattr(whole.nets, name), getattr(rest.nets, name)), name
    off = ae.train_generator(_gen_cfg(tmp_path / "o", steps=1), images, pool, progress=False)
    assert "adv" not in off.curve.columns and "d_image" not in off.curve.columns


def test_generator_finetune_phase(tmp_path, images, pool):
    """finetune_steps adds a phase after ``steps``: its first part is the plain run's exactly (the image
    discriminator neither trains nor counts before it), the discriminator's terms appear only in the
    phase, the learning rates restart from finetune_lr x their peaks, and resume across the boundary
    equals an uninterrupted run."""
    plain = ae.train_generator(_gen_cfg(tmp_path / "plain", steps=2), images, pool, progress=False)
    cfg = _gen_cfg(tmp_path / "ft", steps=2, finetune_steps=3, finetune_adv=0.1)
    assert cfg.total_steps == 5 and cfg.uses_image_d
    first = ae.train_generator(cfg, images, pool, progress=False, stop_after=2)
    for name in ("generator", "g_ema", "encoder", "latent_d"):
        assert _state_equal(getattr(plain.nets, name), getattr(first.nets, name)), name
    rest = ae.train_generator(cfg, images, pool, progress=False)
    assert rest.resumed_from == 2 and rest.steps_run == 3
    curve = rest.curve.set_index("step")
    assert list(curve.index) == [1, 2, 3, 4, 5]
    assert (curve.loc[[1, 2], ["adv", "d_image"]] == 0).all().all()
    assert (curve.loc[[3, 4, 5], ["adv", "d_image", "r1_image"]] > 0).all().all()
    assert cfg.learning_rate(cfg.lr_g, 2, scaled=True) == pytest.approx(cfg.finetune_lr * cfg.lr_g)  # 1-step warm-up
    assert cfg.learning_rate(cfg.lr_d, 2, scaled=False) == pytest.approx(cfg.lr_d)
    assert cfg.learning_rate(cfg.lr_g, 1, scaled=True) == pytest.approx(cfg.learning_rate(cfg.lr_g, 1, scaled=False))
    whole = ae.train_generator(_gen_cfg(tmp_path / "whole", steps=2, finetune_steps=3, finetune_adv=0.1), images, pool,
                               progress=False)
    for name in ("generator", "encoder", "image_d"):
        assert _state_equal(getattr(whole.nets, name), getattr(rest.nets, name)), name
    assert not _state_equal(plain.nets.generator, rest.nets.generator)
    with pytest.raises(InputError, match="finetune_lr"):
        _gen_cfg(tmp_path / "bad", finetune_lr=0.0)


def _face3d_file(folder: Path) -> str:
    """A random 3D face network over the synthetic head model, with an eye branch, saved as train_face3d does."""
    from megafr.face3d import headmodel
    from megafr.face3d.flame import FLAME
    from megafr.face3d.recon import FaceModel, ReconConfig, save_checkpoint_dict

    files = headmodel.write_head_model(folder)
    flame = FLAME.from_files(files.model_path, files.landmark_path, headmodel.N_IDENTITY, headmodel.N_EXPRESSION)
    torch.manual_seed(1)
    face = FaceModel(ReconConfig(headmodel.N_IDENTITY, headmodel.N_EXPRESSION, SIZE, input_size=16, width=4,
                                 eye_patch=4), flame)
    path = folder / "face3d.pt"
    torch.save(save_checkpoint_dict(face, 0, {"flame": {"model_path": str(files.model_path),
                                                        "landmark_path": str(files.landmark_path)}}), path)
    return str(path)


def test_generator_finetune_with_face_features(tmp_path, images, pool):
    """finetune_face3d weighs the 3D network's perceptual distance in the fine-tune phase only: the first
    phase is the plain run's exactly, the term is logged from the phase's first step, the frozen network's
    file is part of the resume key, and the term needs face3d_path."""
    face3d = _face3d_file(tmp_path)
    plain = ae.train_generator(_gen_cfg(tmp_path / "plain", steps=2), images, pool, progress=False)
    cfg = _gen_cfg(tmp_path / "ft", steps=2, finetune_steps=2, finetune_adv=0.0, finetune_face3d=0.5, face3d_path=face3d)
    assert cfg.uses_face3d and not cfg.uses_image_d
    assert cfg.upstream_digest() != _gen_cfg(tmp_path / "ft", steps=2).upstream_digest()
    first = ae.train_generator(cfg, images, pool, progress=False, stop_after=2)
    assert _state_equal(plain.nets.generator, first.nets.generator)
    run = ae.train_generator(cfg, images, pool, progress=False)
    curve = run.curve.set_index("step")
    assert (curve.loc[[1, 2], "face3d"] == 0).all() and (curve.loc[[3, 4], "face3d"] > 0).all()
    assert not _state_equal(plain.nets.generator, run.nets.generator)
    with pytest.raises(InputError, match="face3d_path"):
        _gen_cfg(tmp_path / "bad", finetune_steps=2, finetune_face3d=0.5)


def test_generator_finetune_with_ssim(tmp_path, images, pool):
    """finetune_ssim weighs 1 - SSIM of the reconstructions in the fine-tune phase only: the first phase is
    the plain run's exactly, the term is logged (a value in (0, 2)) from the phase's first step, is a
    curve column only when trained with, and changes what the same fine-tune without it trains; a negative
    weight is refused."""
    plain = ae.train_generator(_gen_cfg(tmp_path / "plain", steps=2), images, pool, progress=False)
    assert "ssim" not in plain.curve.columns
    cfg = _gen_cfg(tmp_path / "ft", steps=2, finetune_steps=2, finetune_adv=0.0, finetune_ssim=2.0)
    assert cfg.uses_ssim and cfg.phase_weights(1)["ssim"] == 0 and cfg.phase_weights(2)["ssim"] == 2.0
    first = ae.train_generator(cfg, images, pool, progress=False, stop_after=2)
    assert _state_equal(plain.nets.generator, first.nets.generator)
    run = ae.train_generator(cfg, images, pool, progress=False)
    curve = run.curve.set_index("step")
    assert (curve.loc[[1, 2], "ssim"] == 0).all()
    assert ((curve.loc[[3, 4], "ssim"] > 0) & (curve.loc[[3, 4], "ssim"] < 2)).all()
    unweighted = ae.train_generator(_gen_cfg(tmp_path / "ft0", steps=2, finetune_steps=2, finetune_adv=0.0),
                                    images, pool, progress=False)
    assert not _state_equal(unweighted.nets.generator, run.nets.generator)  # the term is in the total it trains
    with pytest.raises(InputError, match="finetune_ssim"):
        _gen_cfg(tmp_path / "bad", finetune_steps=2, finetune_ssim=-1.0)


def test_ssim_loss_is_one_minus_the_tables_ssim_and_has_gradients():
    """The loss is 1 - the metric on images inside [-1, 1], 0 for equal images, and trains pixels outside the
    range the metric clamps."""
    from megafr import metrics

    ssim_loss = ae.ssim_loss
    gen = torch.Generator().manual_seed(0)
    x, y = (torch.rand(2, 3, 24, 24, generator=gen) * 2 - 1 for _ in range(2))
    assert float(ssim_loss(x, y)) == pytest.approx(float(1 - metrics.ssim(x, y).mean()), abs=1e-6)
    assert float(ssim_loss(x, x)) == pytest.approx(0.0, abs=1e-6)
    z = (x * 1.5).requires_grad_()  # partly outside [-1, 1]
    ssim_loss(z, y).backward()
    assert (z.grad[z.detach().abs() > 1] != 0).any()


def test_generator_products_load_through_official_loaders(tmp_path, images, pool):
    cfg = _gen_cfg(tmp_path / "p", steps=2)
    nets = ae.train_generator(cfg, images, pool, progress=False).nets
    products = ae.save_products(cfg, nets)
    g_ema, latent_avg = load_stylegan2(products["stylegan2"])
    g_train, _ = load_stylegan2(products["stylegan2"], key="g")
    assert _state_equal(g_ema, nets.g_ema) and _state_equal(g_train, nets.generator)
    assert torch.equal(latent_avg, nets.latent_avg)
    e4e = load_e4e(products["e4e"])
    assert e4e.latent_avg.shape == (cfg.n_latent, cfg.style_dim)
    x = torch.rand(3, 3, SIZE, SIZE) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(e4e.encode(x), nets.encode(x), atol=1e-6)
    assert _state_equal(load_latent_discriminator(products["e4e"]), nets.latent_d)
    raw = torch.load(products["e4e"], weights_only=False)
    assert {"state_dict", "latent_avg", "opts", "discriminator_state_dict"} <= set(raw)
    assert all(k.startswith(("encoder.", "decoder.")) for k in raw["state_dict"])


def test_generator_starts_from_released_files(tmp_path, images, pool):
    """init_from: the run starts from a release's weights (G, g_ema, latent_avg, encoder, latent D), with
    steps 0 only the fine-tune phase trains, the files are part of the resume key, and files of other
    networks or a missing folder are refused by name."""
    first = _gen_cfg(tmp_path / "first", steps=2)
    released = ae.save_products(first, ae.train_generator(first, images, pool, progress=False).nets)
    folder = str(Path(released["stylegan2"]).parent)
    cfg = _gen_cfg(tmp_path / "ft", steps=0, finetune_steps=2, finetune_adv=0.0, init_from=folder)
    start = ae.build_networks(cfg)
    saved = load_e4e(released["e4e"])
    assert _state_equal(start.g_ema, load_stylegan2(released["stylegan2"])[0])
    assert _state_equal(start.generator, load_stylegan2(released["stylegan2"], key="g")[0])
    assert _state_equal(start.encoder, saved.encoder)
    assert _state_equal(start.latent_d, load_latent_discriminator(released["e4e"]))
    assert torch.equal(start.latent_avg, load_stylegan2(released["stylegan2"])[1])
    assert cfg.upstream_digest() != _gen_cfg(tmp_path / "ft", steps=0, finetune_steps=2, finetune_adv=0.0,
                                              init_from=str(tmp_path / "first")).upstream_digest()
    run = ae.train_generator(cfg, images, pool, progress=False)
    assert list(run.curve["step"]) == [1, 2] and not _state_equal(run.nets.generator, start.generator)
    with pytest.raises(InputError, match="nothing would train"):
        _gen_cfg(tmp_path / "none", steps=0, finetune_steps=0, init_from=folder)
    with pytest.raises(InputError, match="steps"):
        _gen_cfg(tmp_path / "scratch", steps=0, finetune_steps=2)
    with pytest.raises(InputError, match="nowhere lacks stylegan2.pt, e4e.pt"):
        ae.build_networks(_gen_cfg(tmp_path / "gone", init_from=str(tmp_path / "nowhere")))
    ae.require_release_files(Path(folder))
    with pytest.raises(InputError, match="lacks release.json"):  # what a release run's export will read
        ae.require_release_files(Path(folder), ("release.json",))
    with pytest.raises(InputError, match="does not fit"):
        ae.build_networks(_gen_cfg(tmp_path / "wide", init_from=folder, enc_width=first.enc_width * 2))


# ------------------------------------------------------------------------------- idnet
def test_idnet_resume_equals_uninterrupted_and_product_loads(tmp_path, images):
    identity = np.repeat(np.arange(6), 4)
    whole = idnet.train_idnet(_id_cfg(tmp_path / "a"), images, identity, progress=False)
    cfg = _id_cfg(tmp_path / "b")
    idnet.train_idnet(cfg, images, identity, progress=False, stop_after=3)
    rest = idnet.train_idnet(cfg, images, identity, progress=False)
    assert rest.resumed_from == 3
    assert _state_equal(whole.net, rest.net)  # dropout draws are seeded per step too
    path = idnet.save_idnet(cfg, rest.net)
    loaded = load_arcface(path)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(loaded(x), rest.net(x), atol=1e-6)
    report = idnet.evaluate_idnet(rest.net, images, identity)
    assert 0 <= report["tar_at_far_0.001"] <= 1 and report["genuine_pairs"] == 6 * 6


def test_idnet_checkpoint_is_not_resumed_over_another_recognition_set(tmp_path, images):
    split = tmp_path / "data" / idnet.IdNetConfig.UPSTREAM_SPLIT
    split.mkdir(parents=True)
    (split / "images.npy").write_bytes(b"first set")
    cfg = _id_cfg(tmp_path / "r", data_dir=str(tmp_path / "data"))
    idnet.train_idnet(cfg, images, np.repeat(np.arange(6), 4), progress=False, stop_after=2)
    assert training.try_resume(cfg.checkpoint_path, cfg, cfg.steps)["step"] == 2
    (split / "images.npy").write_bytes(b"re-rendered set")  # e.g. prepare.idnet_images_per_identity changed
    assert training.try_resume(cfg.checkpoint_path, cfg, cfg.steps) is None


def test_idnet_learns_separable_identities(tmp_path):
    """Identities that differ by a flat colour are separated after a few steps (genuine >> impostor cosine)."""
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (4, 3))
    identity = np.repeat(np.arange(4), 6)
    images = np.clip(colours[identity][:, None, None, :] + rng.integers(-10, 10, (24, SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    result = idnet.train_idnet(_id_cfg(tmp_path, steps=30, lr=3e-3, drop_ratio=0.0, batch_size=12), images, identity,
                               progress=False)
    report = idnet.evaluate_idnet(result.net, images, identity)
    assert report["genuine_cos_mean"] > report["impostor_cos_mean"] + 0.3


# ------------------------------------------------------------------------------ pSp
def test_psp_trains_encoder_only_resumes_exactly_and_loads(tmp_path, images, pool):
    gcfg = _gen_cfg(tmp_path / "g", steps=1)
    nets = ae.train_generator(gcfg, images, pool, progress=False).nets
    products = ae.save_products(gcfg, nets)
    e4e = load_e4e(products["e4e"])
    torch.manual_seed(0)
    ident = idnet.ArcFace(_id_cfg(Path("unused")).arcface_config()).eval()

    def cfg(out):
        return _psp_cfg(tmp_path / out)

    def fresh():
        g, _ = load_stylegan2(products["stylegan2"])
        return inversion.build_psp(e4e, g, e4e.latent_avg, seed=2)

    start = fresh()
    assert torch.equal(start.encoder.body[0].res_layer[1].weight, e4e.encoder.body[0].res_layer[1].weight)
    whole = inversion.train_psp(cfg("a"), fresh(), images, ident, progress=False).net
    assert _state_equal(whole.decoder, start.decoder)  # the generator stays frozen
    assert not _state_equal(whole.encoder, start.encoder)
    c = cfg("b")
    inversion.train_psp(c, fresh(), images, ident, progress=False, stop_after=2)
    rest = inversion.train_psp(c, fresh(), images, ident, progress=False)
    assert rest.resumed_from == 2 and _state_equal(whole.encoder, rest.net.encoder)
    from megafr.nets.checkpoints import save_encoder

    save_encoder(tmp_path / "psp.pt", rest.net)
    loaded = load_psp(tmp_path / "psp.pt")
    x = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(loaded.encode(x), rest.net.encode(x), atol=1e-6)
    # an interrupted pSp run is not resumed over a retrained generator (UPSTREAM digest)
    generator_copy = tmp_path / "stylegan2_copy.pt"
    shutil.copy(products["stylegan2"], generator_copy)
    d = replace(cfg("d"), stylegan2_path=str(generator_copy))
    inversion.train_psp(d, fresh(), images, ident, progress=False, stop_after=2)
    assert training.try_resume(d.checkpoint_path, d, d.steps)["step"] == 2
    with open(generator_copy, "ab") as handle:
        handle.write(b"retrained")
    assert training.try_resume(d.checkpoint_path, d, d.steps) is None


def test_checkpoint_of_other_code_or_config_is_not_resumed(tmp_path, images, monkeypatch):
    identity = np.repeat(np.arange(6), 4)
    cfg = _id_cfg(tmp_path)
    idnet.train_idnet(cfg, images, identity, progress=False, stop_after=2)
    assert cfg.checkpoint_path.is_file() and cfg.folder not in cfg.checkpoint_path.parents  # outside the DVC outs
    assert training.try_resume(cfg.checkpoint_path, cfg, cfg.steps)["step"] == 2
    assert training.try_resume(cfg.checkpoint_path, replace(cfg, margin=0.1), cfg.steps) is None
    monkeypatch.setattr(training, "code_digest", lambda folders: "other code")
    assert training.try_resume(cfg.checkpoint_path, cfg, cfg.steps) is None


def test_generator_checkpoint_is_not_resumed_over_other_input_files(tmp_path, images, pool):
    weights, split = tmp_path / "idnet.pt", tmp_path / "data" / "train"
    split.mkdir(parents=True)
    weights.write_bytes(b"first identity network")
    (split / "images.npy").write_bytes(b"first split")
    ident = idnet.ArcFace(_id_cfg(Path("unused")).arcface_config()).eval()
    cfg = _gen_cfg(tmp_path / "g", idnet_path=str(weights), data_dir=str(tmp_path / "data"), lambda_id=0.1)
    ae.train_generator(cfg, images, pool, progress=False, stop_after=2, idnet=ident)
    assert training.try_resume(cfg.checkpoint_path, cfg, cfg.steps)["step"] == 2
    weights.write_bytes(b"retrained identity network")  # the lambda_id term would now pull elsewhere
    assert training.try_resume(cfg.checkpoint_path, cfg, cfg.steps) is None
    weights.write_bytes(b"first identity network")
    assert training.try_resume(cfg.checkpoint_path, cfg, cfg.steps)["step"] == 2
    (split / "images.npy").write_bytes(b"re-prepared split")
    assert training.try_resume(cfg.checkpoint_path, cfg, cfg.steps) is None
    # without the identity term the identity network does not shape the weights, so it is not checked
    (split / "images.npy").write_bytes(b"first split")
    cfg0 = replace(cfg, out_dir=str(tmp_path / "g0"), lambda_id=0.0)
    ae.train_generator(cfg0, images, pool, progress=False, stop_after=2)
    weights.write_bytes(b"retrained identity network")
    assert training.try_resume(cfg0.checkpoint_path, cfg0, cfg0.steps)["step"] == 2


def test_official_mode_only_validates_the_given_files(tmp_path, images, pool):
    import json

    from megafr.nets.checkpoints import save_arcface

    net = idnet.ArcFace(_id_cfg(tmp_path).arcface_config())
    save_arcface(tmp_path / "model_ir_se50.pth", net)
    cfg = _id_cfg(tmp_path, mode="official", official_path=str(tmp_path / "model_ir_se50.pth"))
    _, report, curve = idnet.run_idnet_stage(cfg, progress=False)
    assert report["trained"] == 0 and report["official_file_loaded"] == 1 and curve.empty
    exposed = json.loads((cfg.folder / idnet.PRODUCTS_FILE).read_text())["arcface"]  # the copy later stages read
    assert exposed.endswith(idnet.PRODUCT_FILE)
    assert (cfg.folder / idnet.PRODUCT_FILE).read_bytes() == (tmp_path / "model_ir_se50.pth").read_bytes()
    gcfg = _gen_cfg(tmp_path / "g", steps=1)
    products = ae.save_products(gcfg, ae.build_networks(gcfg))
    official = _gen_cfg(tmp_path / "paper", mode="official", official_stylegan2=products["stylegan2"],
                        official_e4e=products["e4e"])
    out = ae.run_generator_stage(official, progress=False)
    assert out.metrics["trained"] == 0 and out.metrics["n_latent"] == gcfg.n_latent and out.g_ema is None
    for name, file in (("stylegan2", ae.STYLEGAN_FILE), ("e4e", ae.E4E_FILE)):  # exposed as the stage's products
        assert (official.folder / file).read_bytes() == Path(products[name]).read_bytes()
    with pytest.raises(Exception):
        ae.check_official(replace(official, official_e4e=str(tmp_path / "missing.pt")))


def test_wplus_bound_fits_the_images_better_than_the_encoder_it_starts_from(tiny_frozen):
    generator, inversion = tiny_frozen.generator, tiny_frozen.inversion
    torch.manual_seed(0)
    target_codes = inversion.latent_avg + 0.5 * torch.randn(3, generator.n_latent, generator.style_dim)
    _, x = ev.invert(lambda w: w, generator, target_codes)  # images the generator can make exactly
    bound = ev.wplus_bound(generator, inversion.encode, x, None, steps=60, lr=0.05)
    assert bound["optimised"]["psnr"] > bound["encoder"]["psnr"] + 3.0, bound
    assert bound["steps"] == 60 and bound["optimised"]["images"] == 3


def test_recipe_differences_name_training_fields_only(tmp_path):
    cfg = _gen_cfg(tmp_path)
    recipe = {**vars(cfg), "steps": cfg.steps + 1, "n_eval": 999, "mode": "train", "idnet_path": "elsewhere.pt"}
    assert common.recipe_differences(cfg, recipe) == [f"steps: {cfg.steps!r} vs {cfg.steps + 1!r}"]
    older = {k: v for k, v in recipe.items() if k != "finetune_steps"}  # a release made before the field existed
    assert common.recipe_differences(cfg, older) == [f"steps: {cfg.steps!r} vs {cfg.steps + 1!r}",
                                                     f"finetune_steps: {cfg.finetune_steps!r} vs not recorded"]


def test_pose_table_degrees_is_writable_for_torch(tmp_path):
    """A SynthHeads table read from parquet holds float32 columns; the pose array must still be a writable
    copy, or torch.from_numpy warns in every layer-swap evaluation."""
    import pandas as pd

    from megafr.pretrain.latent_structure import pose_table_degrees

    frame = pd.DataFrame({name: np.arange(3, dtype=np.float32) for name in ("yaw_deg", "pitch_deg", "roll_deg")})
    frame.to_parquet(tmp_path / "meta.parquet")
    pose = pose_table_degrees(pd.read_parquet(tmp_path / "meta.parquet").iloc[[1, 2]])
    assert pose.flags.writeable and pose.dtype == np.float32 and pose.shape == (2, 3)
