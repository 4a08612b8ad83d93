"""Gaussian diffusion for CMDM: schedules, q_sample, masked x0 loss, DDPM / DDIM sampling, guidance.

    diffusion = build_diffusion(cfg.diffusion)
    cond = model.encode_batch(batch, cfg_dropout=True)          # condition dropout happens here
    loss = diffusion.training_loss(model, batch["motion"], cond, batch["mask"])
    x0 = diffusion.sample(model, model.encode_conditions(texts, contact), mask, sampler="ddim", steps=50)

As in afford-motion (after guided-diffusion / MDM): T = 1000 steps, cosine schedule
(Nichol & Dhariwal 2021), timesteps drawn uniformly, the denoiser predicts x0 (`prediction='x0'`;
'eps' is the DDPM alternative), the loss is the MSE over valid frames, each sample normalised
by its own number of valid entries, then averaged over the batch; sampling uses the fixed-small
variance (the true posterior's) and never clips x0 (features are normalised, not bounded).

Frames past a sample's length are masked out of attention (so they never affect valid frames),
excluded from the loss, and set to 0 in sampled motion (the dataset's zero padding).

Classifier-free guidance acts on the model output (x0 or eps):
    out = uncond + s * (cond - uncond);  s = 1 is the plain conditional model (one pass, no uncond).
The unconditional pass uses `model.null_conditions(cond)` and runs batched with the conditional one.

Schedules are kept in float64 and gathered per batch as float32, like guided-diffusion.
"""

import math

import numpy as np
import torch


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------

def cosine_alpha_bar(s: np.ndarray | float) -> np.ndarray:
    """Nichol & Dhariwal's alpha_bar(s) = cos^2(((s + 0.008) / 1.008) * pi / 2), s in [0, 1]."""
    return np.cos((np.asarray(s, dtype=np.float64) + 0.008) / 1.008 * math.pi / 2) ** 2


def make_betas(schedule: str, steps: int, max_beta: float = 0.999) -> np.ndarray:
    """Betas of the 'cosine' or 'linear' schedule for `steps` timesteps (float64)."""
    if schedule == "cosine":
        s = np.arange(steps + 1, dtype=np.float64) / steps
        ab = cosine_alpha_bar(s)
        # beta_i = 1 - alpha_bar(i+1 / T) / alpha_bar(i / T), clipped below 1 to keep the last step finite.
        return np.minimum(1.0 - ab[1:] / ab[:-1], max_beta)
    if schedule == "linear":
        # Ho et al.'s 1e-4 .. 0.02 for 1000 steps, rescaled so other step counts cover the same noise.
        scale = 1000.0 / steps
        return np.linspace(scale * 1e-4, scale * 0.02, steps, dtype=np.float64)
    raise ValueError(f"noise schedule must be 'cosine' or 'linear', got {schedule!r}")


