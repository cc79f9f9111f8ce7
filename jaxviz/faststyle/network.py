"""Feed-forward style transformation networks (Johnson et al. 2016) with instance norm or
conditional instance norm (Dumoulin et al. 2017), in `flax.linen`.

Layout (pytorch/examples `fast_neural_style`, the default, `variant="pytorch"`):

    conv1  9x9/1  3->32   in1 relu        every conv: reflection padding k//2, then a VALID conv
    conv2  3x3/2 32->64   in2 relu        with bias (torch's `ReflectionPad2d` + `Conv2d`)
    conv3  3x3/2 64->128  in3 relu
    res1..res5: conv1 3x3 - in1 - relu - conv2 3x3 - in2, plus the block input (no ReLU after the sum)
    deconv1: nearest x2 upsampling, conv 3x3 128->64, in4 relu
    deconv2: nearest x2 upsampling, conv 3x3 64->32,  in5 relu
             (both computed as four 2x2 convolutions of the low-resolution map: `UpsampleConv`)
    deconv3: conv 9x9 32->3, no output activation

Parameter names follow pytorch/examples' state dict (`conv1.conv2d.weight` -> `params["conv1"]["kernel"]`,
`res1.in1.weight` -> `params["res1"]["in1"]["scale"]`), so converted checkpoints map one to one.
1,679,235 parameters with plain instance norm.

`variant="johnson"` is Johnson's original Lua network: the two upsampling layers are 3x3 transposed
convolutions with stride 2 (padding 1, output padding 1: exactly 2x) instead of nearest upsampling +
conv, and the output is `150 * tanh(.)` around the ImageNet mean pixel.

Value ranges. jaxviz images are in [0, 1]; the networks work in 0-255 units as their sources do:

  * `"pytorch"`: input `255 * x`, output `y / 255` of the last conv (pytorch/examples feeds
    `ToTensor() * 255` and treats the output as 0-255);
  * `"johnson"`: input `255 * x - mean`, output `(150 tanh(y) + mean) / 255` with the ImageNet mean
    pixel `mean = (123.68, 116.779, 103.939)` (Johnson's Caffe preprocessing, kept in RGB order).

`TransformerNet.__call__` returns the raw output: NOT clipped (training feeds it unclipped to the loss
network, as pytorch/examples does). `jaxviz.faststyle.stylize` clips it to [0, 1] (pytorch/examples
clamps to 0-255 when saving).

Output size. The two stride-2 convs give `ceil(H/4)` rows and the upsampling multiplies by 4, so the
network's natural output is `4 * ceil(H/4)` x `4 * ceil(W/4)` (pytorch/examples returns that: 37x45 ->
40x48). With `crop=True` (the default) jaxviz crops it back to the input's `H x W`, keeping the top-left
corner (row `i` of a stride-2 output is centred on input row `2 i`, so the top-left crop is the aligned
one); `crop=False` returns the pytorch/examples size. Inputs must be at least 5x5 (reflection padding
of 4 needs more than 4 rows, like torch's `ReflectionPad2d`).

Conditional instance norm (`num_styles=S`): every instance norm holds tables `scale [S, C]` (init 1)
and `bias [S, C]` (init 0), magenta's layout; each image's `style` vector `w [S]` selects or blends them:
`scale = w @ scale_table`, `bias = w @ bias_table`, with the weights AS GIVEN (magenta's
`weighted_instance_norm`: no renormalisation, so weights that do not sum to 1 also scale the
normalised activations). A one-hot `w` selects one style exactly. Each image in a batch may carry its
own style vector (`style [N, S]`), or one vector `[S]` is used for every image.

Instance norm: `(x - mean_hw) / sqrt(var_hw + 1e-5) * scale + bias`, biased variance over H, W
(torch's `InstanceNorm2d(affine=True)` without running statistics; magenta's `tf.nn.moments`).
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..models import layers

VARIANTS = ("pytorch", "johnson")
#: Johnson's (Caffe VGG) mean pixel, 0-255, in RGB order.
JOHNSON_MEAN = (123.68, 116.779, 103.939)
JOHNSON_TANH = 150.0
EPS = 1e-5
MIN_SIZE = 5


def _torch_uniform(fan_in: int):
    """torch's default `Conv2d` initialisation for weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _channels(v, x):
    return jnp.asarray(v, x.dtype).reshape((1,) * (x.ndim - 1) + (-1,))


