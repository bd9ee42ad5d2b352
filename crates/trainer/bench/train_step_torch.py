#!/usr/bin/env python3
"""The PyTorch reference for `benches/train_step.rs`: the same LoRA training step (fp32,
min-SNR-5, offset noise, rank-16 attention adapters via PEFT, global-norm clipping, AdamW) on
the same UNet configurations, with the same thread count.

    /work/venv-ref/bin/python crates/trainer/bench/train_step_torch.py --threads 2 \\
        > crates/trainer/bench/torch_reference.json
    # Add or replace some cases in the existing file (each records its thread count):
    /work/venv-ref/bin/python crates/trainer/bench/train_step_torch.py --threads 2 \\
        --only sdxl,sdxl-gc,sdxl-bf16 --update crates/trainer/bench/torch_reference.json

Each configuration runs in a fresh subprocess so that its peak RSS is its own. The `sdxl` cases
are an SDXL-shaped UNet at reduced width with SDXL's conditioning widths (2048-wide context,
1280-wide pooled text, six time ids); `sdxl-gc` enables diffusers' gradient checkpointing,
`sdxl-bf16` holds the frozen UNet in bf16 with fp32 adapters under CPU/CUDA bf16 autocast.

The `flux` cases are diffusers' `FluxTransformer2DModel` at reduced size (FLUX.1's 128-wide
heads, rotary axes, token widths and guidance embedding; 4 heads, 2 double + 4 single blocks)
trained as the Rust bench trains it: flow matching with sd-scripts' `flux_shift` timesteps,
guidance 1.0, rank-16 PEFT adapters on the modules `FLUX_TARGETS` selects, global-norm
clipping, AdamW; batch 1, a 16x32x32 latent packed 2x2, 128 text tokens. `flux` holds the
base in bf16 (fp32 adapters, bf16 autocast), `flux-f32` in fp32.

    /work/venv-ref/bin/python crates/trainer/bench/train_step_torch.py --threads 2 \\
        --only flux,flux-f32 --update crates/trainer/bench/torch_reference.json
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

CASES = {
    "tiny": dict(
        config=dict(block_out_channels=(32, 64), layers_per_block=2, cross_attention_dim=32,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), sample_size=32),
        batch=2, latent=32, tokens=77, steps=10),
    "sd15": dict(
        config=dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                    cross_attention_dim=768, attention_head_dim=8, sample_size=64),
        batch=1, latent=32, tokens=77, steps=3),
}
SDXL_REDUCED = dict(
    addition_embed_type="text_time", addition_embed_type_num_heads=64, addition_time_embed_dim=256,
    attention_head_dim=(2, 4, 8), block_out_channels=(128, 256, 512), cross_attention_dim=2048,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    layers_per_block=2, projection_class_embeddings_input_dim=2816, sample_size=128,
    transformer_layers_per_block=(1, 2, 4),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    use_linear_projection=True)
for _name, _extra in [("sdxl", {}), ("sdxl-gc", dict(checkpointing=True)),
                      ("sdxl-bf16", dict(bf16_base=True))]:
    CASES[_name] = dict(config=SDXL_REDUCED, batch=1, latent=32, tokens=77, steps=3, **_extra)
# The same config as `flux_reduced()` in benches/train_step.rs.
FLUX_REDUCED = dict(
    attention_head_dim=128, axes_dims_rope=(16, 56, 56), guidance_embeds=True, in_channels=64,
    joint_attention_dim=4096, num_attention_heads=4, num_layers=2, num_single_layers=4,
    patch_size=1, pooled_projection_dim=768)
for _name, _bf16 in [("flux", True), ("flux-f32", False)]:
    CASES[_name] = dict(config=FLUX_REDUCED, flux=True, batch=1, latent=32, tokens=128, steps=3,
                        bf16_base=_bf16)
# `flux::lora::FLUX_TARGETS` (module-path suffixes; `*` is one segment).
FLUX_TARGETS = [
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
    "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
    "ff_context.net.2", "single_transformer_blocks.*.proj_mlp",
    "single_transformer_blocks.*.proj_out"]


def sync(device):
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def flux_targets(model):
    """Full names of the linear layers `FLUX_TARGETS` selects, as the Rust trainer matches them
    (patterns anchored at the end of the module path, `*` one segment)."""
    import re

    import torch
    regex = re.compile("(^|.*\\.)(" + "|".join(
        re.escape(p).replace("\\*", "[^.]+") for p in FLUX_TARGETS) + ")$")
    return [n for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and regex.match(n)]


def run_flux_case(name, case, threads, device):
    import math

    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig

    torch.manual_seed(0)
    model = FluxTransformer2DModel(**case["config"]).to(device)
    model.requires_grad_(False)
    if case.get("bf16_base"):
        model.to(torch.bfloat16)
    targets = flux_targets(model)
    model.add_adapter(LoraConfig(r=16, lora_alpha=16, init_lora_weights="gaussian",
                                 target_modules=targets))
    if case.get("bf16_base"):
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.data = p.data.float()
    model.train()
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16,
                              enabled=bool(case.get("bf16_base")))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    cfg = case["config"]
    b, s, tokens = case["batch"], case["latent"], case["tokens"]
    channels = cfg["in_channels"] // 4
    latents = torch.randn(b, channels, s, s, device=device)
    text = torch.randn(b, tokens, cfg["joint_attention_dim"], device=device)
    pooled = torch.randn(b, cfg["pooled_projection_dim"], device=device)
    img_ids = FluxPipeline._prepare_latent_image_ids(b, s // 2, s // 2, device, torch.float32)
    txt_ids = torch.zeros(tokens, 3, device=device)
    guidance = torch.full((b,), 1.0, device=device)
    image_tokens = (s // 2) * (s // 2)
    # sd-scripts' flux_shift: sigmoid of a normal draw, shifted by mu(image tokens).
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (image_tokens - 256)
    times = []
    for step in range(case["steps"] + 1):
        if step == 1:
            cpu_start = time.process_time()
        start = time.perf_counter()
        t = torch.sigmoid(torch.randn(b, device=device))
        sigma = math.exp(mu) / (math.exp(mu) + (1 / t - 1))
        noise = torch.randn_like(latents)
        sig = sigma.view(b, 1, 1, 1)
        noisy = (1 - sig) * latents + sig * noise
        packed = FluxPipeline._pack_latents(noisy, b, channels, s, s)
        with autocast:
            pred = model(hidden_states=packed, timestep=sigma, guidance=guidance,
                         pooled_projections=pooled, encoder_hidden_states=text,
                         txt_ids=txt_ids, img_ids=img_ids).sample.float()
        pred = FluxPipeline._unpack_latents(pred, s * 8, s * 8, 8)
        loss = torch.nn.functional.mse_loss(pred, noise - latents)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        assert torch.isfinite(loss)
        sync(device)
        if step > 0:
            times.append((time.perf_counter() - start) * 1e3)
    return times, cpu_start, params, len(targets)


def run_case(name, threads, device):
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig

    torch.set_num_threads(threads)
    case = CASES[name]
    if case.get("flux"):
        times, cpu_start, params, adapted = run_flux_case(name, case, threads, device)
        report(name, case, threads, device, times, cpu_start, params, adapted)
        return
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**case["config"]).to(device)
    unet.requires_grad_(False)
    if case.get("bf16_base"):
        unet.to(torch.bfloat16)
    unet.add_adapter(LoraConfig(r=16, lora_alpha=16, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    if case.get("bf16_base"):
        for n, p in unet.named_parameters():
            if "lora_" in n:
                p.data = p.data.float()
    if case.get("checkpointing"):
        unet.enable_gradient_checkpointing()
    unet.train()
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16,
                              enabled=bool(case.get("bf16_base")))
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          num_train_timesteps=1000)
    b, s, tokens = case["batch"], case["latent"], case["tokens"]
    cross = case["config"]["cross_attention_dim"]
    sched.alphas_cumprod = sched.alphas_cumprod.to(device)
    latents = torch.randn(b, 4, s, s, device=device)
    context = torch.randn(b, tokens, cross, device=device)
    added = None
    cfg = case["config"]
    if cfg.get("addition_embed_type") == "text_time":
        pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
        added = {"text_embeds": torch.randn(b, pooled, device=device),
                 "time_ids": torch.tensor([[256.0, 256.0, 0.0, 0.0, 256.0, 256.0]] * b,
                                          device=device)}
    times = []
    for step in range(case["steps"] + 1):
        if step == 1:
            cpu_start = time.process_time()
        start = time.perf_counter()
        noise = torch.randn_like(latents) + 0.05 * torch.randn(b, 4, 1, 1, device=device)
        t = torch.randint(0, 1000, (b,), device=device)
        noisy = sched.add_noise(latents, noise, t)
        with autocast:
            pred = unet(noisy, t, context, added_cond_kwargs=added).sample.float()
        loss = torch.nn.functional.mse_loss(pred, noise, reduction="none").mean(dim=[1, 2, 3])
        acp = sched.alphas_cumprod[t]
        snr = acp / (1 - acp)
        loss = (loss * torch.minimum(snr, torch.full_like(snr, 5.0)) / snr).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        assert torch.isfinite(loss)
        sync(device)
        if step > 0:
            times.append((time.perf_counter() - start) * 1e3)
    report(name, case, threads, device, times, cpu_start, params, None)


def report(name, case, threads, device, times, cpu_start, params, adapted):
    import torch
    print(json.dumps({
        "name": name,
        "step_ms_mean": sum(times) / len(times),
        "step_ms_min": min(times),
        "cpu_ms_per_step": (time.process_time() - cpu_start) * 1e3 / case["steps"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_device_mib": (torch.cuda.max_memory_allocated() / 2**20
                            if device.startswith("cuda") else None),
        "trainable_params": sum(p.numel() for p in params),
        **({"adapted_modules": adapted} if adapted is not None else {}),
        "steps": case["steps"],
        "threads": threads,
    }))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--case", choices=sorted(CASES))
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--only", help="comma-separated cases to run (all by default)")
    ap.add_argument("--update", help="a reference file to add these cases to (or replace them in), in place")
    args = ap.parse_args()
    if args.case:
        run_case(args.case, args.threads, args.device)
        return
    import torch
    names = args.only.split(",") if args.only else list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        sys.exit(f"--only: unknown case(s) {unknown}; expected some of {sorted(CASES)}")
    results = {}
    if args.update:
        with open(args.update) as f:
            old = json.load(f)
        results = old["results"]
    for name in names:
        out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads),
                              "--case", name, "--device", args.device],
                             check=True, capture_output=True, text=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name}: {results[name]['step_ms_mean']:.1f} ms/step", file=sys.stderr)
    if args.update:
        old["results"] = results
        with open(args.update, "w") as f:
            f.write(json.dumps(old, indent=2) + "\n")
        return
    print(json.dumps({
        "torch": torch.__version__, "threads": args.threads, "device": args.device,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
