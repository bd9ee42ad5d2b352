#!/usr/bin/env python3
"""Checks that diffusers loads `assets/tiny-sd` as it is and that it draws the shapes world.

    /work/venv-ref/bin/python assets/check_tiny_sd.py [out.png [model folder]]

Renders one picture per base-world prompt with diffusers' own `StableDiffusionPipeline`
(DDIM, 20 steps, guidance 4, fp32 on the CPU) and writes them side by side. Not part of CI.
"""

import os
import sys

import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
PROMPTS = [
    f"a {c} {s} on a {b} background"
    for c in ("red", "green", "blue", "yellow")
    for s, b in (("circle", "white"), ("square", "black"), ("triangle", "white"))
]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/tiny-sd-check.png"
    pipe = StableDiffusionPipeline.from_pretrained(
        sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "tiny-sd"), torch_dtype=torch.float32, safety_checker=None,
        requires_safety_checker=False)
    images = []
    for i, prompt in enumerate(PROMPTS):
        g = torch.Generator().manual_seed(1000 + i)
        images.append(pipe(prompt, num_inference_steps=20, guidance_scale=4.0, height=64,
                           width=64, generator=g).images[0])
    sheet = Image.new("RGB", (64 * len(images), 64))
    for i, im in enumerate(images):
        sheet.paste(im, (64 * i, 0))
    sheet.save(out)
    print("wrote", out, "for", PROMPTS)


if __name__ == "__main__":
    main()
