"""The one model interface every jaxviz technique takes.

A `Model` is a pure function `apply(params, images) -> {layer name: activation}` plus a small
description: the layer names in order, kernel/stride/padding of each spatial layer (for receptive
fields), the input preprocessing and the class-score layer. VGG, AlexNet, the small digits network
and a user's own Flax module (`jaxviz.models.from_flax`) are all `Model`s; techniques only ever see
this interface.

Conventions:
  * images at the API are floating point NHWC in [0, 1], `[N, H, W, C]`; the model's own
    mean/std normalisation happens inside `Model.apply`, once;
  * activations are NHWC for spatial layers and `[N, D]` for fully connected ones;
  * `params` is a plain pytree (for the built-in models `{layer: {"kernel": ..., "bias": ...}}`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

from jaxviz._util import is_traced

Array = jax.Array
Params = Any

#: Layer kinds whose output is a spatial map `[N, h, w, C]`. All but "map" have a known geometry
#: (kernel, stride, padding) from which receptive fields are computed.
SPATIAL_KINDS = ("conv", "bn", "relu", "pool", "act", "map")
# The largest height or width `describe` accepts (the `jaxviz info --size` bound): shapes only, but
# 2**31 pixels overflow the int32 arithmetic of JAX's shape evaluation.
MAX_IMAGE_SIZE = 65536


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """Description of one named layer.

    Attributes:
      name: activation name, e.g. `"conv1_1"`, `"relu1_1"`, `"pool1"`, `"fc6"`.
      kind: `"conv"`, `"bn"`, `"relu"`, `"pool"` (max, or average with `pool="avg"`),
        `"adaptive_avgpool"`, `"fc"`, `"act"` (any other pointwise layer), or `"map"` (a spatial
        map whose geometry is unknown, e.g. from a user's Flax module). Receptive fields are
        computed for the spatial kinds (`SPATIAL_KINDS`) except after a `"map"`.
      channels: number of output channels / features (`None` if unknown).
      kernel, stride, padding: `(h, w)` window geometry of conv and pool layers; `(1, 1)`, `(1, 1)`,
        `(0, 0)` for pointwise layers.
      output_size: `(h, w)` of an adaptive pooling layer.
      after_trunk: set by `Model` for every layer from the first non-spatial one on (e.g. the ReLUs
        between fully connected layers), whose outputs are vectors `[N, D]`.
    """

    name: str
    kind: str
    channels: Optional[int] = None
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    output_size: Optional[tuple[int, int]] = None
    after_trunk: bool = False

    @property
    def spatial(self) -> bool:
        """Whether the output is a spatial map `[N, h, w, C]`."""
        return self.kind in SPATIAL_KINDS and not self.after_trunk


class UnknownLayerError(KeyError, ValueError):
    """A layer name the model does not have. Both a `KeyError` and a `ValueError`."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


# Signature of `Model.apply_fn`: (params, preprocessed images, until, relu, pool) -> activations.
ApplyFn = Callable[..., dict]


#: How far outside [0, 1] concrete images may stray before they are refused (resampling with
#: bicubic or Lanczos kernels overshoots a little; 0-255 or ImageNet-normalised inputs are far out).
RANGE_TOLERANCE = 0.05


def check_pixel_values(images, what: str = "images") -> None:
    """Refuse concrete images with non-finite values or values clearly outside [0, 1].

    Values may lie in `[-RANGE_TOLERANCE, 1 + RANGE_TOLERANCE]`. Traced images (under `jit`, `vmap`,
    `grad`) cannot be inspected and pass unchanged: the computation then propagates NaN.
    """
    if isinstance(images, jax.core.Tracer) or not hasattr(images, "dtype"):
        return
    if getattr(images, "size", 1) == 0:
        return
    # Concrete images closed over inside a user's `jit` are still concrete: evaluate eagerly.
    with jax.ensure_compile_time_eval():
        x = jnp.asarray(images)
        finite = jnp.isfinite(x)
        lo = jnp.min(jnp.where(finite, x, jnp.inf))
        hi = jnp.max(jnp.where(finite, x, -jnp.inf))
        n_bad = int(jnp.size(x) - jnp.sum(finite))
    if n_bad:
        raise ValueError(
            f"{what} contain {n_bad} non-finite value(s) (NaN or inf) of {x.size}; jaxviz refuses them "
            "rather than return a meaningless map. Check how the images were loaded or produced."
        )
    lo, hi = float(lo), float(hi)
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        hint = (
            " They look like 0-255 values: divide by 255." if hi > 2 and lo >= -RANGE_TOLERANCE
            else " They look normalised (negative values): jaxviz models normalise inside apply, so pass "
            "the images in [0, 1] (undo the mean/std normalisation)." if lo < -RANGE_TOLERANCE
            else " Clip them with jnp.clip(images, 0, 1)."
        )
        raise ValueError(
            f"{what} must have values in [0, 1] (tolerance {RANGE_TOLERANCE}); got min {lo:.4g}, max {hi:.4g}.{hint}"
        )


@jax.custom_jvp
def _default_relu(x):
    # max(x, 0) with NaN kept: XLA on CPU fuses max(x, 0) into a following max/mean reduction in
    # a way that turns NaN into 0 (a NaN image then gave finite Grad-CAM weights).
    return jnp.where(jnp.isnan(x), x, jnp.maximum(x, 0))


@_default_relu.defjvp
def _default_relu_jvp(primals, tangents):
    # The derivative autodiff gives the expression above, written as one select: 1 where x > 0 or x is
    # NaN (`x <= 0` is False for NaN), 0 elsewhere (0 at x = 0, as jax.nn.relu). Differentiating the
    # expression itself made the backward pass carry a NaN mask and a second select per ReLU: 28 ms
    # (4.5%) of VGG16's saliency at 224 px on a 2-core CPU (2026-12-01).
    (x,), (t,) = primals, tangents
    return _default_relu(x), jnp.where(x <= 0, jnp.zeros_like(t), t)


def _run(model: "Model", until, relu, pool, params, images, perturb):
    kwargs = {} if perturb is None else {"perturb": perturb}
    return model.apply_fn(params, model.preprocess(images), until=until, relu=relu, pool=pool, **kwargs)


_run_jit = jax.jit(_run, static_argnums=(0, 1, 2, 3))


def _hashable(value) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A CNN as a pure function plus its description. Hashable (by identity), so it can be a static
    argument of `jax.jit` or closed over.

    Attributes:
      name: architecture name (`"vgg16"`, `"alexnet"`, `"digits"`, or a user's).
      layers: `LayerSpec`s in forward order; `apply` returns activations under these names.
      apply_fn: `apply_fn(params, x, *, until, relu, pool[, perturb])` on *preprocessed* `x`; use
        `apply`. `perturb` is passed only when given.
      init_fn: `init_fn(key) -> params` with random weights of the right shapes, or `None`.
      mean, std: per-channel normalisation applied inside `apply`: `(x - mean) / std`.
      input_size: `(H, W)` the network was trained at (any size the architecture admits works).
      min_size: smallest `(H, W)` for which every layer has a non-empty output.
      in_channels: image channels (3 for RGB).
      logits: name of the layer holding the unnormalised class scores, or `None`.
      features: default embedding layer for nearest neighbours / t-SNE (e.g. `"fc7"`).
      class_names: one name per class, or `None`.
      swappable_relu: whether `apply(..., relu=f)` replaces the network's ReLUs (guided backprop).
      pool_modes: pooling modes `apply(..., pool=...)` accepts.
      frozen_fn: `frozen_fn(params) -> params` for `frozen`, or `None` (then `frozen` is the identity).
      restrict_fn: `restrict_fn(params, layer, channels) -> params or None` for `restricted`, or `None`
        (then `restricted` returns `None`).
    """

    name: str
    layers: tuple[LayerSpec, ...]
    apply_fn: ApplyFn
    init_fn: Optional[Callable[[Array], Params]] = None
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    input_size: tuple[int, int] = (224, 224)
    min_size: tuple[int, int] = (1, 1)
    in_channels: int = 3
    logits: Optional[str] = None
    features: Optional[str] = None
    class_names: Optional[tuple[str, ...]] = None
    swappable_relu: bool = True
    pool_modes: tuple[str, ...] = ("max",)
    frozen_fn: Optional[Callable[[Params], Params]] = None
    restrict_fn: Optional[Callable[[Params, str, Array], Optional[Params]]] = None

    def __post_init__(self):
        # Mark the layers after the convolutional trunk, so that `LayerSpec.spatial` is right for
        # pointwise layers (ReLUs) between fully connected ones.
        specs, after = [], False
        for spec in self.layers:
            after = after or spec.kind not in SPATIAL_KINDS
            specs.append(dataclasses.replace(spec, after_trunk=after) if spec.after_trunk != after else spec)
        object.__setattr__(self, "layers", tuple(specs))
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"layer names must be unique; got {names}")

    # ----------------------------------------------------------------- description
    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.layers)

    @property
    def num_classes(self) -> Optional[int]:
        if self.logits is None:
            return None
        return self.layer(self.logits).channels

    def layer(self, name: str) -> LayerSpec:
        """The `LayerSpec` called `name`; an `UnknownLayerError` naming the valid layers otherwise."""
        for spec in self.layers:
            if spec.name == name:
                return spec
        raise UnknownLayerError(f"{self.name} has no layer {name!r}; its layers are: {', '.join(self.layer_names)}")

    def index(self, name: str) -> int:
        self.layer(name)
        return self.layer_names.index(name)

    @property
    def trunk(self) -> tuple[str, ...]:
        """Names of the leading spatial layers (the convolutional trunk, any input size)."""
        names = []
        for spec in self.layers:
            if not spec.spatial:
                break
            names.append(spec.name)
        return tuple(names)

    # ----------------------------------------------------------------- computation
    def preprocess(self, images: Array) -> Array:
        """`(images - mean) / std` per channel; `images: [N, H, W, C]` in [0, 1]."""
        dtype = images.dtype
        mean = jnp.asarray(self.mean, dtype).reshape(1, 1, 1, -1)
        std = jnp.asarray(self.std, dtype).reshape(1, 1, 1, -1)
        return (images - mean) / std

    def check_images(self, images: Array) -> None:
        """Raise a `ValueError` that says what is wrong unless `images` is `[N, H, W, C]`, floating."""
        shape = getattr(images, "shape", None)
        if shape is None or len(shape) != 4:
            raise ValueError(
                f"{self.name} expects a batch of images [N, H, W, {self.in_channels}] (NHWC, values in [0, 1]); "
                f"got shape {shape}. Add a batch axis with images[None] for a single image."
            )
        if shape[-1] != self.in_channels:
            hint = " (NCHW? jaxviz is NHWC: transpose with x.transpose(0, 2, 3, 1))" if shape[1] == self.in_channels else ""
            raise ValueError(
                f"{self.name} expects {self.in_channels} channels in the last axis; got shape {tuple(shape)}{hint}."
            )
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise ValueError(
                f"{self.name} expects floating-point images in [0, 1]; got dtype {images.dtype}. "
                "Convert uint8 images with images.astype('float32') / 255."
            )
        if shape[1] < self.min_size[0] or shape[2] < self.min_size[1]:
            raise ValueError(
                f"{self.name} needs images of at least {self.min_size[0]}x{self.min_size[1]} pixels; "
                f"got {shape[1]}x{shape[2]}."
            )
        if shape[0] == 0:
            raise ValueError(f"{self.name} got an empty batch (shape {tuple(shape)}): pass at least one image.")
        check_pixel_values(images, what=f"images for {self.name}")

    def apply(
        self,
        params: Params,
        images: Array,
        *,
        until: Optional[str] = None,
        relu: Optional[Callable[[Array], Array]] = None,
        pool: Optional[str] = None,
        perturb: Optional[Mapping[str, Array]] = None,
    ) -> dict[str, Array]:
        """Run the network and return its named activations.

        Args:
          params: parameter pytree (from `init`, `jaxviz.load_params` or training).
          images: `[N, H, W, C]` floating point in [0, 1]; normalised here with `mean`/`std`.
          until: stop after this layer (inclusive): style or inversion work need not pay for the
            classifier, and `until=model.trunk[-1]` runs the convolutional trunk at any size.
          relu: replacement for every ReLU of the network (e.g. guided backprop's `custom_vjp`
            ReLU); `None` keeps the network's ReLU (`max(x, 0)`, NaN kept, with jax.nn.relu's
            derivative and 1 at NaN).
          pool: `"max"` (the network as trained) or `"avg"` (average pooling with the same windows,
            used by texture and style synthesis), if the model supports it (`pool_modes`).
          perturb: `{layer: delta}` added to those layers' outputs before the network goes on; the
            returned activation includes it. With zeros the network is unchanged, and the gradient
            with respect to `delta` is the gradient at that layer (Grad-CAM reads it this way).

        Returns:
          `{name: activation}` for every layer up to `until`, in forward order; spatial activations
          `[N, h, w, C]`, fully connected ones `[N, D]`. Called on concrete arrays, the network runs
          as one jit-compiled program (cached per model, `until`, `relu`, `pool` and input shapes);
          inside the caller's `jit`, `grad` or `vmap` it is traced inline.
        """
        self.check_images(images)
        if until is not None:
            self.layer(until)
        if relu is not None and not self.swappable_relu:
            raise ValueError(
                f"{self.name}'s ReLU cannot be swapped (needed by guided backprop and the deconvnet rule). "
                "For a Flax module, give it an activation attribute and pass relu_attr= to jaxviz.models.from_flax."
            )
        pool = "max" if pool is None else pool
        if pool not in self.pool_modes:
            raise ValueError(f"{self.name} supports pool in {self.pool_modes}; got {pool!r}.")
        delta = None
        if perturb:
            for name in perturb:
                self.layer(name)
                if until is not None and self.index(name) > self.index(until):
                    raise ValueError(f"perturb names {name!r}, which comes after until={until!r}")
            delta = dict(perturb)
        relu = _default_relu if relu is None else relu
        args = (self, until, relu, pool, params, images, delta)
        if is_traced((params, images, delta)) or not _hashable(relu):
            return _run(*args)  # inside the caller's transformation (or an unhashable relu=): inline
        # Called on concrete arrays: one compiled program (cached per model, until, relu, pool and
        # shapes) instead of compiling and dispatching every operation on its own. VGG16 at 224 px,
        # 2-core CPU: first call 2.8 s instead of 8.9 s, later calls 0.29 s instead of 0.65 s.
        out = _run_jit(*args)
        return {name: out[name] for name in (*self.layer_names, *sorted(set(out) - set(self.layer_names))) if name in out}

    __call__ = apply

    def init(self, key: Array) -> Params:
        """Random parameters of the right shapes (the initialisation the model's source uses)."""
        if self.init_fn is None:
            raise ValueError(f"{self.name} has no random initialiser")
        return self.init_fn(key)

    def frozen(self, params: Params) -> Params:
        """`params` prepared for gradients with respect to the IMAGES through a network whose weights
        stay fixed (every synthesis technique, SmoothGrad, integrated gradients).

        For the built-in models each convolution that may take the Winograd path
        (`layers.winograd_applies`: float32 on the CPU, 3x3, 256 or more channels) gets its
        transformed kernel (`layers.winograd_kernel`, key `kernel_w`) and every other stride-1
        convolution its input gradient's kernel (flipped and transposed, `layers.backward_kernel`, key
        `kernel_t`), computed here once instead of at every call. On the 2-core AMD EPYC of
        benchmarks/README.md (2026-12-01) a VGG16 input gradient of a class score took 140 against
        171 ms at 64 px, 317 against 369 ms at 128 px and 576 against 568 ms at 224 px (batch 1, frozen
        against plain, median of 9 alternating); VGG16's frozen params hold about 100 MB more than its
        params (float32). `apply` on the result gives the same activations and the same input
        gradients (reverse mode: `grad`, `vjp`; forward mode, `jvp`, is not defined through the custom
        VJPs); differentiating with respect to its weights raises a `ValueError` (train the original
        params). Models without `frozen_fn` (e.g. `from_flax`)
        return `params` unchanged. For the built-in models the kernels are computed by one jitted
        program; the other weights are passed through, not copied.
        """
        return params if self.frozen_fn is None else self.frozen_fn(params)

    def restricted(self, params: Params, layer: str, channels: Array) -> Optional[Params]:
        """`params` changed so that `apply(result, images, until=layer)[layer]` holds only `channels`
        of `layer`, in that order: `full[..., channels]`, computed without the other channels.

        An objective that reads a few channels of a layer (lucid's `channel`, `neuron`, a class score)
        then pays for those channels of the convolution or dense layer that produces them, not for all
        of them (VGG16's conv4_3: 1 of 512 output channels for one channel objective;
        `jaxviz.objectives.restrict` does this for an objective). For the built-in models the layer is
        a convolution or dense layer, or follows one through channel-wise layers only (ReLU, batch
        norm, max/average pooling, adaptive average pooling); that layer's kernel and bias (and
        `frozen`'s backward kernel, and the batch-norm statistics in between) are gathered at
        `channels`, and those layers' activations hold the same `channels`; every earlier layer is
        unchanged. Values are those of the full layer up to float rounding.

        Args:
          params: the model's parameters (plain or `frozen`).
          layer: a layer name.
          channels: integer indices `[K]` into `layer`'s channels, each in range (out-of-range ones
            are not checked; gathers return NaN or clamp), duplicates allowed; may be traced.

        Returns:
          The changed params, or `None` when this model cannot restrict `layer` (models without
          `restrict_fn`, e.g. `from_flax`; a layer not reached from a convolution or dense layer
          through channel-wise layers).
        """
        self.layer(layer)
        return None if self.restrict_fn is None else self.restrict_fn(params, layer, channels)

    def param_shapes(self) -> Params:
        """`jax.ShapeDtypeStruct` pytree of the parameters, without allocating them."""
        return jax.eval_shape(self.init, jax.random.key(0))

    def scores(self, params: Params, images: Array, **kwargs) -> Array:
        """Unnormalised class scores `[N, num_classes]` (the `logits` layer)."""
        if self.logits is None:
            raise ValueError(f"{self.name} has no class-score layer")
        return self.apply(params, images, until=self.logits, **kwargs)[self.logits]


# --------------------------------------------------------------------------- receptive fields
@dataclasses.dataclass(frozen=True)
class ReceptiveField:
    """Where a unit of a spatial layer looks in the input image.

    The unit at output position `(i, j)` sees input rows `i * stride[0] - offset[0]` to
    `i * stride[0] - offset[0] + size[0] - 1` (inclusive), and likewise for columns; rows outside
    `[0, H)` are the zero padding.
    """

    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]

    def box(self, i, j):
        """`(top, left, bottom, right)` of unit `(i, j)`, bottom/right exclusive, may lie outside."""
        top = i * self.stride[0] - self.offset[0]
        left = j * self.stride[1] - self.offset[1]
        return top, left, top + self.size[0], left + self.size[1]


def receptive_field(model: Model, layer: str) -> ReceptiveField:
    """Receptive field of `layer`'s units, computed from the layers' kernels, strides and padding.

    Uses the standard recurrence over the layers up to `layer`: size grows by `(k - 1) * jump`,
    the jump (input pixels between neighbouring units) multiplies by the stride, and the offset grows
    by `padding * jump`.

    Raises:
      ValueError: `layer` is not spatial (a fully connected unit sees the whole image).
    """
    idx = model.index(layer)
    size, jump, offset = [1, 1], [1, 1], [0, 0]
    for spec in model.layers[: idx + 1]:
        if not spec.spatial:
            raise ValueError(
                f"{layer!r} comes after the non-spatial layer {spec.name!r} ({spec.kind}): its units see the "
                f"whole image. Receptive fields exist for {', '.join(model.trunk)}."
            )
        if spec.kind == "map":
            raise ValueError(
                f"the geometry (kernel, stride, padding) of {spec.name!r} in {model.name} is unknown; describe "
                "the layers (LayerSpec) or measure it with jaxviz.inspection.empirical_receptive_field"
            )
        for a in range(2):
            size[a] += (spec.kernel[a] - 1) * jump[a]
            offset[a] += spec.padding[a] * jump[a]
            jump[a] *= spec.stride[a]
    return ReceptiveField(tuple(size), tuple(jump), tuple(offset))


def spatial_shape(model: Model, layer: str, image_size: Sequence[int]) -> tuple[int, int]:
    """`(h, w)` of `layer`'s activation for an input of `image_size = (H, W)` (no computation)."""
    idx = model.index(layer)
    h, w = image_size
    for spec in model.layers[: idx + 1]:
        if not spec.spatial or spec.kind == "map":
            raise ValueError(f"the output size of {layer!r} cannot be derived from the layer descriptions")
        h = (h + 2 * spec.padding[0] - spec.kernel[0]) // spec.stride[0] + 1
        w = (w + 2 * spec.padding[1] - spec.kernel[1]) // spec.stride[1] + 1
    return h, w


def _check_image_size(image_size) -> tuple[int, int]:
    """`(height, width)` as ints, each in 1..MAX_IMAGE_SIZE, or a ValueError naming the problem."""
    try:
        size = tuple(image_size)
    except TypeError:  # a single number
        size = ()
    if len(size) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in size):
        raise ValueError(f"image_size must be (height, width) in whole pixels; got {image_size!r}")
    if not all(1 <= v <= MAX_IMAGE_SIZE for v in size):
        raise ValueError(f"image_size {tuple(int(v) for v in size)} is outside 1..{MAX_IMAGE_SIZE} pixels per side")
    return int(size[0]), int(size[1])


