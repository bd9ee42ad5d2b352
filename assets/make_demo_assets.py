#!/usr/bin/env python3
"""Generates the template of loraflow's demo model (`assets/tiny-sd/`).

    python3 -m venv /work/venv-ref
    /work/venv-ref/bin/pip install torch diffusers transformers safetensors pillow regex
    /work/venv-ref/bin/python assets/make_demo_assets.py

It is deterministic (fixed seed). It writes a Stable Diffusion 1.5-shaped pipeline at a tiny
size with randomly initialised weights (configs, text encoder, tokenizer, scheduler);
`crates/trainer/examples/train_shapes_world.rs` then trains its VAE and UNet on the shapes
world (see `assets/tiny-sd/README.md`). The demo dataset (`assets/demo-dataset/`) is written by
`crates/trainer/examples/make_demo_dataset.rs`.
"""

import json
import os
import shutil
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "crates", "trainer", "fixtures"))
import clip_bpe  # noqa: E402

from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionPipeline,  # noqa: E402
                       UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

SEED = 20240601

CORPUS = """
a red circle on a white background. a blue square on a white background. a green triangle.
a yellow star on a black background. an orange circle on a blue background, wide.
a purple square on a yellow background, tall. a red triangle on a black background.
a blue circle on a yellow background. simple flat shapes, bright colours, centred, plain.
a photo of a dog, a cat, a house, a tree, a car, a person, a flower, the sky, the sea.
high quality, detailed, sharp, soft light, blurry, low quality, painting, drawing, sketch.
"""


def make_model():
    out = os.path.join(HERE, "tiny-sd")
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
    for f in ("model_index.json",):
        if os.path.exists(os.path.join(out, f)):
            os.remove(os.path.join(out, f))
    tok_dir = os.path.join(out, "tokenizer")
    vocab = clip_bpe.write(tok_dir, CORPUS, 1000)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)

    torch.manual_seed(SEED)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=1000, hidden_size=64, intermediate_size=256, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=77, hidden_act="quick_gelu",
        layer_norm_eps=1e-5, bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
        projection_dim=64)).eval()
    # SD1.5's layout: four VAE levels (8× smaller latents), cross-attention in the UNet's upper
    # level, a 77-token CLIP text encoder with quick_gelu.
    vae = AutoencoderKL(
        block_out_channels=[16, 32, 32, 32], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4, norm_num_groups=8, layers_per_block=1, sample_size=64).eval()
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4,
        out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=64,
        attention_head_dim=4, norm_num_groups=8).eval()
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe = pipe.to(torch.float16)
    pipe.save_pretrained(out, safe_serialization=True)
    # transformers also writes tokenizer.json; the vocab and merges are the source of truth.
    params = {n: sum(p.numel() for p in m.parameters())
              for n, m in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder))}
    with open(os.path.join(out, "parameters.json"), "w") as f:
        json.dump({"seed": SEED, "parameters": params, "dtype": "float16",
                   "tokenizer_entries": len(vocab)}, f, indent=2)
        f.write("\n")
    print("tiny-sd:", params)


if __name__ == "__main__":
    make_model()
