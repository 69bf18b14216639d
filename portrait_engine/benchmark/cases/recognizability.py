"""Benchmark cases of RI training (issue 8): the margin softmax head and one training step.

- ``margin_head``: the margin softmax cross-entropy over ``N`` class prototypes
  (:func:`~portrait_engine.models.recognizability.margin_ce.margin_cross_entropy`, ArcFace
  s = 64, m = 0.5), mean loss of a batch. Provider ``torch``: the plain form that materialises
  the ``B × N`` logits (the reference); ``native``: the engine's fused, class-chunked form,
  which never holds more than a ``B × chunk`` block. Both are PyTorch code (the fused one is a
  custom autograd function), so ``native_op`` is ``None``: the ``native`` provider here names
  the engine's fused path, not a C++ op. The paper sizes (batch 512, D = 512, 100k and 1M
  classes) are where the plain form's memory explodes; the harness's peak-memory column is the
  figure to read, and a plain form that runs out of memory is reported as an error row.
- ``ri_train_step``: an end-to-end RI training step (forward of the RI model, margin head, RI
  regression and index diversion losses; the harness runs the backward in the
  ``forward+backward`` mode) on a fixed batch. ``torch``: everything on the ``torch`` backend
  (:func:`portrait_engine.use_backend`) with the plain margin head; ``native``: the engine's
  fused backends (``auto``: the attention pooling kernels) and the fused margin head. The
  quick size is the CPU ``tiny`` preset (64 × 64, :class:`TinyBackbone`); the full size is
  IResNet-50 at batch 512, 112 × 112 (images/s = 512 / median time).
"""

from __future__ import annotations

import contextlib

import torch

from portrait_engine.benchmark.cases.base import Case
from portrait_engine.models.recognizability.heads import build_margin
from portrait_engine.models.recognizability.margin_ce import margin_cross_entropy

_ARCFACE = dict(scale=64.0, m2=0.5)


def _margin_head_case(
    name: str, batch: int, classes: int, dim: int, chunk_size: int | None = None
) -> Case:
    margin, scale = build_margin("arcface", **_ARCFACE)

    def make_inputs(device, dtype, generator):
        embeddings = 5 * torch.randn(batch, dim, generator=generator)
        weight = 0.01 * torch.randn(classes, dim, generator=generator)
        labels = torch.randint(classes, (batch,), generator=generator)
        return [
            embeddings.to(device=device, dtype=dtype),
            weight.to(device=device, dtype=dtype),
            labels.to(device),
        ], {}

    def head(fused: bool):
        def run(embeddings, weight, labels):
            out = margin_cross_entropy(
                embeddings, weight, labels, margin, scale, fused=fused, chunk_size=chunk_size
            )
            return out.loss.mean()

        return run

    def bytes_moved(dtype: torch.dtype, with_backward: bool) -> int:
        size_of = torch.empty((), dtype=dtype).element_size()
        weight = classes * dim * size_of
        # forward: read W, the embeddings and the labels once; backward: read W again and
        # write its gradient (the per-sample losses and the scalar are negligible)
        forward = weight + batch * dim * size_of + batch * 8
        return forward + (2 * weight + 2 * batch * dim * size_of if with_backward else 0)

    def flops(dtype: torch.dtype, with_backward: bool) -> int:
        # B x N x D cosines forward; the backward's two products (dX, dW) add twice that
        return 2 * batch * classes * dim * (3 if with_backward else 1)

    return Case(
        op="margin_head",
        shape=name,
        params=dict(batch=batch, classes=classes, dim=dim, margin="arcface", chunk_size=chunk_size),
        make_inputs=make_inputs,
        functions={"torch": head(fused=False), "native": head(fused=True)},
        bytes_moved=bytes_moved,
        description=f"ArcFace CE B={batch} N={classes} D={dim}: plain vs fused chunked",
        native_op=None,
        flops=flops,
    )


def _ri_train_step_case(
    name: str, preset: str, batch: int, classes: int, backbone: str | None = None
) -> Case:
    from portrait_engine.models.recognizability.presets import preset as load_preset

    model_config, train_config = load_preset(preset, batch_size=batch)
    if backbone is not None:
        model_config.backbone = backbone
    size = model_config.image_size
    nets: dict[tuple, torch.nn.Module] = {}

    def net(device, fused: bool):
        """One training network per (device, fused), built once, with the same weights."""
        key = (str(device), fused)
        if key not in nets:
            from portrait_engine.models.recognizability.heads import MarginSoftmaxHead
            from portrait_engine.models.recognizability.model import RIModel
            from portrait_engine.models.recognizability.train import RITrainingNet

            torch.manual_seed(0)
            model = RIModel(model_config)
            head = MarginSoftmaxHead(
                model_config.embedding_dim,
                classes,
                margin=train_config.margin,
                fused=fused,
                scale=train_config.scale,
                m2=train_config.margin_m,
            )
            nets[key] = RITrainingNet(model, head, train_config).to(device).train()
        return nets[key]

    def make_inputs(device, dtype, generator):
        images = (torch.rand(batch, 3, size, size, generator=generator) * 2 - 1).to(
            device=device, dtype=dtype
        )
        labels = torch.randint(classes, (batch,), generator=generator).to(device)
        is_ui = torch.zeros(batch, dtype=torch.bool)
        is_ui[-max(1, int(round(train_config.ui_fraction * batch))) :] = True
        return [images, labels, is_ui.to(device)], {}

    def step(fused: bool, backend: str):
        def run(images, labels, is_ui):
            from portrait_engine import use_backend

            training = net(images.device, fused)
            # every call starts from the same UI state (the EMAs would drift between calls)
            training.model.ui_level.zero_()
            training.model.ui_centre_initialised.fill_(False)
            autocast = (
                torch.autocast(images.device.type, dtype=torch.bfloat16)
                if images.dtype == torch.bfloat16
                else contextlib.nullcontext()
            )
            with use_backend(backend), autocast:
                return training(images.float(), labels, is_ui)["loss"]

        return run

    def bytes_moved(dtype: torch.dtype, with_backward: bool) -> None:
        return None

    return Case(
        op="ri_train_step",
        shape=name,
        params=dict(batch=batch, image_size=size, classes=classes, backbone=model_config.backbone),
        make_inputs=make_inputs,
        functions={"torch": step(False, "torch"), "native": step(True, "auto")},
        bytes_moved=bytes_moved,
        description=(
            f"RI training step {model_config.backbone} B={batch} {size}x{size} "
            f"N={classes}: torch backend + plain head vs fused backends + fused head"
        ),
        native_op=None,
        kind="end-to-end",
        modes=("forward+backward",),
        # the two networks hold the same weights; the losses differ only by summation order
        # and BatchNorm's batch statistics in both are the same
        tolerance=1e-3,
    )


def margin_head_cases(quick: bool) -> list[Case]:
    if quick:  # a few thousand classes in chunks of 1024 (the default chunk is 16384)
        return [_margin_head_case("quick-8k", 64, 8192, 256, chunk_size=1024)]
    # the targets: batch 512, D = 512, 100k and 1M classes (default chunk)
    return [
        _margin_head_case("fr-100k", 512, 100_000, 512),
        _margin_head_case("fr-1m", 512, 1_000_000, 512),
    ]


def ri_train_step_cases(quick: bool) -> list[Case]:
    if quick:
        return [_ri_train_step_case("quick-tiny", "tiny", 32, 200)]
    return [_ri_train_step_case("fr-r50", "r50", 512, 100_000, backbone="iresnet50")]
