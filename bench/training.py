"""training: optimizer steps per second, train.precision=fp32 against auto, on the committed configs' networks.

Per config in training/configs/ (its networks, batch size and crop sizes; random weights, batches of random
pixels of the config's shapes: a step costs the same whatever the pixels), two recipes side by side in one
process: `fp32` and `auto` (what train.precision=auto resolves to here: bf16 autocast with channels_last
where the CPU has amx_bf16 or avx512_bf16, else fp32). A few warm-up steps each, then alternating timed steps
(common.interleaved); `auto/fp32` is the ratio of the medians (above 1: auto trains that much faster),
`best/best` the ratio of the fastest steps (what a quiet machine approaches when others share it).
The full profile also times `bf16 NCHW` (bf16 without channels_last), which is how channels_last was
chosen per family (Recipe.channels_last).

The full profile then trains each family's committed architecture both ways for the same number of steps
on generated data and compares the held-out figures (bench/training_quality.py).
"""
from __future__ import annotations

from typing import Any, Callable

from .common import REPO, Profile, interleaved, median_ms, table

CONFIGS = ("srresnet-x4", "colorize", "fashion", "sneaker2boot", "srgan-x4")


def load(name: str):
    """The committed config, on the CPU; srgan-x4 without its init checkpoint and with the offline content loss
    unless torchvision's VGG19 file is there."""
    from training.config import load_config
    from training.losses import default_vgg19_path

    overrides = ["train.device=cpu"]
    if name == "srgan-x4":
        overrides += ["loss.init_from=null"]
        if not default_vgg19_path().is_file():
            overrides += ["loss.content=feature_matching"]
    return load_config(REPO / "training" / "configs" / f"{name}.yaml", overrides)


def fake_batch(cfg) -> dict[str, Any]:
    """One global batch of the config's shapes, random pixels in [-1, 1] (and labels)."""
    import torch

    g = torch.Generator().manual_seed(0)
    n, m, d = cfg.train.batch_size, cfg.model, cfg.data
    rand = lambda *shape: torch.rand(*shape, generator=g) * 2 - 1  # noqa: E731
    if cfg.family == "srgan":
        hr, s = int(d["hr_size"]), int(d["scale"])
        return {"lr": rand(n, m.generator.in_channels, hr // s, hr // s), "hr": rand(n, m.generator.out_channels, hr, hr)}
    if cfg.family == "pix2pix":
        c = int(d["crop_size"])
        return {"A": rand(n, m.generator.in_channels, c, c), "B": rand(n, 3, c, c)}
    if cfg.family == "cyclegan":
        c = int(d["image_size"])
        return {"A": rand(n, m.generator.in_channels, c, c), "B": rand(n, m.generator.out_channels, c, c)}
    return {"image": rand(n, m.channels, m.image_size, m.image_size), "label": torch.arange(n) % m.num_classes}


def contender(cfg, name: str, channels_last: bool | None = None) -> Callable[[], None]:
    """One training step of a fresh recipe in precision `name` (fp32 | bf16 | auto), as a callable."""
    import torch
    from training.precision import Precision, resolve
    from training.registry import get_recipe_class

    device = torch.device("cpu")
    precision = Precision(resolve(name, device), "cpu", channels_last=channels_last)
    torch.manual_seed(0)
    recipe = get_recipe_class(cfg.family)(cfg, device, precision=precision)
    batch = recipe.to_device(fake_batch(cfg))
    state = {"step": 0}

    def step() -> None:
        recipe.train_step(batch, state["step"])
        recipe.end_step()
        state["step"] += 1
    return step


def measure(name: str, profile: Profile, log) -> dict[str, Any]:
    from training.precision import resolve
    import torch

    cfg = load(name)
    auto = resolve("auto", torch.device("cpu"))
    arms = {"fp32": contender(cfg, "fp32"), "auto": contender(cfg, "auto")}
    if not profile.quick and auto != "fp32":
        arms["bf16 NCHW"] = contender(cfg, "bf16", channels_last=False)
    rounds = (3, 4) if profile.quick else (5, 20)
    budget = 10.0 if profile.quick else 60.0
    samples = interleaved(arms, min_rounds=rounds[0], max_rounds=rounds[1], budget_s=budget,
                          warmup=1 if profile.quick else 2)
    ms = {k: median_ms(v) for k, v in samples.items()}
    best = {k: min(v) for k, v in samples.items()}
    row = {"config": name, "family": cfg.family, "batch": cfg.train.batch_size, "auto_is": auto,
           "ms": ms, "steps_per_s": {k: 1e3 / v for k, v in ms.items()}, "rounds": len(samples["fp32"]),
           "auto_vs_fp32": ms["fp32"] / ms["auto"], "auto_vs_fp32_best": best["fp32"] / best["auto"],
           "samples_s": samples}
    if "bf16 NCHW" in ms:
        row["channels_last_gain"] = ms["bf16 NCHW"] / ms["auto"]
    log(f"  {name:13s} fp32 {ms['fp32']:7.0f} ms  auto ({auto}) {ms['auto']:7.0f} ms  x{row['auto_vs_fp32']:.2f}")
    return row


def run(models, profile: Profile, log=print) -> dict[str, Any]:
    import torch
    from core.cpu import reported_flags
    from training.precision import resolve

    torch.manual_seed(0)
    names = CONFIGS[:4] if profile.name == "smoke" else CONFIGS
    result: dict[str, Any] = {"cpu_flags": reported_flags(), "torch": str(torch.__version__),
                              "threads": torch.get_num_threads(), "auto": resolve("auto", torch.device("cpu")),
                              "speed": [measure(n, profile, log) for n in names]}
    if not profile.quick:
        from .training_quality import compare_all
        result["quality"] = compare_all(log=log)
    return result


def report(res: dict[str, Any]) -> str:
    lines = [f"CPU flags: {', '.join(res['cpu_flags']) or '-'}; torch {res['torch']}, {res['threads']} threads; "
             f"train.precision=auto -> {res['auto']}"]
    nchw = any("channels_last_gain" in r for r in res["speed"])
    headers = ["config", "family", "batch", "rounds", "fp32 steps/s", "auto steps/s", "auto/fp32", "best/best"]
    headers += ["bf16 NCHW steps/s", "channels_last gain"] if nchw else []
    rows = []
    for r in res["speed"]:
        sps = r["steps_per_s"]
        row = [r["config"], r["family"], r["batch"], r["rounds"], f"{sps['fp32']:.3f}", f"{sps['auto']:.3f}",
               f"x{r['auto_vs_fp32']:.2f}", f"x{r['auto_vs_fp32_best']:.2f}"]
        if nchw:
            row += [f"{sps['bf16 NCHW']:.3f}" if "bf16 NCHW" in sps else "-",
                    f"x{r['channels_last_gain']:.2f}" if "channels_last_gain" in r else "-"]
        rows.append(row)
    lines.append(table(headers, rows))
    if res.get("quality"):
        from .training_quality import quality_table
        lines.append(quality_table(res["quality"]))
    return "\n".join(lines)
