"""Write docs/contact_sheet.png: one row per Galaxy10 class, 8 synthetic
galaxies each, 64 px shown x2 -- what demo users will see.

    python bench/contact_sheet.py [--seed 42] [--out docs/contact_sheet.png]
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from core.data.synthetic import GALAXY10_CLASSES, draw_labels, render_galaxy  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--seed", type=int, default=42)
ap.add_argument("--per-class", type=int, default=8)
ap.add_argument("--size", type=int, default=64)
ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "contact_sheet.png"))
args = ap.parse_args()

# the first examples of each class from the default 3000-galaxy set
labels = draw_labels(3000, args.seed)
S, zoom, pad, label_w = args.size, 2, 4, 170
cell = S * zoom + pad
sheet = Image.new("RGB", (label_w + cell * args.per_class + pad, cell * 10 + pad), (20, 20, 24))
draw, font = ImageDraw.Draw(sheet), ImageFont.load_default()
for c, name in enumerate(GALAXY10_CLASSES):
    rows = np.flatnonzero(labels == c)[: args.per_class]
    y = pad + c * cell
    draw.text((6, y + S * zoom // 2 - 12), f"{c} {name}", fill=(230, 230, 230), font=font)
    draw.text((6, y + S * zoom // 2 + 2), f"rows {rows[0]}..", fill=(140, 140, 140), font=font)
    for j, i in enumerate(rows):
        img = Image.fromarray(render_galaxy(c, args.seed, int(i), S)).resize((S * zoom, S * zoom), Image.NEAREST)
        sheet.paste(img, (label_w + j * cell, y))
Path(args.out).parent.mkdir(parents=True, exist_ok=True)
# 256 colours keep the committed PNG small; dithering would only add noise
sheet.quantize(160, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(args.out, optimize=True)
print(f"wrote {args.out} ({Path(args.out).stat().st_size // 1024} KB)")
