"""The diffusion maths: schedules, q_sample, masked loss, DDPM / DDIM, guidance, and one overfit."""

import math

import numpy as np
import pytest
import torch

from cmdm.diffusion import GaussianDiffusion, build_diffusion, make_betas
from cmdm.model import CMDM

TEXT_DIM = 16


def tiny_model(prediction_seed=0, **kw):
    args = dict(arch="dit", latent_dim=32, num_layers=[1, 1], num_heads=4, dim_feedforward=64,
                text_dim=TEXT_DIM, use_contacts=False, num_latents=4, num_timesteps=50, dropout=0.0,
                dit_drop_path=0.0)
    args.update(kw)
    torch.manual_seed(prediction_seed)
    model = CMDM(**args)
    with torch.no_grad():  # open the adaLN-Zero gates so the untrained model is not constant
        g = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            if "adaLN_modulation" in name or "final_layer.linear" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def batch(B=2, T=12, lengths=(12, 7), seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(B, TEXT_DIM, generator=g)
    mask = torch.arange(T)[None] < torch.tensor(lengths)[:, None]
    x0 = torch.randn(B, T, 263, generator=g) * mask[..., None]
    return text, x0, mask


# --------------------------------------------------------------------------------------------
# schedules and the forward process
# --------------------------------------------------------------------------------------------

def test_cosine_schedule_matches_closed_form():
    d = GaussianDiffusion(1000, "cosine")
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    betas = d.betas.numpy()
    unclipped = betas < 0.999
    assert unclipped[:-1].all()  # only the very last step may hit the 0.999 cap
    for t in (0, 1, 10, 250, 500, 900, 998):
        assert d.alphas_cumprod[t].item() == pytest.approx(f((t + 1) / 1000) / f(0), rel=1e-9)
    assert 0 < betas[0] < 1e-4  # almost no noise at the first step (the cosine's 0.008 offset)
    assert d.alphas_cumprod[-1].item() < 1e-6  # x_T is pure noise


def test_linear_schedule_matches_closed_form():
    d = GaussianDiffusion(1000, "linear")
    assert d.betas[0].item() == pytest.approx(1e-4) and d.betas[-1].item() == pytest.approx(0.02)
    assert np.allclose(np.diff(d.betas.numpy()), (0.02 - 1e-4) / 999)
    assert np.allclose(d.alphas_cumprod.numpy(), np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)))
    assert make_betas("linear", 500)[-1] == pytest.approx(0.04)  # rescaled for fewer steps
    with pytest.raises(ValueError, match="schedule"):
        make_betas("sigmoid", 10)


def test_posterior_coefficients_match_bayes_rule():
    d = GaussianDiffusion(100, "cosine")
    ab, ab_prev, beta = d.alphas_cumprod, d.alphas_cumprod_prev, d.betas
    # q(x_{t-1}|x_t,x0) precision = 1/(1-ab_prev) + alpha_t/beta_t
    assert torch.allclose(1 / d.posterior_variance[1:], (1 / (1 - ab_prev) + (1 - beta) / beta)[1:], rtol=1e-9)
    assert torch.allclose(d.posterior_mean_coef1, beta * ab_prev.sqrt() / (1 - ab))


def test_q_sample_moments():
    d = GaussianDiffusion(1000, "cosine")
    x0 = torch.full((20000, 1, 4), 2.0)
    t = torch.full((20000,), 300)
    xt = d.q_sample(x0, t)
    ab = d.alphas_cumprod[300].item()
    assert xt.mean().item() == pytest.approx(2 * math.sqrt(ab), abs=0.01)
    assert xt.var().item() == pytest.approx(1 - ab, rel=0.03)


def test_eps_x0_conversions_invert():
    d = GaussianDiffusion(100)
    x0, eps, t = torch.randn(3, 5, 7), torch.randn(3, 5, 7), torch.tensor([0, 50, 99])
    xt = d.q_sample(x0, t, eps)
    assert torch.allclose(d.x0_from_eps(xt, t, eps), x0, atol=1e-3)
    assert torch.allclose(d.eps_from_x0(xt, t, x0), eps, atol=1e-4)