def describe(model: Model, params: Optional[Params] = None, image_size: Optional[Sequence[int]] = None) -> list[dict]:
    """One dict per layer: `name`, `kind`, output `shape` (without the batch axis) for an input of
    `image_size` (default `model.input_size`), `receptive_field` and `rf_stride` for spatial layers of
    known geometry, and `params` (parameter count) when `params` is given. Nothing is computed: shapes
    come from `jax.eval_shape`."""
    image_size = _check_image_size(model.input_size if image_size is None else image_size)
    if params is None and model.init_fn is not None:
        params = model.param_shapes()
    shapes = {}
    if params is not None:
        image = jax.ShapeDtypeStruct((1, *image_size, model.in_channels), jnp.float32)
        shapes = jax.eval_shape(model.apply, params, image)
    rows = []
    for spec in model.layers:
        row: dict[str, Any] = {"name": spec.name, "kind": spec.kind}
        if spec.name in shapes:
            row["shape"] = tuple(shapes[spec.name].shape[1:])
        if spec.spatial:
            try:
                rf = receptive_field(model, spec.name)
                row["receptive_field"], row["rf_stride"] = rf.size, rf.stride
            except ValueError:
                pass
        if isinstance(params, Mapping) and spec.name in params:
            row["params"] = int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params[spec.name])))
        rows.append(row)
    return rows
