"""Write an image folder of the study's shape for timing runs: train/, val/, test/ of class
folders holding JPEG files (random textures with a class-coloured square), in parallel.

    python benchmarks/make_folder.py --out /tmp/birds-like --images 30000 --classes 25 --size 300
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import click
import numpy as np

SPLITS = {"train": 0.7, "val": 0.15, "test": 0.15}


def _write(job: tuple[str, int, int, int, int]) -> None:
    from PIL import Image

    path, label, classes, size, seed = job
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 160, (size, size, 3), dtype=np.uint8)
    y, x = rng.integers(0, size // 2, 2)
    pixels[y : y + size // 3, x : x + size // 3, label % 3] = 100 + 150 * label // classes
    Image.fromarray(pixels).save(path, quality=90)


@click.command(context_settings={"show_default": True})
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder to create.")
@click.option("--images", type=click.IntRange(min=30), default=30000, help="Images in all.")
@click.option("--classes", type=click.IntRange(min=2), default=25, help="Class folders.")
@click.option("--size", type=click.IntRange(min=8), default=300, help="Pixels square of each JPEG.")
def main(out: str, images: int, classes: int, size: int) -> None:
    root = Path(out)
    jobs: list[tuple[str, int, int, int, int]] = []
    for split, share in SPLITS.items():
        for i in range(int(images * share)):
            label = i % classes
            folder = root / split / f"class{label:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            jobs.append((str(folder / f"{split}{i:06d}.jpg"), label, classes, size, len(jobs)))
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_write, jobs, chunksize=256))
    click.echo(f"{len(jobs)} JPEGs of {size}x{size} in {classes} classes under {root}")


if __name__ == "__main__":
    main()
