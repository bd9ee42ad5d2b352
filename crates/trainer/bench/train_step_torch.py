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


def sync(device):
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_case(name, threads, device):
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig

    torch.set_num_threads(threads)
    case = CASES[name]
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
    print(json.dumps({
        "name": name,
        "step_ms_mean": sum(times) / len(times),
        "step_ms_min": min(times),
        "cpu_ms_per_step": (time.process_time() - cpu_start) * 1e3 / case["steps"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_device_mib": (torch.cuda.max_memory_allocated() / 2**20
                            if device.startswith("cuda") else None),
        "trainable_params": sum(p.numel() for p in params),
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