class ReflectConv(nn.Module):
    """Reflection padding `kernel // 2`, then a VALID convolution with bias. Params: `kernel [k, k, in, out]`
    (HWIO), `bias [out]`."""

    features: int
    kernel_size: int
    stride: int = 1
    kernel_grad: str = "auto"

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        fan_in = x.shape[-1] * k * k
        kernel = self.param("kernel", _torch_uniform(fan_in), (k, k, x.shape[-1], self.features))
        bias = self.param("bias", _torch_uniform(fan_in), (self.features,))
        p = k // 2
        x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
        # The library's convolution: its CPU fast-path rewrites (models.layers.conv2d) apply here.
        return layers.conv2d(x, kernel, bias, stride=(self.stride, self.stride), kernel_grad=self.kernel_grad)


class TransposedConv(nn.Module):
    """Johnson's upsampling layer: 3x3 transposed convolution, stride 2, padding 1, output padding 1
    (Torch `SpatialFullConvolution(in, out, 3, 3, 2, 2, 1, 1, 1, 1)`), output exactly 2H x 2W. Computed as
    a convolution of the 2x-dilated input; the kernel is used as stored (HWIO), not flipped."""

    features: int
    kernel_size: int = 3

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        fan_in = self.features * k * k  # torch's ConvTranspose2d fan-in convention
        kernel = self.param("kernel", _torch_uniform(fan_in), (k, k, x.shape[-1], self.features))
        bias = self.param("bias", _torch_uniform(fan_in), (self.features,))
        pad = ((k - 1 - 1, k - 1 - 1 + 1),) * 2  # padding 1, output padding 1
        y = lax.conv_general_dilated(
            x, jnp.asarray(kernel, x.dtype), (1, 1), pad, lhs_dilation=(2, 2),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return y + _channels(bias, y)


class InstanceNorm(nn.Module):
    """Instance norm with an affine transform; conditional (per-style tables) when `num_styles` is set.

    Params: `scale`, `bias` of shape `[C]` (plain) or `[num_styles, C]` (conditional).
    `style`: `[N, num_styles]` weights (conditional only).
    """

    num_styles: Optional[int] = None

    @nn.compact
    def __call__(self, x, style=None):
        c = x.shape[-1]
        shape = (c,) if self.num_styles is None else (self.num_styles, c)
        scale = self.param("scale", nn.initializers.ones, shape)
        bias = self.param("bias", nn.initializers.zeros, shape)
        mean = jnp.mean(x, axis=(1, 2), keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
        x = (x - mean) * lax.rsqrt(var + jnp.asarray(EPS, x.dtype))
        if self.num_styles is None:
            return x * _channels(scale, x) + _channels(bias, x)
        w = style.astype(x.dtype)
        s = (w @ jnp.asarray(scale, x.dtype))[:, None, None, :]  # [N, 1, 1, C]
        b = (w @ jnp.asarray(bias, x.dtype))[:, None, None, :]
        return x * s + b


class ResidualBlock(nn.Module):
    num_styles: Optional[int] = None
    kernel_grad: str = "auto"

    @nn.compact
    def __call__(self, x, style=None):
        c = x.shape[-1]
        y = ReflectConv(c, 3, kernel_grad=self.kernel_grad, name="conv1")(x)
        y = nn.relu(InstanceNorm(self.num_styles, name="in1")(y, style))
        y = ReflectConv(c, 3, kernel_grad=self.kernel_grad, name="conv2")(y)
        y = InstanceNorm(self.num_styles, name="in2")(y, style)
        return x + y


class UpsampleConv(nn.Module):
    """pytorch/examples' `UpsampleConvLayer`: nearest 2x upsampling, reflection padding 1, 3x3 convolution
    with bias. Params as `ReflectConv(features, 3)`: `kernel [3, 3, in, out]` (HWIO), `bias [out]`.

    Computed without the upsampled map, as four 2x2 convolutions of the low-resolution map (one per
    output phase), interleaved. Output row `2i + a` reads upsampled rows `2i + a - 1 .. 2i + a + 1`,
    which are low-resolution rows `i - 1, i, i` (`a = 0`) or `i, i, i + 1` (`a = 1`): two taps whose
    kernels are the sums `(K0, K1 + K2)` or `(K0 + K1, K2)`; likewise for columns. The reflection
    padding of the upsampled map reads the edge row again, which is edge padding of the low-resolution
    map. Same values up to float rounding (the float64 torch-parity tests check it) with 16 instead of
    36 taps per 2x2 output block: measured on this CPU, batch 4, forward + both gradients, 128 -> 64
    channels from 64 px 332 -> 147 ms, 64 -> 32 channels from 128 px 636 -> 305 ms.
    """

    features: int
    kernel_grad: str = "auto"

    @nn.compact
    def __call__(self, x):
        n, h, w, c = x.shape
        fan_in = c * 9
        kernel = self.param("kernel", _torch_uniform(fan_in), (3, 3, c, self.features))
        bias = self.param("bias", _torch_uniform(fan_in), (self.features,))
        kernel = jnp.asarray(kernel, x.dtype)
        padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")

        def taps(k, axis):  # the two taps of phase 0 and of phase 1 along `axis` (0: rows, 1: columns)
            k0, k1, k2 = (jnp.take(k, i, axis=axis) for i in range(3))
            return jnp.stack([k0, k1 + k2], axis=axis), jnp.stack([k0 + k1, k2], axis=axis)

        rows = []
        for a, k_rows in enumerate(taps(kernel, 0)):
            cols = [layers.conv2d(padded[:, a:a + h + 1, b:b + w + 1], k_ab, bias, kernel_grad=self.kernel_grad)
                    for b, k_ab in enumerate(taps(k_rows, 1))]
            rows.append(jnp.stack(cols, axis=3))  # [N, h, w, 2 (column phase), out]
        return jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * w, self.features)


class TransformerNet(nn.Module):
    """The transformation network. Hashable (a frozen dataclass), so it can be a static `jit` argument.

    Attributes:
      variant: `"pytorch"` (pytorch/examples; default) or `"johnson"` (transposed convs, 150 tanh output).
      num_styles: `None` for plain instance norm (one style), or `S` for conditional instance norm with
        `[S, C]` tables.
      crop: crop the `4 ceil(H/4)` output back to the input size (default), see the module docstring.
      channels: widths of the three downsampling convs (pytorch/examples: 32, 64, 128).
      num_residual: residual blocks (5).
      kernel_grad: how training differentiates the convolutions with respect to their kernels
        (`models.layers.conv2d`): `"auto"` (default: shifted products on CPU, XLA's elsewhere), `"xla"`
        or `"shifts"`. Outputs and input gradients do not depend on it.

    Call: `net.apply({"params": params}, images, style)` with `images [N, H, W, 3]` in [0, 1] and
    `style [N, S]` (conditional only; validated by `jaxviz.faststyle.stylize`, not here). Returns
    `[N, H, W, 3]` (or the uncropped size), nominally in [0, 1], not clipped.
    """

    variant: str = "pytorch"
    num_styles: Optional[int] = None
    crop: bool = True
    channels: tuple[int, int, int] = (32, 64, 128)
    num_residual: int = 5
    kernel_grad: str = "auto"

    @nn.compact
    def __call__(self, images, style=None):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}; got {self.variant!r}")
        if self.kernel_grad not in layers.KERNEL_GRADS:
            raise ValueError(f"kernel_grad must be one of {layers.KERNEL_GRADS}; got {self.kernel_grad!r}")
        kg = self.kernel_grad
        n, h, w, _ = images.shape
        dtype = images.dtype
        S = self.num_styles
        c1, c2, c3 = self.channels
        if self.variant == "pytorch":
            x = images * jnp.asarray(255.0, dtype)
        else:
            x = images * jnp.asarray(255.0, dtype) - _channels(JOHNSON_MEAN, images)
        x = nn.relu(InstanceNorm(S, name="in1")(ReflectConv(c1, 9, kernel_grad=kg, name="conv1")(x), style))
        x = nn.relu(InstanceNorm(S, name="in2")(ReflectConv(c2, 3, 2, kernel_grad=kg, name="conv2")(x), style))
        x = nn.relu(InstanceNorm(S, name="in3")(ReflectConv(c3, 3, 2, kernel_grad=kg, name="conv3")(x), style))
        for i in range(self.num_residual):
            x = ResidualBlock(S, kernel_grad=kg, name=f"res{i + 1}")(x, style)
        if self.variant == "pytorch":
            x = UpsampleConv(c2, kernel_grad=kg, name="deconv1")(x)
            x = nn.relu(InstanceNorm(S, name="in4")(x, style))
            x = UpsampleConv(c1, kernel_grad=kg, name="deconv2")(x)
            x = nn.relu(InstanceNorm(S, name="in5")(x, style))
        else:
            x = nn.relu(InstanceNorm(S, name="in4")(TransposedConv(c2, name="deconv1")(x), style))
            x = nn.relu(InstanceNorm(S, name="in5")(TransposedConv(c1, name="deconv2")(x), style))
        y = ReflectConv(3, 9, kernel_grad=kg, name="deconv3")(x)
        if self.variant == "pytorch":
            out = y / jnp.asarray(255.0, dtype)
        else:
            out = (JOHNSON_TANH * jnp.tanh(y) + _channels(JOHNSON_MEAN, y)) / jnp.asarray(255.0, dtype)
        if self.crop:
            out = out[:, :h, :w, :]
        return out

    # ------------------------------------------------------------------ helpers
    def init_params(self, key):
        """Random parameters: torch's default conv initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for
        kernels and biases; instance-norm scale 1, bias 0 (CIN tables: every style the same). Drawn as ONE
        uniform vector sliced per parameter (the per-parameter draws of `net.init` take XLA's CPU compiler
        tens of seconds), so the values differ from `net.init`'s; same distributions."""
        shapes = self.param_shapes()
        leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
        sizes = [math.prod(leaf.shape) for _, leaf in leaves]
        u = np.asarray(jax.random.uniform(key, (max(1, sum(sizes)),), jnp.float32, -1.0, 1.0))
        out, offset = [], 0
        for (path, leaf), n in zip(leaves, sizes):
            names = [str(getattr(p, "key", p)) for p in path]
            if names[-2].startswith("in"):
                value = np.full(leaf.shape, 1.0 if names[-1] == "scale" else 0.0, np.float32)
            else:
                value = u[offset:offset + n].reshape(leaf.shape) * self._bound(names[:-1], shapes)
            offset += n
            out.append(jnp.asarray(value))
        return jax.tree_util.tree_unflatten(treedef, out)

    def _bound(self, layer_path, shapes) -> float:
        node = shapes
        for name in layer_path:
            node = node[name]
        k, _, cin, cout = node["kernel"].shape
        transposed = self.variant == "johnson" and layer_path[-1] in ("deconv1", "deconv2")
        return 1.0 / math.sqrt((cout if transposed else cin) * k * k)

    def param_shapes(self):
        """`jax.ShapeDtypeStruct` pytree of the parameters, without allocating them."""
        return _param_shapes(self)

    def output_size(self, size) -> tuple[int, int]:
        """`(H', W')` of the output for an input of `size = (H, W)`."""
        h, w = size
        if self.crop:
            return int(h), int(w)
        return 4 * (-(-int(h) // 4)), 4 * (-(-int(w) // 4))


@functools.lru_cache(maxsize=64)
def _param_shapes(net: TransformerNet):
    x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
    style = None if net.num_styles is None else jax.ShapeDtypeStruct((1, net.num_styles), jnp.float32)
    return jax.eval_shape(lambda k, x, s: net.init(k, x, s)["params"], jax.random.key(0), x, style)


def num_styles_of(params) -> Optional[int]:
    """`None` for a plain instance-norm network's params, else the number of styles in its CIN tables."""
    try:
        scale = params["in1"]["scale"]
    except (KeyError, TypeError) as e:
        raise ValueError("not fast-style transformation-network params (no in1/scale entry)") from e
    return None if len(scale.shape) == 1 else int(scale.shape[0])


def select_style(params, k: int):
    """Plain instance-norm params holding style `k`'s rows of every CIN table (what a network trained
    for style `k` alone would hold)."""
    s = num_styles_of(params)
    if s is None:
        raise ValueError("these params have plain instance norm (no per-style tables)")
    if not 0 <= k < s:
        raise ValueError(f"style index {k} out of range for {s} styles")

    def pick(path, leaf):
        names = [getattr(p, "key", None) for p in path]
        if len(names) >= 2 and str(names[-2]).startswith("in") and names[-1] in ("scale", "bias"):
            return leaf[k]
        return leaf

    return jax.tree_util.tree_map_with_path(pick, params)