def test_build_diffusion_from_config():
    from cmdm.config import load_config

    d = build_diffusion(load_config(None, ["diffusion.steps=200", "diffusion.noise_schedule=linear",
                                           "diffusion.prediction=eps"]).diffusion)
    assert (d.num_timesteps, d.noise_schedule, d.prediction) == (200, "linear", "eps")


# --------------------------------------------------------------------------------------------
# loss
# --------------------------------------------------------------------------------------------

def test_loss_is_masked_mse_per_sample():
    class Echo(torch.nn.Module):  # predicts a fixed tensor: the loss is then known in closed form
        def __init__(self, out):
            super().__init__()
            self.out = out

        def forward(self, x_t, t, cond, mask):
            return self.out

    d = GaussianDiffusion(50)
    _, x0, mask = batch()
    pred = x0 + 1.0
    pred[~mask] = 1e6  # garbage at padded frames must not count
    t = torch.tensor([3, 40])
    loss = d.training_loss(Echo(pred), x0, {}, mask, t=t)
    assert loss.item() == pytest.approx(1.0)
    pred2 = x0.clone()
    pred2[0] += 2.0  # sample 0 (12 valid frames) error 4, sample 1 (7 frames) error 0
    assert d.training_loss(Echo(pred2), x0, {}, mask, t=t).item() == pytest.approx(2.0)  # mean of per-sample means

    d_eps = GaussianDiffusion(50, prediction="eps")
    noise = torch.randn_like(x0)
    assert d_eps.training_loss(Echo(noise), x0, {}, mask, t=t, noise=noise).item() == pytest.approx(0.0)


def test_loss_ignores_padded_target_frames():
    model = tiny_model()
    text, x0, mask = batch()
    cond = model.encode_conditions(text)
    d = GaussianDiffusion(50)
    noise, t = torch.randn_like(x0), torch.tensor([5, 30])
    a = d.training_loss(model, x0, cond, mask, t=t, noise=noise)
    x0b, noiseb = x0.clone(), noise.clone()
    x0b[~mask], noiseb[~mask] = 123.0, -50.0
    assert torch.allclose(a, d.training_loss(model, x0b, cond, mask, t=t, noise=noiseb), atol=1e-6)


# --------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------

def test_guidance_scale_one_is_the_conditional_prediction():
    model = tiny_model()
    text, x0, mask = batch()
    cond = model.encode_conditions(text)
    d = GaussianDiffusion(50)
    x, t = torch.randn_like(x0), torch.tensor([10, 20])
    calls = []
    model.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    assert torch.equal(d.model_output(model, x, t, cond, mask, 1.0), model(x, t, cond, mask))
    assert calls == [2, 2]  # one conditional pass, no unconditional one

    calls.clear()
    guided = d.model_output(model, x, t, cond, mask, 2.5)
    assert calls == [4]  # conditional and unconditional in one batched pass
    c, u = model(x, t, cond, mask), model(x, t, model.null_conditions(cond), mask)
    assert torch.allclose(guided, u + 2.5 * (c - u), atol=1e-5)
    assert not torch.allclose(c, u)


@pytest.mark.parametrize("prediction", ["x0", "eps"])
def test_ddim_eta1_over_all_steps_is_ddpm(prediction):
    """With eta = 1 and every timestep, DDIM's sigma^2 is the posterior variance and its mean is
    the posterior mean, so with the same noise draws the two samplers give the same samples."""
    model = tiny_model()
    text, _, mask = batch()
    cond = model.encode_conditions(text)
    d = GaussianDiffusion(50, prediction=prediction)
    ddpm = d.sample(model, cond, mask, "ddpm", progress=False, generator=torch.Generator().manual_seed(7))
    ddim = d.sample(model, cond, mask, "ddim", steps=50, eta=1.0, progress=False,
                    generator=torch.Generator().manual_seed(7))
    assert torch.allclose(ddpm, ddim, atol=1e-4)
    eta0 = d.sample(model, cond, mask, "ddim", steps=50, eta=0.0, progress=False,
                    generator=torch.Generator().manual_seed(7))
    assert not torch.allclose(ddpm, eta0, atol=1e-2)


