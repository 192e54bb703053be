"""CPU throughput of the plain-PyTorch renderer; writes JSON (default ``data/benchmarks/render.json``).

Measured in one run (so ratios between rows are meaningful on a shared machine), forward
only under ``torch.no_grad()``, batched, images per second (median over repeats):

- the synthetic head mesh (``megafr.face3d.headmesh`` when importable, else an icosphere
  of comparable size: the JSON says which) at 64 px and 256 px, photo and geometry mode;
- a FLAME-sized mesh (a level-5 icosphere trimmed to FLAME's 9976 faces, ~5k vertices) at
  256 px, photo mode;
- photo mode forward + backward (gradients to vertices and albedo) for the head at 64 px,
  the setting of the 3D network's training.

Runs with one torch thread unless told otherwise (see DEFAULT_THREADS). The head fills
most of the frame (orthographic camera, as in the synthetic data).
Usage: ``python benchmarks/bench_render.py [PATH] [--batch B] [--repeats R] [--threads T]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from megafr.face3d.render import DEFAULT_GEOMETRY_SH, OrthoCamera, Renderer, icosphere
from megafr.fileio import write_json

DEFAULT_OUT = "data/benchmarks/render.json"
FLAME_VERTICES, FLAME_FACES = 5023, 9976  # FLAME 2020 mesh size
FILL = 0.85  # the mesh's larger half-extent maps to this NDC radius
FALLBACK_SUBDIVISIONS = 4  # icosphere with 2562 vertices / 5120 faces when the head mesh is unavailable
FLAME_SIZED_SUBDIVISIONS = 5  # 10242 vertices / 20480 faces before trimming
WARMUP = 1  # untimed calls per row
# One thread by default: on the shared 2-core development machine, torch's default of 2 OpenMP
# threads made every op 40-100x slower whenever other jobs held a core (threads spin-waiting on
# each other); one thread gives stable, comparable numbers. Pass --threads 0 for torch's default.
DEFAULT_THREADS = 1


def head_mesh() -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        from megafr.face3d import headmesh
    except ImportError:
        verts, faces = icosphere(FALLBACK_SUBDIVISIONS)
        return verts, faces, f"icosphere level {FALLBACK_SUBDIVISIONS} (headmesh not importable)"
    mesh = headmesh.build_mesh()
    return (torch.as_tensor(mesh.vertices, dtype=torch.float32), torch.as_tensor(mesh.faces, dtype=torch.long),
            "megafr.face3d.headmesh.build_mesh()")


def flame_sized_mesh() -> tuple[torch.Tensor, torch.Tensor]:
    """The FLAME_FACES triangles of a fine icosphere nearest its +z pole (a front cap), reindexed."""
    verts, faces = icosphere(FLAME_SIZED_SUBDIVISIONS)
    centroid_z = verts[faces].mean(1)[:, 2]
    keep = faces[torch.argsort(centroid_z, descending=True)[:FLAME_FACES]]
    used, remapped = torch.unique(keep, return_inverse=True)
    return verts[used], remapped


def centred(verts: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Vertices centred at the origin and the orthographic scale that makes them fill FILL of the frame."""
    centre = (verts.amax(0) + verts.amin(0)) / 2
    verts = verts - centre
    half_extent = float(verts[:, :2].abs().max())
    return verts, FILL / half_extent


def time_row(verts, faces, size, batch, repeats, mode="photo", backward=False, device="cpu") -> dict:
    """One row: images/s of ``batch`` renderings per call on ``device`` (median over ``repeats``)."""
    device = torch.device(device)
    verts, scale = centred(verts)
    generator = torch.Generator().manual_seed(0)
    vertices = verts[None].repeat(batch, 1, 1).to(device)
    camera = OrthoCamera(torch.full((batch,), scale, device=device), torch.zeros(batch, 2, device=device))
    albedo = torch.rand(batch, verts.shape[0], 3, generator=generator).to(device)
    sh = DEFAULT_GEOMETRY_SH[None].repeat(batch, 1, 1).to(device)
    renderer = Renderer(faces, size).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    kwargs = dict(mode=mode) if mode == "geometry" else dict(mode=mode, albedo=albedo, sh=sh)

    def call():
        if backward:
            v = vertices.clone().requires_grad_()
            a = albedo.clone().requires_grad_()
            renderer(v, camera, mode="photo", albedo=a, sh=sh).image.square().mean().backward()
        else:
            with torch.no_grad():
                renderer(vertices, camera, **kwargs)
        sync()

    for _ in range(WARMUP):
        call()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    with torch.no_grad():
        coverage = float(renderer(vertices[:1], OrthoCamera(camera.scale[:1], camera.translation[:1]),
                                  mode="geometry").mask.mean())
    median = statistics.median(seconds)
    return {
        "image_size": size, "mode": mode, "backward": backward, "batch": batch,
        "vertices": int(verts.shape[0]), "faces": int(faces.shape[0]),
        "images_per_s": batch / median, "seconds_per_batch_median": median,
        "seconds_per_batch_min": min(seconds), "repeats": repeats, "covered_fraction": coverage,
        "device": str(device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=DEFAULT_OUT, help="JSON file to write")
    parser.add_argument("--batch", type=int, default=16, help="images per renderer call")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per row (median reported)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help="torch threads (0 = torch's default); see DEFAULT_THREADS")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    head_verts, head_faces, head_source = head_mesh()
    flame_verts, flame_faces = flame_sized_mesh()
    rows = {
        "head_64_photo": time_row(head_verts, head_faces, 64, args.batch, args.repeats),
        "head_64_geometry": time_row(head_verts, head_faces, 64, args.batch, args.repeats, mode="geometry"),
        "head_256_photo": time_row(head_verts, head_faces, 256, args.batch, args.repeats),
        "head_256_geometry": time_row(head_verts, head_faces, 256, args.batch, args.repeats, mode="geometry"),
        "flame_sized_256_photo": time_row(flame_verts, flame_faces, 256, args.batch, args.repeats),
        "head_64_photo_forward_backward": time_row(head_verts, head_faces, 64, args.batch, args.repeats,
                                                   backward=True),
    }
    result = {
        "head_mesh": head_source,
        "flame_sized_mesh": f"icosphere level {FLAME_SIZED_SUBDIVISIONS} trimmed to {FLAME_FACES} faces "
                            f"(FLAME: {FLAME_VERTICES} vertices, {FLAME_FACES} faces)",
        "rows": rows,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "device": "cpu",
        "machine": {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "platform": platform.platform()},
        "note": "forward under no_grad unless backward is true; timings are noisy on a shared machine",
    }
    path = write_json(args.out, result)
    for name, row in rows.items():
        print(f"{name:34s} {row['images_per_s']:8.1f} images/s  ({row['faces']} faces, {row['image_size']} px)")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
