"""The paper's 2-D toy: how well does a ratio net's x-gradient estimate a score difference, against the
difference of two score nets fitted by denoising score matching (DSM) at the same budget?

Data p: 40 support points, a 5 x 8 grid on [-4, 4]^2 jittered (uniform, +-`jitter`). Generator q: a perturbed
copy, y_k = x_k + shift + N(0, perturb^2 I) per point; its parameters are the 80 coordinates y. Both smoothed
densities are exact mixtures (p_s = mean_k N(x_k, s^2 I)), so the score difference
    delta*(x, s) = grad log q_s(x) - grad log p_s(x)
and the generator's VSD / DiffRatio-dikl gradient with w(s) = s^2,
    g*_k = E[ s^2 delta*(y_k + s eps, s) ]   (the mean over the samples drawn from point k, k uniform)
are closed form. Each estimator is trained at batch `batch_size` (s ~ LogUniform(0.05, 2), stratified) and
evaluated after each of `budgets` steps on one shared draw from q_s (common random numbers):

    ratio             grad_x d(x, s), d a logistic classifier of q_s against p_s (the pipeline's ratio loss)
    ratio_inv_var     the same with the logit scaled by c_logit(s) = sd^2 / s^2 (the pipeline's inverse_variance)
    dsm               (D_q(x; s) - D_p(x; s)) / s^2, two EDM-preconditioned denoisers fitted by DSM on q and p

Reported: the relative error of s^2 delta (the x0-space update the generator takes) over the draw and per
noise-level tercile, and the relative error and cosine of the parameter gradient g, per seed and over seeds,
with each ratio row paired against dsm seed by seed. An error that falls with the budget is the estimator not yet
fitted (and the noise of its batches); one that stays as the budget grows is its bias.

    python -m pipeline.experiments.toy2d --seeds 0 1 2 --budgets 5000 20000 --out metrics/toy2d
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.artifacts import atomic_path, read_json, write_json
from pipeline.config import NoiseParams
from pipeline.evaluation.metrics import mean_sd
from pipeline.experiments.claims import RESOLVED
from pipeline.experiments.gradient_bias import GaussianMixture, MLPBackbone, MLPRatio
from pipeline.networks.preconditioning import Denoiser, denoising_loss
from pipeline.noise_levels import sample_noise_levels
from pipeline.randomness import Draws, seed_torch
from pipeline.training.ratio_losses import ratio_loss

METHODS = ("ratio", "ratio_inv_var", "dsm")
SIGMA_RANGE = (0.05, 2.0)  # s ~ LogUniform on it, for training and evaluation alike


def support(jitter: float) -> torch.Tensor:
    """The 40 data points: 8 columns by 5 rows on [-4, 4]^2, each moved uniformly by up to +-jitter."""
    xs, ys = torch.linspace(-4, 4, 8), torch.linspace(-4, 4, 5)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    return grid + jitter * (2 * torch.rand_like(grid) - 1)


def noise(sigma_min: float, sigma_max: float) -> NoiseParams:
    return NoiseParams(distribution="loguniform", p_mean=0.0, p_std=1.0, sigma_min=sigma_min, sigma_max=sigma_max,
                       rho=7.0, stratified=True)


def exact_x0_update(q: GaussianMixture, p: GaussianMixture, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """s^2 (grad log q_s - grad log p_s) = D_q(x; s) - D_p(x; s), by Tweedie."""
    return q.denoiser(x, sigma) - p.denoiser(x, sigma)


def ratio_x0_update(ratio: nn.Module, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(ratio(x_in, sigma).sum(), x_in)
    return sigma.view(-1, 1, 1, 1) ** 2 * grad


def errors(estimate: torch.Tensor, truth: torch.Tensor, point: torch.Tensor, points: int,
           bins: list[torch.Tensor]) -> dict:
    """Relative errors of the per-sample x0-space update, overall and per tercile of s, and of the parameter
    gradient it gives (each point's mean update over the draw)."""
    e, t = estimate.flatten(1), truth.flatten(1)

    def relative(mask: torch.Tensor) -> float:
        return ((e[mask] - t[mask]).square().sum() / t[mask].square().sum()).sqrt().item()

    def gradient(u: torch.Tensor) -> torch.Tensor:
        return torch.zeros(points, u.shape[1]).index_add_(0, point, u).flatten() / len(u)

    g, g_true = gradient(e), gradient(t)
    return {"update_relative_error": relative(torch.ones_like(bins[0])),
            "update_relative_error_by_noise_tercile": [relative(b) for b in bins],
            "gradient_relative_error": ((g - g_true).norm() / g_true.norm()).item(),
            "gradient_cosine": F.cosine_similarity(g, g_true, dim=0).item()}


def run(seed: int, budgets: list[int], batch_size: int, width: int, depth: int, lr: float, eval_samples: int,
        jitter: float = 0.2, shift: tuple[float, float] = (0.4, 0.0), perturb: float = 0.2,
        sigma_range: tuple[float, float] = SIGMA_RANGE) -> dict:
    """One seed: the three estimators trained to the largest budget and scored on one shared draw after each."""
    seed_torch("toy2d", seed)
    x = support(jitter)
    y = x + torch.tensor(shift) + perturb * torch.randn_like(x)
    p, q = GaussianMixture(x, 0.0), GaussianMixture(y, 0.0)  # point masses: p_s = mean_k N(x_k, s^2 I)
    sigma_data = x.var(0).mean().sqrt().item()
    levels = noise(*sigma_range)
    nets = {"ratio": MLPRatio(2, width, sigma_data, depth=depth),
            "ratio_inv_var": MLPRatio(2, width, sigma_data, depth=depth, scale="inverse_variance"),
            "dsm_p": Denoiser(MLPBackbone(2, width, depth=depth), sigma_data),
            "dsm_q": Denoiser(MLPBackbone(2, width, depth=depth), sigma_data)}
    opts = {name: torch.optim.Adam(net.parameters(), lr=lr) for name, net in nets.items()}

    n = eval_samples  # the shared evaluation draw, made before any training so every budget scores the same one
    draws = Draws(n, torch.device("cpu"))
    sigma = sample_noise_levels(draws, levels)
    point = torch.randint(0, len(y), (n,))
    x_s = y[point].view(n, 2, 1, 1) + sigma.view(-1, 1, 1, 1) * draws.randn(2, 1, 1)
    truth = exact_x0_update(q, p, x_s, sigma)
    edges = torch.quantile(sigma, torch.tensor([1 / 3, 2 / 3]))
    bins = [sigma < edges[0], (sigma >= edges[0]) & (sigma < edges[1]), sigma >= edges[1]]

    def score() -> dict:
        with torch.no_grad():
            estimates = {"dsm": nets["dsm_q"](x_s, sigma) - nets["dsm_p"](x_s, sigma)}
        for name in ("ratio", "ratio_inv_var"):
            estimates[name] = ratio_x0_update(nets[name], x_s, sigma)
        return {name: errors(estimates[name], truth, point, len(y), bins) for name in METHODS}

    scored, steps, seconds = {}, 0, 0.0
    for budget in sorted(budgets):
        started = time.perf_counter()
        for _ in range(budget - steps):
            draws = Draws(batch_size, torch.device("cpu"))
            s = sample_noise_levels(draws, levels)
            fake, real = q.sample(batch_size), p.sample(batch_size)
            losses = {name: ratio_loss(nets[name], fake, real, None, s, draws)[0]
                      for name in ("ratio", "ratio_inv_var")}
            for name, data in (("dsm_p", real), ("dsm_q", fake)):
                losses[name] = denoising_loss(nets[name], data, None, s, draws.randn(2, 1, 1), sigma_data).mean()
            for name, loss in losses.items():
                opts[name].zero_grad(set_to_none=True)
                loss.backward()
                opts[name].step()
        seconds, steps = seconds + time.perf_counter() - started, budget
        scored[str(budget)] = score()
    return {"seed": seed, "train_seconds": seconds, "tercile_edges": edges.tolist(), "budgets": scored}


def summarise(rows: list[dict]) -> dict:
    """Per budget: mean and sd over seeds of each method's errors, and each ratio row's paired difference from
    dsm (resolved when more than RESOLVED sd from zero)."""
    def stats(values: list[float]) -> dict:
        mean, sd = mean_sd(values)
        return {"mean": mean, "sd": sd, "n": len(values)}

    keys = ("update_relative_error", "gradient_relative_error", "gradient_cosine")
    out = {}
    for budget in rows[0]["budgets"]:
        runs = [r["budgets"][budget] for r in rows]
        at = {method: {key: stats([r[method][key] for r in runs]) for key in keys} for method in METHODS}
        for method in METHODS:
            at[method]["update_relative_error_by_noise_tercile"] = [
                stats([r[method]["update_relative_error_by_noise_tercile"][b] for r in runs]) for b in range(3)]
        for method in ("ratio", "ratio_inv_var"):
            at[f"{method}_minus_dsm"] = {}
            for key in keys:
                d = stats([r[method][key] - r["dsm"][key] for r in runs])
                d["resolved"] = d["sd"] is not None and abs(d["mean"]) > RESOLVED * d["sd"]
                at[f"{method}_minus_dsm"][key] = d
        out[budget] = at
    return out


def markdown(config: dict, rows: list[dict], summary: dict) -> str:
    def cell(s: dict) -> str:
        return f"{s['mean']:.3f} ± {s['sd']:.3f}" if s["sd"] is not None else f"{s['mean']:.3f}"

    edges = ", ".join(f"{e:.2f}" for e in rows[0]["tercile_edges"])
    lines = [f"2-D toy, {len(rows)} seeds ({', '.join(str(r['seed']) for r in rows)}): batch {config['batch_size']}, "
             f"MLPs {config['depth']} x {config['width']} SiLU, Adam {config['lr']:g}, s ~ LogUniform("
             f"{config['sigma_min']:g}, {config['sigma_max']:g}); evaluated on {config['eval_samples']} draws from q_s "
             f"after each budget of steps. Relative errors of the x0-space update s^2 delta (overall and by tercile "
             f"of s, split at {edges} for seed {rows[0]['seed']}) and of the parameter gradient; mean ± sd over "
             "seeds.", "",
             "| steps | estimator | update rel. error | s tercile 1 | s tercile 2 | s tercile 3 | gradient rel. error "
             "| gradient cosine |", "|---|---|---|---|---|---|---|---|"]
    for budget, at in summary.items():
        for method in METHODS:
            s = at[method]
            lines.append(f"| {budget} | {method} | {cell(s['update_relative_error'])} | "
                         + " | ".join(cell(b) for b in s["update_relative_error_by_noise_tercile"])
                         + f" | {cell(s['gradient_relative_error'])} | {cell(s['gradient_cosine'])} |")
    lines += ["", f"Paired with dsm seed by seed (difference, mean ± sd; **resolved** beyond {RESOLVED:g} sd):", "",
              "| steps | estimator - dsm | update rel. error | gradient rel. error | gradient cosine |",
              "|---|---|---|---|---|"]
    for budget, at in summary.items():
        for method in ("ratio", "ratio_inv_var"):
            d = at[f"{method}_minus_dsm"]
            lines.append(f"| {budget} | {method} | " + " | ".join(
                cell(d[k]) + (" **resolved**" if d[k]["resolved"] else " (unresolved)")
                for k in ("update_relative_error", "gradient_relative_error", "gradient_cosine")) + " |")
    seconds = [r["train_seconds"] for r in rows]
    lines += ["", f"Training took {min(seconds):.0f}-{max(seconds):.0f} s a seed (all four nets, one thread)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budgets", nargs="+", type=int, default=[5000, 20000], help="training steps scored")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4, help="hidden layers of every MLP")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-samples", type=int, default=40000)
    parser.add_argument("--out", default="metrics/toy2d", help="the report's path, without .json / .md")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="run nothing: one report of these reports' seeds "
                        "(seeds run as separate processes, one thread each, with the same settings)")
    args = parser.parse_args()
    if args.merge:
        parts = [read_json(path) for path in args.merge]
        if any(part["config"] != parts[0]["config"] for part in parts):
            raise SystemExit(f"cannot merge {' '.join(args.merge)}: they were run with different settings")
        rows = sorted((row for part in parts for row in part["seeds"]), key=lambda row: row["seed"])
        write_report(args.out, parts[0]["config"], rows)
        return
    config = {"budgets": sorted(args.budgets), "batch_size": args.batch_size, "width": args.width,
              "depth": args.depth, "lr": args.lr, "eval_samples": args.eval_samples, "sigma_min": SIGMA_RANGE[0],
              "sigma_max": SIGMA_RANGE[1]}
    rows = []
    for seed in args.seeds:
        rows.append(run(seed, args.budgets, args.batch_size, args.width, args.depth, args.lr, args.eval_samples))
        final = rows[-1]["budgets"][str(max(args.budgets))]
        print(f"seed {seed}: gradient relative error " + ", ".join(
            f"{m} {final[m]['gradient_relative_error']:.3f}" for m in METHODS), flush=True)
    write_report(args.out, config, rows)


def write_report(out: str, config: dict, rows: list[dict]) -> None:
    summary = summarise(rows)
    write_json(f"{out}.json", {"config": config, "summary": summary, "seeds": rows})
    with atomic_path(f"{out}.md") as tmp:
        tmp.write_text(markdown(config, rows, summary))
    print(markdown(config, rows, summary))


if __name__ == "__main__":
    main()