def test_ddim_step_equals_posterior_step():
    d = GaussianDiffusion(100)
    x0, xt, z = torch.randn(4, 3, 5), torch.randn(4, 3, 5), torch.randn(4, 3, 5)
    t = torch.tensor([1, 10, 50, 99])
    eps = d.eps_from_x0(xt, t, x0)
    mean, var = d.q_posterior(x0, xt, t)
    assert torch.allclose(d.ddim_step(x0, eps, xt, t, t - 1, 1.0, z), mean + var.sqrt() * z, atol=1e-5)
    assert torch.allclose(d.ddpm_step(x0, xt, t, z), mean + var.sqrt() * z, atol=1e-5)


def test_ddim_respacing_and_padding():
    model = tiny_model()
    text, _, mask = batch()
    cond = model.encode_conditions(text)
    d = GaussianDiffusion(50)
    seq = d.timestep_sequence("ddim", 10)
    assert len(seq) == 10 and seq[0] == 49 and seq[-1] == 0 and seq == sorted(seq, reverse=True)
    assert d.timestep_sequence("ddpm", None) == list(range(49, -1, -1))
    seen = []
    model.register_forward_hook(lambda m, a, o: seen.append(int(a[1][0])))
    out = d.sample(model, cond, mask, "ddim", steps=10, guidance_scale=1.0, progress=False)
    assert seen == seq
    assert out.shape == (2, 12, 263) and (out[~mask] == 0).all() and torch.isfinite(out).all()
    a = d.sample(model, cond, mask, "ddim", steps=10, progress=False, generator=torch.Generator().manual_seed(1))
    b = d.sample(model, cond, mask, "ddim", steps=10, progress=False, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="DDPM runs all"):
        d.sample(model, cond, mask, "ddpm", steps=10, progress=False)


def test_guided_sampling_runs_and_differs():
    model = tiny_model()
    text, _, mask = batch()
    cond = model.encode_conditions(text)
    d = GaussianDiffusion(50)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    plain = d.sample(model, cond, mask, "ddim", steps=5, progress=False, generator=g())
    guided = d.sample(model, cond, mask, "ddim", steps=5, guidance_scale=3.0, progress=False, generator=g())
    assert torch.isfinite(guided).all() and not torch.allclose(plain, guided)


# --------------------------------------------------------------------------------------------
# learning
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["dit", "trans_enc"])
def test_tiny_model_overfits_one_batch(arch):
    torch.manual_seed(0)
    model = CMDM(arch=arch, latent_dim=64, num_layers=[1, 1], num_heads=4, dim_feedforward=128,
                 text_dim=TEXT_DIM, contact_num_tokens=8, contact_dim=16, contact_group_size=8, contact_arch="compact",
                 num_latents=4, num_timesteps=100, dropout=0.0, dit_drop_path=0.0, pos_dropout=0.0)
    d = GaussianDiffusion(100)
    g = torch.Generator().manual_seed(0)
    B, T = 4, 16
    text = torch.randn(B, TEXT_DIM, generator=g)
    contact = torch.cat([torch.randn(B, 32, 3, generator=g), torch.rand(B, 32, 6, generator=g)], -1)
    mask = torch.arange(T)[None] < torch.tensor([16, 12, 9, 16])[:, None]
    x0 = torch.randn(B, T, 263, generator=g) * mask[..., None]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    # Fixed timesteps and noise: the same regression problem every step, so it must be fit.
    t, noise = torch.tensor([5, 30, 60, 95]), torch.randn(B, T, 263, generator=g)
    losses = []
    for _ in range(300):
        loss = d.training_loss(model, x0, model.encode_conditions(text, contact), mask, t=t, noise=noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if losses[-1] < 0.03 * losses[0]:
            break
    assert losses[-1] < 0.05 * losses[0], (losses[0], losses[-1], len(losses))
