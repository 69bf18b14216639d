"""Evaluate a trained RI face recogniser (``portrait-engine eval ri``).

Protocols, by ``--data``:

- ``synthetic``: held-out identities (``SyntheticFaces`` split "test", never seen in training)
  plus distractor identities (split "distractor"). Gallery: one clean image per test identity
  and the distractors' images. Probes: the other images of the test identities, down-sampled
  to each ``--resolutions`` side and back up (cross-resolution: high-resolution gallery,
  very-low-resolution probes), as the TinyFace protocol scores them (rank-1/5/20 against
  gallery + distractors). Verification: all probe pairs at the first resolution (VLR to VLR).
- a TinyFace folder (``Probe/``, ``Gallery_Match/``, ``Gallery_Distractor/``): its own
  protocol on its native low-resolution faces (``--max-distractors`` caps the distractors).
- an identity folder tree: the first image of each identity is its gallery image, the others
  are probes, degraded as for ``synthetic``.

Face quality (all protocols): every probe image gets one condition at random (clean, very low
resolution at 8–32 px, or unrecognisable), and error-versus-reject curves over the pairs of
them compare the model's RI with the embedding norm, a CR-FIQA-style score and a random score,
at each ``--fmr`` (default 1e-3 and 1e-2). Pairs of two unrecognisable faces are left out of
the curves and the threshold comes from the impostor pairs without unrecognisable faces (see
:func:`erc_pair_masks`). The AUC of each score at telling clean faces from degraded ones is
reported too.

Writes ``metrics.json``, ``.npy`` embeddings (gallery, probes, quality set), PNG plots (ERC,
ROC, CMC, sample degradations) and, with ``--onnx``, ``model.onnx``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint or training output dir")
    parser.add_argument("--data", required=True, help="'synthetic' or a dataset directory")
    parser.add_argument("--out", required=True, help="directory for metrics, plots, embeddings")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument(
        "--resolutions", type=int, nargs="+", default=[16, 24], help="probe sides in pixels"
    )
    parser.add_argument("--identities", type=int, default=50, help="synthetic: test identities")
    parser.add_argument("--images-per-identity", type=int, default=6, help="synthetic: images")
    parser.add_argument(
        "--distractors", type=int, default=200, help="synthetic: distractor identities"
    )
    parser.add_argument("--max-distractors", type=int, default=None, help="TinyFace: cap")
    parser.add_argument(
        "--fmr",
        type=float,
        nargs="+",
        default=[1e-3, 1e-2],
        help="FMRs fixing the ERC thresholds (the first is the headline and the plot)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--onnx", action="store_true", help="also export model.onnx")
    parser.add_argument("--no-plots", action="store_true")


def _stack(dataset, indices, size):
    import torch
    import torch.nn.functional as F

    images = torch.stack([dataset[int(i)][0] for i in indices])
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
    return images


def _protocol(args, size: int):
    """``(gallery, gallery_labels, probes, probe_labels, native_low_resolution)``; gallery and
    probes are image tensors or datasets."""
    import numpy as np
    import torch

    if args.data == "synthetic":
        from portrait_engine.data.faces import SyntheticFaces

        test = SyntheticFaces(args.identities, args.images_per_identity, size, args.seed, "test")
        first = np.arange(args.identities) * args.images_per_identity
        rest = np.setdiff1d(np.arange(len(test)), first)
        gallery = _stack(test, first, size)
        gallery_labels = test.labels[first]
        if args.distractors:
            distractors = SyntheticFaces(args.distractors, 1, size, args.seed, "distractor")
            gallery = torch.cat([gallery, _stack(distractors, range(args.distractors), size)])
            gallery_labels = np.r_[gallery_labels, np.full(args.distractors, -1)]
        return gallery, gallery_labels, _stack(test, rest, size), test.labels[rest], False
    root = Path(args.data)
    if not root.exists():
        raise FileNotFoundError(f"--data {args.data}: no such file or directory")
    from portrait_engine.data.faces import IdentityFolder, TinyFace
    from portrait_engine.data.faces.tinyface import find_part

    try:
        find_part(root, "probe")
        tinyface = True
    except FileNotFoundError:
        tinyface = False
    if tinyface:
        probes = TinyFace(root, "probe", size=size)
        match = TinyFace(root, "gallery_match", size=size)
        parts = [match]
        try:
            distractors = TinyFace(root, "gallery_distractor", size=size)
            if args.max_distractors is not None and len(distractors) > args.max_distractors:
                keep = range(args.max_distractors)
                distractors = torch.utils.data.Subset(distractors, keep)
                distractors.labels = distractors.dataset.labels[: args.max_distractors]
            parts.append(distractors)
        except FileNotFoundError:
            pass
        gallery = torch.utils.data.ConcatDataset(parts)
        labels = np.concatenate([np.asarray(p.labels) for p in parts])
        return gallery, labels, probes, probes.labels, True
    folder = IdentityFolder(root, size=size)
    first = np.array([np.flatnonzero(folder.labels == c)[0] for c in range(folder.num_classes)])
    rest = np.setdiff1d(np.arange(len(folder)), first)
    if len(rest) == 0:
        raise ValueError(f"--data {args.data}: every identity has one image; no probes left")
    return (
        _stack(folder, first, size),
        folder.labels[first],
        _stack(folder, rest, size),
        folder.labels[rest],
        False,
    )


CONDITIONS = ("clean", "very_low_resolution", "unrecognizable")


def degrade_mixed(images, seed: int):
    """Give every image one condition at random (1/4 clean, 1/2 very low resolution at 8–32
    px, 1/4 unrecognisable); returns ``(images, condition index per image)``."""
    import torch

    from portrait_engine.data.faces import VeryLowResolution, unrecognizable

    g = torch.Generator().manual_seed(seed)
    draw = torch.rand(len(images), generator=g)
    condition = torch.where(draw < 0.25, 0, torch.where(draw < 0.75, 1, 2))
    out = images.clone()
    vlr = VeryLowResolution(8, 32, generator=g)
    for kind, transform in ((1, vlr), (2, lambda x: unrecognizable(x, g))):
        chosen = condition == kind
        if chosen.any():
            out[chosen] = transform(images[chosen])
    return out, condition.numpy()


@dataclass
class ERCPairs:
    """Which pairs of the quality set an error-versus-reject curve uses (see
    :func:`erc_pair_masks`): ``keep`` the pairs it scores, ``threshold_pairs`` those whose
    impostors fix its threshold (both boolean, one per pair)."""

    keep: np.ndarray
    threshold_pairs: np.ndarray
    threshold_from: str
    left_out: str
    both_unrecognizable: np.ndarray
    same: np.ndarray

    def unrecognizable_pairs_auc(self, scores) -> float | None:
        """ROC AUC of genuine against impostor among the pairs of two unrecognisable faces
        (about 0.5: their scores carry no identity); ``None`` without both kinds."""
        from portrait_engine.models.recognizability import evaluation as ev

        pick = self.both_unrecognizable
        same = self.same[pick]
        if same.all() or not same.any():
            return None
        return ev.roc_auc(np.asarray(scores)[pick], same)


def erc_pair_masks(condition, first, second, same) -> ERCPairs:
    """The pairs an ERC over a mixed-quality set scores, and those that fix its threshold.

    ``condition`` ``(N,)`` holds each sample's index in :data:`CONDITIONS`; ``first``,
    ``second``, ``same`` ``(M,)`` describe the pairs. Pairs of *two* unrecognisable faces are
    left out altogether: those faces gather at the UI centre, so they match each other
    whatever their identities (``unrecognizable_pairs_auc`` measures it; about 0.5 on the
    demo), and their genuine pairs would count as successes won by chance, rewarding a quality
    score for *keeping* them, while their impostor pairs (the false matches that make them a
    hazard) would push the threshold to the top of the score range. The threshold is fixed on
    the impostor pairs without an unrecognisable face. Pairs of an unrecognisable face with a
    recognisable one stay: their genuine pairs fail, and rejecting them is what a quality score
    is for. A set with fewer than two impostor pairs left falls back on all pairs.
    """
    condition = np.asarray(condition)
    first, second, same = np.asarray(first), np.asarray(second), np.asarray(same, dtype=bool)
    unrecognizable = condition == CONDITIONS.index("unrecognizable")
    both = unrecognizable[first] & unrecognizable[second]
    recognisable_pair = ~unrecognizable[first] & ~unrecognizable[second]
    keep = ~both
    if int((~same & recognisable_pair).sum()) >= 2:
        return ERCPairs(
            keep,
            recognisable_pair,
            "impostor pairs without unrecognisable faces",
            f"{int(both.sum())} pairs of two unrecognisable faces",
            both,
            same,
        )
    everything = np.ones_like(same)
    return ERCPairs(
        everything,
        everything,
        "all impostor pairs (too few without unrecognisable faces)",
        "none (too few pairs)",
        both,
        same,
    )


def eval_main(args: argparse.Namespace, console) -> int:
    import numpy as np
    import torch

    from portrait_engine.data.faces.degrade import resample
    from portrait_engine.models.recognizability import evaluation as ev
    from portrait_engine.models.recognizability.export import (
        compute_embeddings,
        export_embeddings,
        export_onnx,
    )
    from portrait_engine.models.recognizability.model import load_for_inference

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_for_inference(args.checkpoint, map_location=device)
    size = model.config.image_size
    gallery, gallery_labels, probes, probe_labels, native = _protocol(args, size)

    def embed(data, transform=None):
        return compute_embeddings(model, data, args.batch_size, device, transform)

    metrics: dict = {
        "checkpoint": str(args.checkpoint),
        "data": args.data,
        "image_size": size,
        "gallery_size": int(len(gallery_labels)),
        "probes": int(len(probe_labels)),
        "identities": int(len(np.unique(probe_labels))),
        "chance_rank1": 1.0 / len(gallery_labels),
    }
    g = embed(gallery)
    export_embeddings(out, g["embedding"], gallery_labels, g["ri"], prefix="gallery_")
    resolutions = ["native"] if native else list(args.resolutions)
    cmcs, rocs, identification, verification = {}, {}, {}, {}
    for resolution in resolutions:
        name = "native" if native else f"{resolution}px"
        transform = (
            None if native else (lambda x, r=resolution: resample(x, r, "bicubic", "bilinear"))
        )
        p = embed(probes, transform)
        export_embeddings(out, p["embedding"], probe_labels, p["ri"], prefix=f"probe_{name}_")
        ranks = ev.mate_ranks(p["embedding"], probe_labels, g["embedding"], gallery_labels)
        identification[name] = {f"rank{k}": float((ranks <= k).mean()) for k in (1, 5, 20)}
        cmcs[name] = ev.cumulative_match(ranks, min(20, len(gallery_labels)))
        scores, same, _, _ = ev.pair_scores(p["embedding"], probe_labels, max_pairs=2_000_000)
        verification[name] = ev.verification(scores, same)
        rocs[name] = ev.roc_curve(scores, same)
    metrics["identification"] = identification
    metrics["verification"] = verification

    # face quality: a mixed set of clean, very-low-resolution and unrecognisable probes
    quality_images = None
    if isinstance(probes, torch.Tensor):
        quality_images, condition = degrade_mixed(probes, args.seed + 1)
        q = embed(quality_images)
    else:  # native low-resolution data: its own quality spread, no added degradation
        q, condition = embed(probes), np.ones(len(probe_labels), dtype=np.int64)
    export_embeddings(out, q["embedding"], probe_labels, q["ri"], prefix="quality_")
    np.save(out / "quality_conditions.npy", condition)
    scores, same, first, second = ev.pair_scores(q["embedding"], probe_labels, 2_000_000)
    rng = np.random.default_rng(args.seed)
    sample_quality = {
        "RI (predicted)": q["ri"],
        "embedding norm": ev.embedding_norm_quality(q["embedding"]),
        "CR-FIQA-style (labels)": ev.crfiqa_quality(q["embedding"], probe_labels),
        "random": rng.uniform(size=len(probe_labels)),
    }
    masks = erc_pair_masks(condition, first, second, same)
    quality: dict = {
        "threshold_from": masks.threshold_from,
        "pairs_left_out": masks.left_out,
        "unrecognizable_pairs_auc": masks.unrecognizable_pairs_auc(scores),
    }
    keep, threshold_pairs = masks.keep, masks.threshold_pairs[masks.keep]
    kept_scores, kept_same = scores[keep], same[keep]
    n_impostors = int((~kept_same & threshold_pairs).sum())
    by_fmr, curves = {}, {}
    for requested in args.fmr:
        fmr = requested
        if n_impostors * fmr < 1:
            fmr = min(0.5, 10 ** np.ceil(np.log10(1 / n_impostors)))
            console.print(f"[yellow]too few impostor pairs for FMR {requested:g}; using {fmr:g}[/]")
        by_fmr[fmr] = {
            name: ev.error_versus_reject(
                kept_scores,
                kept_same,
                ev.pair_quality(values, first, second)[keep],
                fmr,
                None,
                threshold_pairs,
            )
            for name, values in sample_quality.items()
        }
    fmr, curves = next(iter(by_fmr.items()))
    quality["fmr"] = float(fmr)
    quality["erc_area"] = {k: c.area for k, c in curves.items()}
    quality["erc_area_by_fmr"] = {
        f"{f:g}": {k: c.area for k, c in cs.items()} for f, cs in by_fmr.items()
    }
    quality["fnmr"] = {
        k: {f"reject {f:.2f}": float(v) for f, v in zip(c.fractions, c.fnmr, strict=True)}
        for k, c in curves.items()
    }
    present = [CONDITIONS[c] for c in sorted(set(condition.tolist()))]
    quality["mean_ri"] = {
        CONDITIONS[c]: float(q["ri"][condition == c].mean())
        for c in sorted(set(condition.tolist()))
    }
    if "clean" in present and len(present) > 1:
        # AUC: the probability that a score ranks a clean face above a degraded one
        clean = condition == 0
        quality["clean_vs_degraded_auc"] = {
            name: ev.roc_auc(values, clean) for name, values in sample_quality.items()
        }
        for kind in present[1:]:
            pick = (condition == 0) | (condition == CONDITIONS.index(kind))
            quality[f"clean_vs_{kind}_auc"] = {
                name: ev.roc_auc(values[pick], clean[pick])
                for name, values in sample_quality.items()
            }
    metrics["quality"] = quality

    if not args.no_plots:
        _plot(args, out, curves, rocs, cmcs, probes, quality_images, console)
    if args.onnx:
        try:
            metrics["onnx"] = str(export_onnx(model.cpu(), out / "model.onnx"))
        except ImportError as error:
            console.print(f"[yellow]ONNX export skipped: {error}[/]")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _print_summary(metrics, console)
    console.print(f"wrote {out}")
    return 0


def _plot(args, out, curves, rocs, cmcs, probes, quality_images, console) -> None:
    import torch

    try:
        from portrait_engine.models.recognizability import plots

        plots.plot_erc(curves, out / "erc.png", f"ERC, mixed-quality probes ({args.data})")
    except ImportError as error:
        console.print(f"[yellow]plots skipped: {error}[/]")
        return
    plots.plot_roc(rocs, out / "roc.png", "verification, probe pairs")
    plots.plot_cmc(cmcs, out / "cmc.png", "identification against gallery + distractors")
    if quality_images is not None:
        shown = torch.cat([probes[:8], quality_images[:8]])
        plots.save_image_grid(shown, out / "samples.png", columns=8)


def _print_summary(metrics: dict, console) -> None:
    from rich.table import Table

    table = Table(
        title=f"RI evaluation ({metrics['data']}), chance rank-1 {metrics['chance_rank1']:.4f}"
    )
    for column in ("probes", "rank-1", "rank-5", "rank-20", "ver. AUC", "TAR@FAR1e-3"):
        table.add_column(column)
    for name, ident in metrics["identification"].items():
        ver = metrics["verification"][name]
        table.add_row(
            name,
            f"{ident['rank1']:.3f}",
            f"{ident['rank5']:.3f}",
            f"{ident['rank20']:.3f}",
            f"{ver['auc']:.3f}",
            f"{ver['tar@far=0.001']:.3f}",
        )
    console.print(table)
    quality = metrics["quality"]
    fmr = quality["fmr"]
    table = Table(title=f"face quality: ERC area at FMR {fmr:g} (lower is better)")
    table.add_column("score")
    table.add_column("ERC area")
    separations = {
        key[len("clean_vs_") : -len("_auc")]: value
        for key, value in quality.items()
        if key.startswith("clean_vs_")
    }
    by_fmr = {f: areas for f, areas in quality["erc_area_by_fmr"].items() if float(f) != fmr}
    for f in by_fmr:
        table.add_column(f"ERC area, FMR {f}")
    for kind in separations:
        table.add_column(f"AUC clean > {kind.replace('_', ' ')}")
    for name, area in quality["erc_area"].items():
        table.add_row(
            name,
            f"{area:.4f}",
            *(f"{areas[name]:.4f}" for areas in by_fmr.values()),
            *(f"{sep[name]:.3f}" for sep in separations.values()),
        )
    console.print(table)
    console.print(
        "mean RI by condition: " + ", ".join(f"{k} {v:.3f}" for k, v in quality["mean_ri"].items())
    )
