"""CelebA input pipeline vs training step: images/s on this machine, one JSON line.

Workload (Pezeshki et al. 2021, Sec. 5): JPEG decode, centre crop 178, resize, ImageNet
normalisation, batches of 128, on the synthetic CelebA-format fixture (178 × 218 JPEGs, the size of
the aligned release).

* ours: :func:`ntkdyn.data.celeba.iterate_batches` (thread pool, bounded prefetch) at 224 px (the
  paper's size) and at 32 px (the ``--quick`` size);
* peer: the same transform in a plain single-threaded loop (what a ``num_workers=0`` data loader
  does), same images, same order;
* the model's training step (:func:`ntkdyn.train.dataparallel.make_train_step`, ERM, Adam):
  ResNet-50 at 224 px (the paper's model) and ResNet-18 of width 8 at 32 px (``--quick``),
  timed after compilation.

The ratio ``pipeline / train`` says whether the input pipeline can keep the model fed.

    python benchmarks/celeba_pipeline.py [--images 512] [--workers 8] [--train-batch 16] [--train-steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np


def pipeline_rate(split, size: int, workers: int, batch: int) -> float:
    from ntkdyn.data.celeba import iterate_batches

    t = time.perf_counter()
    n = sum(
        len(b["index"])
        for b in iterate_batches(
            split,
            np.arange(len(split)),
            batch_size=batch,
            image_size=size,
            workers=workers,
            prefetch=2,
        )
    )
    return n / (time.perf_counter() - t)


def sequential_rate(split, size: int) -> float:
    from ntkdyn.data.celeba import load_image

    t = time.perf_counter()
    for p in split.paths:
        load_image(p, size)
    return len(split) / (time.perf_counter() - t)


def train_rate(
    arch: str, width: int, size: int, batch: int, steps: int, bf16: bool = False
) -> tuple[float, float]:
    import jax
    import jax.numpy as jnp
    import optax

    from ntkdyn.models.resnet import RESNET_ARCHS, init_resnet
    from ntkdyn.objectives import ERM
    from ntkdyn.train.dataparallel import (
        data_mesh,
        init_train_state,
        make_train_step,
        replicate,
        shard_batch,
    )

    model = RESNET_ARCHS[arch](width=width, dtype=jnp.bfloat16 if bf16 else jnp.float32)
    opt = optax.adam(1e-5)
    mesh = data_mesh()
    state = replicate(init_train_state(init_resnet(model, jax.random.PRNGKey(0), size), opt), mesh)
    step = make_train_step(model.apply, opt, ERM())
    rng = np.random.default_rng(0)
    batch_arrays = shard_batch(
        {
            "image": rng.normal(size=(batch, size, size, 3)).astype(np.float32),
            "y": rng.integers(0, 2, batch).astype(np.int32),
            "group": rng.integers(0, 4, batch).astype(np.int32),
        },
        mesh,
    )
    t = time.perf_counter()
    state, m = step(state, batch_arrays)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(steps):
        state, m = step(state, batch_arrays)
    jax.block_until_ready(m)
    return batch * steps / (time.perf_counter() - t), compile_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512, help="fixture images timed")
    parser.add_argument("--workers", type=int, default=8, help="decoding threads")
    parser.add_argument("--batch", type=int, default=128, help="pipeline batch size")
    parser.add_argument(
        "--train-batch", type=int, default=16, help="ResNet-50 training batch on this CPU"
    )
    parser.add_argument("--train-steps", type=int, default=3, help="timed ResNet-50 steps")
    parser.add_argument(
        "--bf16", action="store_true", help="ResNet-50 computes in bfloat16 (GPUs; params float32)"
    )
    args = parser.parse_args()

    from ntkdyn.data.celeba import load_celeba
    from ntkdyn.data.celeba_fixture import write_celeba_fixture

    with tempfile.TemporaryDirectory() as tmp:
        write_celeba_fixture(tmp, seed=0, n_train=args.images, n_val=4, n_test=4)
        split = load_celeba(tmp).splits["train"]
        sequential_rate(split, 224)  # warm the page cache for both
        seq224 = sequential_rate(split, 224)
        ours224 = pipeline_rate(split, 224, args.workers, args.batch)
        seq32 = sequential_rate(split, 32)
        ours32 = pipeline_rate(split, 32, args.workers, args.batch)
    r50, r50_compile = train_rate(
        "resnet50", 64, 224, args.train_batch, args.train_steps, bf16=args.bf16
    )
    r18, r18_compile = train_rate("resnet18", 8, 32, 32, 20)
    print(
        json.dumps(
            {
                "benchmark": "celeba_pipeline",
                "machine": f"{os.cpu_count()}-core {platform.machine()} CPU",
                "images": args.images,
                "workers": args.workers,
                "pipeline_224_img_s": round(ours224, 1),
                "sequential_224_img_s": round(seq224, 1),
                "pipeline_vs_sequential_224": round(ours224 / seq224, 2),
                "pipeline_32_img_s": round(ours32, 1),
                "sequential_32_img_s": round(seq32, 1),
                "pipeline_vs_sequential_32": round(ours32 / seq32, 2),
                "train_resnet50_224_img_s": round(r50, 2),
                "train_resnet50_batch": args.train_batch,
                "train_resnet50_dtype": "bfloat16" if args.bf16 else "float32",
                "backend": __import__("jax").default_backend(),
                "train_resnet50_compile_s": round(r50_compile, 1),
                "train_resnet18w8_32_img_s": round(r18, 1),
                "train_resnet18w8_compile_s": round(r18_compile, 1),
                "pipeline_over_train_224": round(ours224 / r50, 1),
                "pipeline_over_train_32": round(ours32 / r18, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