def _gather(arr: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """arr[t] as float32 on like's device, shaped (B, 1, 1) to broadcast over (B, T, F)."""
    return arr.to(like.device)[t].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def _model_call(model, name):
    """A method of the model, looking through DDP-style wrappers (`.module`)."""
    return getattr(getattr(model, "module", model), name)


class GaussianDiffusion:
    def __init__(self, steps: int = 1000, noise_schedule: str = "cosine", prediction: str = "x0"):
        if prediction not in ("x0", "eps"):
            raise ValueError(f"prediction must be 'x0' or 'eps', got {prediction!r}")
        self.num_timesteps, self.noise_schedule, self.prediction = steps, noise_schedule, prediction
        betas = make_betas(noise_schedule, steps)
        alphas = 1.0 - betas
        ab = np.cumprod(alphas)
        ab_prev = np.append(1.0, ab[:-1])
        post_var = betas * (1.0 - ab_prev) / (1.0 - ab)
        as_t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float64))  # noqa: E731
        self.betas, self.alphas_cumprod, self.alphas_cumprod_prev = as_t(betas), as_t(ab), as_t(ab_prev)
        self.sqrt_ab, self.sqrt_1m_ab = as_t(np.sqrt(ab)), as_t(np.sqrt(1.0 - ab))
        # q(x_{t-1} | x_t, x0) = N(coef1 * x0 + coef2 * x_t, posterior_variance)
        self.posterior_variance = as_t(post_var)
        # The variance is 0 at t = 0 (no noise is added there); log-variance uses t = 1's value.
        self.posterior_log_variance_clipped = as_t(np.log(np.append(post_var[1] if steps > 1 else 1.0, post_var[1:])))
        self.posterior_mean_coef1 = as_t(betas * np.sqrt(ab_prev) / (1.0 - ab))
        self.posterior_mean_coef2 = as_t((1.0 - ab_prev) * np.sqrt(alphas) / (1.0 - ab))

    def __repr__(self):
        return f"GaussianDiffusion(steps={self.num_timesteps}, schedule={self.noise_schedule}, prediction={self.prediction})"

    # ---- forward process ---------------------------------------------------------------------

    def q_sample(self, x0, t, noise=None):
        """x_t ~ q(x_t | x0) = N(sqrt(ab_t) x0, (1 - ab_t) I)."""
        noise = torch.randn_like(x0) if noise is None else noise
        return _gather(self.sqrt_ab, t, x0) * x0 + _gather(self.sqrt_1m_ab, t, x0) * noise

    def q_posterior(self, x0, x_t, t):
        """Mean and variance of q(x_{t-1} | x_t, x0)."""
        mean = _gather(self.posterior_mean_coef1, t, x_t) * x0 + _gather(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, _gather(self.posterior_variance, t, x_t)

    def x0_from_eps(self, x_t, t, eps):
        return (x_t - _gather(self.sqrt_1m_ab, t, x_t) * eps) / _gather(self.sqrt_ab, t, x_t)

    def eps_from_x0(self, x_t, t, x0):
        return (x_t - _gather(self.sqrt_ab, t, x_t) * x0) / _gather(self.sqrt_1m_ab, t, x_t)

    # ---- training ----------------------------------------------------------------------------

    def sample_timesteps(self, batch_size, device, generator=None):
        """Uniform timesteps (afford-motion's sampler)."""
        g_dev = generator.device if generator is not None else device
        return torch.randint(0, self.num_timesteps, (batch_size,), generator=generator, device=g_dev).to(device)

    def training_loss(self, model, x0, cond, mask, t=None, noise=None):
        """Masked MSE of the prediction (x0, or eps) over valid frames; a scalar.

        Condition dropout is not done here: `cond` comes from `model.encode_batch(batch,
        cfg_dropout=True)` (or encode_conditions with drop masks), where the erasing happens.
        """
        mask = mask.bool()
        t = self.sample_timesteps(x0.shape[0], x0.device) if t is None else t
        noise = torch.randn_like(x0) if noise is None else noise
        x_t = self.q_sample(x0, t, noise)
        out = model(x_t, t, cond, mask)
        target = x0 if self.prediction == "x0" else noise
        w = mask.unsqueeze(-1).to(out.dtype)
        per_sample = ((out - target) ** 2 * w).sum((1, 2)) / (w.sum((1, 2)) * x0.shape[-1]).clamp(min=1.0)
        return per_sample.mean()

    # ---- sampling ------------------------------------------------------------------------------

    def model_output(self, model, x_t, t, cond, mask, guidance_scale=1.0, uncond=None):
        """Guided model output: uncond + s * (cond - uncond); s = 1 runs the conditional pass only."""
        if guidance_scale == 1.0:
            return model(x_t, t, cond, mask)
        if uncond is None:
            uncond = _model_call(model, "null_conditions")(cond)
        both = {k: torch.cat([cond[k], uncond[k]]) for k in cond
                if not k.startswith("_") and torch.is_tensor(cond[k])}
        out_c, out_u = model(torch.cat([x_t, x_t]), torch.cat([t, t]), both, torch.cat([mask, mask])).chunk(2)
        return out_u + guidance_scale * (out_c - out_u)

    def predict_x0(self, model, x_t, t, cond, mask, guidance_scale=1.0, uncond=None):
        """(x0, eps) predicted at x_t, whichever the model outputs."""
        out = self.model_output(model, x_t, t, cond, mask, guidance_scale, uncond)
        if self.prediction == "x0":
            return out, self.eps_from_x0(x_t, t, out)
        return self.x0_from_eps(x_t, t, out), out

    def ddpm_step(self, x0_hat, x_t, t, noise):
        """Ancestral step x_t -> x_{t-1} from the posterior with fixed-small variance; no noise at t = 0."""
        mean, _ = self.q_posterior(x0_hat, x_t, t)
        std = torch.exp(0.5 * _gather(self.posterior_log_variance_clipped, t, x_t))
        nonzero = (t != 0).to(x_t.dtype).view(-1, *([1] * (x_t.dim() - 1)))
        return mean + nonzero * std * noise

    def ddim_step(self, x0_hat, eps, x_t, t, t_prev, eta, noise):
        """DDIM update x_t -> x_{t_prev} (Song et al. eq. 12); t_prev = -1 means 'to x0'.

        With eta = 1 and consecutive steps, sigma^2 is the posterior variance and the update equals
        the DDPM posterior step exactly (tested); eta = 0 is the deterministic ODE-like sampler.
        """
        ab_t = _gather(self.alphas_cumprod, t, x_t)
        ab_prev = torch.where(t_prev >= 0, self.alphas_cumprod.to(x_t.device)[t_prev.clamp(min=0)],
                              torch.ones((), dtype=torch.float64, device=x_t.device))
        ab_prev = ab_prev.to(x_t.dtype).view_as(ab_t)
        sigma = eta * torch.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))
        mean = torch.sqrt(ab_prev) * x0_hat + torch.sqrt((1 - ab_prev - sigma ** 2).clamp(min=0)) * eps
        return mean + sigma * noise

    def timestep_sequence(self, sampler: str, steps: int | None) -> list[int]:
        """Timesteps visited, descending: all T for DDPM; `steps` evenly spaced ones for DDIM."""
        if sampler == "ddpm":
            if steps not in (None, self.num_timesteps):
                raise ValueError(f"DDPM runs all {self.num_timesteps} steps; use sampler='ddim' for {steps}")
            return list(range(self.num_timesteps - 1, -1, -1))
        if sampler != "ddim":
            raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
        steps = steps or 50
        if not 1 <= steps <= self.num_timesteps:
            raise ValueError(f"DDIM steps must be in 1..{self.num_timesteps}, got {steps}")
        # Respacing: `steps` timesteps spread evenly over [0, T-1], always including 0 and T-1.
        ts = np.unique(np.round(np.linspace(0, self.num_timesteps - 1, steps)).astype(np.int64))
        return ts[::-1].tolist()

    @torch.no_grad()
    def sample(self, model, cond, mask, sampler="ddpm", steps=None, eta=0.0, guidance_scale=1.0,
               progress=True, generator=None, noise=None):
        """Generate x0 (B, T, F) for conditions `cond` and frame mask `mask` (B, T) True = valid.

        `generator` (a torch.Generator) makes the draw reproducible; its device may differ from the
        model's (noise is drawn on the generator's device, then moved).
        """
        mask = mask.bool()
        device = mask.device
        motion_dim = _model_call(model, "motion_dim")
        shape = (mask.shape[0], mask.shape[1], motion_dim)

        def randn():
            g_dev = generator.device if generator is not None else device
            return torch.randn(shape, generator=generator, device=g_dev).to(device)

        x = randn() if noise is None else noise.to(device)
        uncond = _model_call(model, "null_conditions")(cond) if guidance_scale != 1.0 else None
        ts = self.timestep_sequence(sampler, steps)
        if progress:
            from tqdm.auto import tqdm
            ts_iter = tqdm(ts, desc=f"{sampler} sampling", leave=False)
        else:
            ts_iter = ts
        for i, step in enumerate(ts_iter):
            t = torch.full((shape[0],), step, dtype=torch.long, device=device)
            x0_hat, eps = self.predict_x0(model, x, t, cond, mask, guidance_scale, uncond)
            if sampler == "ddpm":
                x = self.ddpm_step(x0_hat, x, t, randn() if step > 0 else torch.zeros_like(x))
            else:
                t_prev = torch.full_like(t, ts[i + 1] if i + 1 < len(ts) else -1)
                z = randn() if (eta > 0 and step > 0) else torch.zeros_like(x)
                x = self.ddim_step(x0_hat, eps, x, t, t_prev, eta, z)
        return x * mask.unsqueeze(-1).to(x.dtype)


def build_diffusion(diffusion_cfg) -> GaussianDiffusion:
    """GaussianDiffusion from `cfg.diffusion` (steps, noise_schedule, prediction)."""
    return GaussianDiffusion(diffusion_cfg.steps, diffusion_cfg.noise_schedule, diffusion_cfg.prediction)
