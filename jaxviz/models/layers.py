"""Stateless layer functions on NHWC arrays, with torch's semantics.

Every function here is pure and shape-static, so it traces once under `jit` and maps under `vmap`.
Parameters are cast to the activations' dtype, so float64 images give a float64 forward pass (used
for gradient parity checks) and bfloat16 images a bfloat16 one.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def _as_channels(v, x):
    # Explicit [1, ..., 1, C] shape: no implicit rank promotion.
    return jnp.asarray(v, x.dtype).reshape((1,) * (x.ndim - 1) + (-1,))


def backward_kernel(kernel):
    """The kernel of a stride-1 convolution's input gradient: `kernel` `[kh, kw, C_in, C_out]` flipped
    in both spatial axes, input and output channels swapped: `[kh, kw, C_out, C_in]`."""
    return jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))


def _conv(x, kernel, stride, pads):
    return lax.conv_general_dilated(x, kernel, window_strides=stride, padding=pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))


_FROZEN_KERNEL_GRAD = (
    "these params carry precomputed backward kernels (Model.frozen) and cannot be differentiated "
    "with respect to their weights (the two copies would drift apart); differentiate the original params"
)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _conv_frozen(x, kernel, kernel_t, pads):
    return _conv(x, kernel, (1, 1), pads)


def _conv_frozen_fwd(x, kernel, kernel_t, pads):
    # symbolic_zeros: each argument says whether it is differentiated (`.perturbed`).
    if kernel.perturbed or kernel_t.perturbed:
        raise ValueError(_FROZEN_KERNEL_GRAD)
    return _conv(x.value, kernel.value, (1, 1), pads), (kernel_t.value, x.perturbed)


def _conv_frozen_bwd(pads, res, g):
    kernel_t, need_x = res
    if not need_x:
        return None, None, None
    kh, kw = kernel_t.shape[:2]
    (top, bottom), (left, right) = pads
    # Stride 1: the input gradient is the correlation of g with the flipped, transposed kernel,
    # padded so that it has the input's size (kh - 1 - pad on each side; negative pads crop).
    dx = _conv(g, kernel_t, (1, 1), ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right)))
    return dx, None, None


_conv_frozen.defvjp(_conv_frozen_fwd, _conv_frozen_bwd, symbolic_zeros=True)


# ----------------------------------------------------------------------------- Winograd F(2x2, 3x3)
# Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016): a 3x3 "same" convolution
# computed on 4x4 input tiles (stride 2) as 16 matrix products of [tiles, C_in] x [C_in, C_out], 2.25x
# fewer multiplications than the direct convolution. The transforms (B^T d B, G g G^T, A^T m A) have
# entries 0, +-1 and +-1/2: the kernel's is one matrix product, the input's signed sums of gathered pixels
# and the output's sums of slices, each fused by XLA into one loop (`winograd_kernel`, `_winograd_same`).

CONV_ALGORITHMS = ("auto", "direct", "winograd", "im2col")

# Switch for `algorithm="auto"`: JAXVIZ_WINOGRAD=0 in the environment (read at import) keeps every
# convolution direct, e.g. to time both ways (benchmarks/captum_bench.py) or to rule it out.
WINOGRAD_AUTO = os.environ.get("JAXVIZ_WINOGRAD", "1") != "0"
WINOGRAD_MIN_CHANNELS = 256
# Maps of fewer pixels (H * W) than this stay direct under "auto" (read at trace time). 0: any map
# larger than one 2x2 tile. 100 (maps under 10x10 direct) was measured on 2026-12-02 and not adopted:
# forward passes faster, input gradients slower (benchmarks/README.md, "Winograd on small maps").
WINOGRAD_MIN_PIXELS = 0


def _cpu_float32_same_3x3(kernel_shape, stride, padding, dtype) -> bool:
    """The CPU backend, float32, a 3x3 kernel with stride 1 and padding 1 (where `conv2d`'s rewrites apply)."""
    return (jax.default_backend() == "cpu" and jnp.dtype(dtype) == jnp.float32 and tuple(kernel_shape[:2]) == (3, 3)
            and tuple(stride) == (1, 1) and tuple(padding) == (1, 1))


def winograd_applies(kernel_shape, stride, padding, dtype, map_size=None) -> bool:
    """Whether `conv2d(algorithm="auto")` uses Winograd F(2x2, 3x3): the CPU backend, float32, a 3x3
    kernel with stride 1 and padding 1, and at least `WINOGRAD_MIN_CHANNELS` (256) channels in and
    out. Measured on a 2-core AMD EPYC (jax 0.10, YNNPACK convolutions; `benchmarks/winograd_bench.py`),
    Winograd's forward pass was 1.1-2.3x and its input gradient 1.3-2.3x faster than XLA's direct
    convolution for 256-512 channels on 4x4 to 56x56 maps (VGG16's conv3_2 to conv5_3 at 224 px batch
    1 and 64 px batch 4 and 16), and 1.2-2.7x slower for 64 -> 64 channels in every configuration and
    for 64-128 -> 128 channels at 112 px (batch 1) and 32 px (batch 16): its transforms are
    memory-bound there. Maps of one 2x2 tile (`map_size` `(H, W)` of at most 2x2) are left to
    `im2col_applies` (or the direct convolution): one tile per image makes the matrix products one
    row high, which XLA's CPU backend computes as matrix-vector products that round differently from
    the same row among others, so a batch of experiments would not reproduce one-by-one runs. So are
    maps of fewer than `WINOGRAD_MIN_PIXELS` pixels (0, none, unless changed)."""
    cin, cout = kernel_shape[2:]
    if map_size is not None and (-(-map_size[0] // 2) * -(-map_size[1] // 2) < 2
                                 or map_size[0] * map_size[1] < WINOGRAD_MIN_PIXELS):
        return False
    return (WINOGRAD_AUTO and _cpu_float32_same_3x3(kernel_shape, stride, padding, dtype)
            and min(cin, cout) >= WINOGRAD_MIN_CHANNELS)


# G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]; G k G^T for every channel pair at once is one
# matrix product of kron(G, G) [16, 9] with the kernel as [9, C_in * C_out] (a library call: written as
# sums of slices, XLA emitted loops that took 0.2 s per layer to compile, for the same run time).
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)
_G16 = np.kron(_G, _G)


def winograd_kernel(kernel):
    """`G k G^T` for each (C_in, C_out) pair: `[3, 3, C_in, C_out]` -> `[4, 4, C_in, C_out]` (the input
    gradient's flipped kernel needs no transform of its own: `_FLIP4`)."""
    _, _, c, d = kernel.shape
    g = jnp.asarray(_G16, kernel.dtype)
    return jnp.matmul(g, kernel.reshape(9, c * d)).reshape(4, 4, c, d)


# B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]: each row has two entries +-1, so
# each of the 16 entries of B^T d B is a signed sum of four pixels of the 4x4 tile d.
_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)


def _tile_terms():
    """`offsets` `[4, 2, 16]` (int32) and `signs` `[4, 16]` (float32): entry `k = 4a + b` of B^T d B for a
    4x4 tile d is `sum_q signs[q, k] * d[offsets[q, 0, k], offsets[q, 1, k]]`."""
    offsets = np.empty((4, 2, 16), np.int32)
    signs = np.empty((4, 16), np.float32)
    for a in range(4):
        for b in range(4):
            terms = [(i, j, _BT[a, i] * _BT[b, j]) for i in range(4) for j in range(4) if _BT[a, i] * _BT[b, j]]
            for q, (i, j, sign) in enumerate(terms):
                offsets[q, :, 4 * a + b] = i, j
                signs[q, 4 * a + b] = sign
    return offsets, signs


_OFFSETS, _SIGNS = _tile_terms()
# Flipping a 3x3 kernel in both spatial axes permutes its transform's tile axes: G J = P G with J the
# reversal of 3 taps and P the swap of rows 0 and 3 (rows 1 and 2 of G are palindromes), so
# winograd_kernel(k[::-1, ::-1])[a, b] = winograd_kernel(k)[_FLIP4[a], _FLIP4[b]].
_FLIP4 = np.array([3, 1, 2, 0])
_FLIP16 = (4 * _FLIP4[:, None] + _FLIP4[None, :]).reshape(16)
_OFFSETS_FLIPPED, _SIGNS_FLIPPED = _OFFSETS[:, :, _FLIP16], _SIGNS[:, _FLIP16]


def _winograd_same(x, u, transpose=False, flipped=False):
    """3x3 "same" convolution (padding 1, stride 1) of `x` `[N, H, W, C]` with the transformed kernel
    `u = winograd_kernel(k)` `[4, 4, C, D]`; with `transpose=True`, `u` is `[4, 4, D, C]` and is
    contracted over its last axis (the input gradient, no channel transpose needed). With
    `flipped=True` the convolution is with the spatially flipped kernel, given `u = winograd_kernel(k)`
    of the kernel itself: the input tiles' transform is computed in the permuted tile order
    (`_FLIP16`) and the products read back in it, so the flipped kernel's transform is never formed
    (the input gradient reuses the forward pass's, or `Model.frozen`'s).
    Odd sizes get one zero row / column more, cropped from the result.

    The input transform is four gathers of whole pixels (`C` contiguous values, indices computed in
    the program) summed with signs +-1, which XLA fuses into one loop (the zero padding is
    the gather's fill value). Written as 16 sums of strided slices, it became 16 loops that XLA
    compiled in 0.2-0.4 s per layer and direction on a 2-core AMD EPYC, for the same run time."""
    n, h, w, c = x.shape
    th, tw = -(-h // 2), -(-w // 2)
    flat = x.reshape(n, h * w, c)
    # Pixel rows and columns of tile (i, j)'s top-left corner, padding 1; computed in the program (iota),
    # not stored: constant index arrays would grow with the image.
    ti = lax.broadcasted_iota(jnp.int32, (16, th, tw), 1) * 2 - 1
    tj = lax.broadcasted_iota(jnp.int32, (16, th, tw), 2) * 2 - 1
    offsets, signs = (_OFFSETS_FLIPPED, _SIGNS_FLIPPED) if flipped else (_OFFSETS, _SIGNS)
    v = 0
    for q in range(4):
        y = ti + offsets[q, 0][:, None, None]
        z = tj + offsets[q, 1][:, None, None]
        rows = jnp.where((y >= 0) & (y < h) & (z >= 0) & (z < w), y * w + z, h * w)  # h * w: the zero padding
        g = jnp.take(flat, rows.reshape(-1), axis=1, mode="fill", fill_value=0).reshape(n, 16, th * tw, c)
        v = v + jnp.asarray(signs[q], x.dtype)[None, :, None, None] * g
    v = v.transpose(1, 0, 2, 3).reshape(16, n * th * tw, c)
    spec = "kpd,kcd->kpc" if transpose else "kpc,kcd->kpd"
    m = jnp.einsum(spec, v, u.reshape(16, *u.shape[2:])).reshape(4, 4, n, th, tw, -1)
    if flipped:  # product (a, b) belongs to tile entry (_FLIP4[a], _FLIP4[b]); a permutation of static slices
        m = [[m[int(_FLIP4[a]), int(_FLIP4[b])] for b in range(4)] for a in range(4)]
    # A^T = [[1, 1, 1, 0], [0, 1, -1, -1]] along both tile axes.
    out = []
    for r in ([m[0][j] + m[1][j] + m[2][j] for j in range(4)], [m[1][j] - m[2][j] - m[3][j] for j in range(4)]):
        out.append(jnp.stack([r[0] + r[1] + r[2], r[1] - r[2] - r[3]], axis=3))  # [N, th, tw, 2, D]
    y = jnp.stack(out, axis=2).reshape(n, 2 * th, 2 * tw, -1)
    return y[:, :h, :w]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_winograd(x, kernel, refuse_kernel_grad):
    return _winograd_same(x, winograd_kernel(kernel))


def _conv_winograd_fwd(x, kernel, refuse_kernel_grad):
    if kernel.perturbed:
        if refuse_kernel_grad:
            raise ValueError(_FROZEN_KERNEL_GRAD)
        # Training: the direct convolution and XLA's own derivatives (kernel gradient included).
        y = _conv(x.value, kernel.value, (1, 1), ((1, 1), (1, 1)))
        return y, (x.value, kernel.value, x.perturbed, True)
    u = winograd_kernel(kernel.value)
    return _winograd_same(x.value, u), (None, u, x.perturbed, False)


def _conv_winograd_bwd(refuse_kernel_grad, res, g):
    x, kernel, need_x, direct = res
    if direct:
        dx, dk = jax.vjp(lambda a, b: _conv(a, b, (1, 1), ((1, 1), (1, 1))), x, kernel)[1](g)
        return (dx if need_x else None), dk
    # The input gradient correlates g with the spatially flipped kernel, contracting its output channels;
    # `kernel` here is the forward pass's transform, reused through the tile permutation.
    return (_winograd_same(g, kernel, transpose=True, flipped=True) if need_x else None), None


_conv_winograd.defvjp(_conv_winograd_fwd, _conv_winograd_bwd, symbolic_zeros=True)


@jax.custom_vjp
def _conv_winograd_frozen(x, kernel, u):
    return _winograd_same(x, u)


def _conv_winograd_frozen_fwd(x, kernel, u):
    # `kernel` is not read (`u` is its transform, `Model.frozen`); it is an argument so that a
    # derivative with respect to it is refused instead of silently being zero.
    if kernel.perturbed or u.perturbed:
        raise ValueError(_FROZEN_KERNEL_GRAD)
    return _winograd_same(x.value, u.value), (u.value, x.perturbed)


def _conv_winograd_frozen_bwd(res, g):
    u, need_x = res
    return (_winograd_same(g, u, transpose=True, flipped=True) if need_x else None), None, None


_conv_winograd_frozen.defvjp(_conv_winograd_frozen_fwd, _conv_winograd_frozen_bwd, symbolic_zeros=True)


# ----------------------------------------------------------------------------- im2col on tiny maps
# XLA's CPU convolution is far off its fast path on maps of 2x2 or less (jax 0.10 on a 2-core AMD
# EPYC, AVX-512, 2026-12-02, `benchmarks/tiny_maps_bench.py`: 512 -> 512 channels, 3x3, batch 8,
# forward 77 ms on 2x2 maps against 4.4 ms on 3x3; with the input gradient 150 against 13 ms). There a
# "same" 3x3 convolution is computed as one matrix product of the taps that read the map (im2col;
# taps that read only zero padding are left out): 1.4 ms forward, 4.1 ms with the input gradient.
# JAXVIZ_IM2COL=0 in the environment (read at import; `IM2COL_AUTO`, read at trace time) turns it off.
IM2COL_AUTO = os.environ.get("JAXVIZ_IM2COL", "1") != "0"


def im2col_applies(kernel_shape, stride, padding, dtype, map_size) -> bool:
    """Whether `conv2d(algorithm="auto")` computes the convolution as one matrix product of its taps
    (`algorithm="im2col"`): the CPU backend, float32, a 3x3 kernel with stride 1 and padding 1 on a
    map `(H, W)` of at most 2x2 (the maps of one Winograd tile, which `winograd_applies` leaves
    direct), where it was measured 1.0-55x faster than XLA's CPU convolution (forward, and forward
    with the input gradient, batch 1 and 8, 64-512 channels; `benchmarks/README.md`, "Convolutions on
    tiny maps")."""
    return (IM2COL_AUTO and _cpu_float32_same_3x3(kernel_shape, stride, padding, dtype)
            and map_size[0] <= 2 and map_size[1] <= 2)


def _im2col_taps(map_size, kernel_size):
    """The taps `(dy, dx)` of a stride-1 convolution with padding `(k - 1) // 2` (odd kernels) whose
    window reads at least one pixel of an `(H, W)` map; the others only multiply zero padding."""
    (h, w), (kh, kw) = map_size, kernel_size
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    # Tap (dy, dx) reads padded rows dy .. dy + h - 1; the map's rows are ph .. ph + h - 1.
    return [(dy, dx) for dy in range(kh) for dx in range(kw)
            if dy + h - 1 >= ph and dy <= ph + h - 1 and dx + w - 1 >= pw and dx <= pw + w - 1]


def _im2col_windows(x, kernel_size, taps):
    """`[N * H * W, len(taps) * C]`: the input under each tap, side by side."""
    n, h, w, c = x.shape
    ph, pw = (kernel_size[0] - 1) // 2, (kernel_size[1] - 1) // 2
    xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    return jnp.concatenate([xp[:, dy:dy + h, dx:dx + w] for dy, dx in taps], axis=-1).reshape(n * h * w, -1)


def _im2col_kernel(kernel, taps):
    """`[len(taps) * C_in, C_out]`: the kernel at `taps`, stacked (a reshape when every tap is used)."""
    kh, kw, cin, cout = kernel.shape
    if len(taps) == kh * kw:
        return kernel.reshape(kh * kw * cin, cout)
    return jnp.concatenate([kernel[dy, dx] for dy, dx in taps], axis=0)


def _im2col(x, kernel):
    """A stride-1 convolution with padding `(kh - 1) // 2` (odd kernels), as one matrix product of the
    input windows `[N * H * W, taps * C_in]` with the kernel's taps `[taps * C_in, C_out]`. Returns
    the output and the windows."""
    n, h, w, _ = x.shape
    taps = _im2col_taps((h, w), kernel.shape[:2])
    cols = _im2col_windows(x, kernel.shape[:2], taps)
    return (cols @ _im2col_kernel(kernel, taps)).reshape(n, h, w, kernel.shape[3]), cols


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_im2col(x, kernel, refuse_kernel_grad):
    return _im2col(x, kernel)[0]


def _conv_im2col_fwd(x, kernel, refuse_kernel_grad):
    if kernel.perturbed and refuse_kernel_grad:
        raise ValueError(_FROZEN_KERNEL_GRAD)
    y, cols = _im2col(x.value, kernel.value)
    return y, (cols if kernel.perturbed else None, kernel.value, x.perturbed)


def _conv_im2col_bwd(refuse_kernel_grad, res, g):
    cols, kernel, need_x = res
    kh, kw, cin, cout = kernel.shape
    n, h, w, _ = g.shape
    taps = _im2col_taps((h, w), (kh, kw))
    g2 = g.reshape(n * h * w, cout)
    dx = dk = None
    if need_x:
        # The windows are a linear function of the input: their transpose adds each tap's block of
        # `g @ kernel^T` back where the tap read it.
        to_cols = functools.partial(_im2col_windows, kernel_size=(kh, kw), taps=taps)
        (dx,) = jax.linear_transpose(to_cols, jax.ShapeDtypeStruct((n, h, w, cin), g.dtype))(
            g2 @ _im2col_kernel(kernel, taps).T)
    if cols is not None:
        per_tap = dict(zip(taps, (cols.T @ g2).reshape(len(taps), cin, cout)))
        zero = jnp.zeros((cin, cout), kernel.dtype)
        dk = jnp.stack([per_tap.get((dy, dx_), zero) for dy in range(kh) for dx_ in range(kw)]).reshape(kernel.shape)
    return dx, dk


_conv_im2col.defvjp(_conv_im2col_fwd, _conv_im2col_bwd, symbolic_zeros=True)


KERNEL_GRADS = ("xla", "shifts", "auto")


def shifted_kernel_grad_applies(kernel_shape) -> bool:
    """Whether `conv2d(kernel_grad="shifts")` computes this kernel's derivative as shifted products:
    kernels of at most 9 taps between 16 or more channels (the 3x3 layers of a transformation network;
    measured slower than XLA's own for 9x9 kernels with 3 channels on either side)."""
    kh, kw, cin, cout = kernel_shape
    return kh * kw <= 9 and cin >= 16 and cout >= 16


def _contract_rows(a, b, chunks: int = 16):
    """`a.T @ b` for `a: [K, M]`, `b: [K, N]` with large `K`: `K` split into `chunks` batched products,
    then summed (XLA CPU, K = 65536, M = 128, N = 64: 14 against 18 ms for the plain product)."""
    k = a.shape[0]
    while k % chunks:
        chunks //= 2
    return jnp.einsum("bkm,bkn->bmn", a.reshape(chunks, k // chunks, -1), b.reshape(chunks, k // chunks, -1)).sum(0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_shifts(x, kernel, stride, pads):
    return _conv(x, kernel, stride, pads)


def _conv_shifts_fwd(x, kernel, stride, pads):
    return _conv(x, kernel, stride, pads), (x, kernel)


def _conv_shifts_bwd(stride, pads, res, g):
    x, kernel = res
    (dx,) = jax.vjp(lambda v: _conv(v, kernel, stride, pads), x)[1](g)
    kh, kw, cin, cout = kernel.shape
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    flat_g = g.reshape(-1, cout)
    # d kernel[dy, dx] = sum over batch and output positions of (input under tap (dy, dx)) x g; the
    # input under each tap, in (dy, dx) order, is what the pooling layers reduce over (`_window_slices`).
    taps = [_contract_rows(xs.reshape(-1, cin), flat_g) for xs in _window_slices(xp, (kh, kw), stride)]
    return dx, jnp.stack(taps).reshape(kernel.shape)


_conv_shifts.defvjp(_conv_shifts_fwd, _conv_shifts_bwd)


def _pads_channels(kernel_shape, stride) -> bool:
    """Whether `conv2d` pads the input channels to 4 (stride 1, 1-3 channels, a kernel of 7x7 or more)."""
    kh, kw, cin, _ = kernel_shape
    return tuple(stride) == (1, 1) and cin < 4 and min(kh, kw) >= 7


def frozen_kernel_applies(kernel_shape, stride) -> bool:
    """Whether `conv2d` uses a precomputed backward kernel for a kernel of this shape and stride
    (stride 1, and not the channel-padded large-kernel case)."""
    return tuple(stride) == (1, 1) and not _pads_channels(kernel_shape, stride)


def conv2d(x, kernel, bias, *, stride=(1, 1), padding=(0, 0), kernel_t=None, kernel_w=None, kernel_grad="xla",
           algorithm="auto"):
    """2-D convolution (cross-correlation, like torch) with zero padding.

    Args:
      x: `[N, H, W, C_in]`.
      kernel: `[kh, kw, C_in, C_out]` (HWIO).
      bias: `[C_out]`.
      stride, padding: `(sh, sw)`, `(ph, pw)`, symmetric zero padding as in `torch.nn.Conv2d`.
      kernel_t: optional `backward_kernel(kernel)`, computed once for a network whose weights stay
        fixed (`Model.frozen`). Where `frozen_kernel_applies`, the input gradient then uses it instead
        of flipping and transposing `kernel` at every call (XLA's CPU backend spent 14% of a VGG16
        input gradient at 128 px on those copies before the Winograd layers); values and input
        gradients are identical, and differentiating with respect to the kernel is refused. Ignored
        elsewhere.
      kernel_w: optional `winograd_kernel(kernel)` `[4, 4, C_in, C_out]`, computed once by
        `Model.frozen` for a convolution that may take the Winograd path: where it does, the forward
        pass and the input gradient use it instead of transforming `kernel` at every call (the
        transforms of VGG16's eight Winograd layers took 44 ms, both directions, against a 164-219 ms
        input gradient at 64 px batch 1 on the 2-core AMD EPYC); differentiating with respect to the
        kernel is refused. Where such a layer takes another path instead (im2col on maps of one tile,
        the direct convolution for images of another dtype) and `kernel_t` is not given, the input
        gradient uses `kernel` itself (flipped in the program on the direct path), and
        differentiating with respect to the kernel is refused there too. A
        `kernel_w` of another shape is ignored.
      kernel_grad: how the derivative with respect to `kernel` is computed (training): `"xla"`,
        autodiff's convolution; `"shifts"`, one matrix product per kernel tap between the input
        values under that tap and the output gradient (where `shifted_kernel_grad_applies`; the
        others stay `"xla"`); `"auto"`, `"shifts"` on the CPU backend and `"xla"` elsewhere. On this
        library's 2-core CPU XLA's kernel gradient of a 3x3 convolution ran 2-3x slower than its
        forward pass (e.g. 128 px, 128 -> 64 channels, batch 4: 583 ms; as shifted products 290 ms;
        torch's 67 ms), see benchmarks/README.md. Values and input gradients are unchanged; kernel
        gradients agree to float rounding. `"shifts"` has no forward-mode (`jax.jvp`) rule.
      algorithm: `"direct"` (XLA's convolution), `"winograd"` (Winograd F(2x2, 3x3); 3x3 kernels,
        stride 1, padding 1 only) or `"auto"`: Winograd where `winograd_applies` (the CPU backend,
        float32, 256 or more channels in and out; measured faster there), else direct. Winograd's
        values and input gradients agree with the direct convolution to float rounding (about 2e-6
        of the largest value in float32); differentiating with respect to the kernel (training) uses
        the direct convolution and its derivatives. Winograd has no forward-mode (`jax.jvp`) rule, and
        a NaN or inf pixel makes its whole 4x4 tile's outputs NaN (one pixel further than direct).

    Returns:
      `[N, H', W', C_out]` with `H' = (H + 2 ph - kh) // sh + 1`.

    Two rewrites keep XLA's CPU convolutions (YNNPACK fusions in jax 0.10) on their fast path; both give
    the same values (the first exactly; the second up to float rounding of a different summation order):
    - no padding ("VALID") is computed with one zero row and column added at the bottom/right and
      cropped away: measured 3-25x faster than the unpadded convolution on CPU (e.g. 9x9, 32 -> 3
      channels at 256 px, batch 4: 1088 -> 83 ms forward); the extra row and column are never read by
      the kept outputs;
    - a stride-1 convolution of 1-3 input channels with a kernel of 7x7 or more gets zero input channels
      up to 4 (3 -> 32 channels, 9x9 at 128 px, batch 4: 61 -> 12 ms forward, 71 -> 24 ms input
      gradient); smaller kernels and strided ones (VGG's and AlexNet's first layers) were measured not
      to gain and are left alone.
    """
    if kernel_grad not in KERNEL_GRADS:
        raise ValueError(f"kernel_grad must be one of {KERNEL_GRADS}; got {kernel_grad!r}")
    kernel = jnp.asarray(kernel, x.dtype)
    kh, kw, cin, _ = kernel.shape
    has_w = kernel_w is not None and tuple(kernel_w.shape) == (4, 4, cin, kernel.shape[3])
    frozen = (kernel_t is not None or has_w) and frozen_kernel_applies(kernel.shape, stride)
    if kernel_grad == "auto":
        kernel_grad = "shifts" if jax.default_backend() == "cpu" else "xla"
    shifts = kernel_grad == "shifts" and not frozen and shifted_kernel_grad_applies(kernel.shape)
    if algorithm not in CONV_ALGORITHMS:
        raise ValueError(f"algorithm must be one of {CONV_ALGORITHMS}; got {algorithm!r}")
    if algorithm == "winograd" and not ((kh, kw) == (3, 3) and tuple(stride) == (1, 1) and tuple(padding) == (1, 1)):
        raise ValueError(f"algorithm='winograd' needs a 3x3 kernel, stride 1 and padding 1; got kernel {kh}x{kw}, stride {tuple(stride)}, padding {tuple(padding)}")
    if algorithm == "winograd" or (
        algorithm == "auto" and not shifts and winograd_applies(kernel.shape, stride, padding, x.dtype, x.shape[1:3])
    ):
        if has_w:
            return _conv_winograd_frozen(x, kernel, jnp.asarray(kernel_w, x.dtype)) + _as_channels(bias, x)
        return _conv_winograd(x, kernel, kernel_t is not None or kernel_w is not None) + _as_channels(bias, x)
    if algorithm == "im2col" and not (kh % 2 and kw % 2 and tuple(stride) == (1, 1)
                                      and tuple(padding) == ((kh - 1) // 2, (kw - 1) // 2)):
        raise ValueError(f"algorithm='im2col' needs an odd kernel, stride 1 and padding (kh - 1) // 2; got kernel "
                         f"{kh}x{kw}, stride {tuple(stride)}, padding {tuple(padding)}")
    if algorithm == "im2col" or (
        algorithm == "auto" and not shifts and im2col_applies(kernel.shape, stride, padding, x.dtype, x.shape[1:3])
    ):
        return _conv_im2col(x, kernel, kernel_t is not None or kernel_w is not None) + _as_channels(bias, x)
    if _pads_channels(kernel.shape, stride):
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, 4 - cin)))
        kernel = jnp.pad(kernel, ((0, 0), (0, 0), (0, 4 - cin), (0, 0)))
    pads = ((padding[0], padding[0]), (padding[1], padding[1]))
    valid = padding[0] == 0 and padding[1] == 0
    if valid:
        pads = ((0, 1), (0, 1))
    if frozen:
        # `Model.frozen` gives a Winograd layer only `kernel_w`; on the direct path its backward
        # kernel is made here (and its weights still cannot be differentiated).
        kernel_t = backward_kernel(kernel) if kernel_t is None else jnp.asarray(kernel_t, x.dtype)
        y = _conv_frozen(x, kernel, kernel_t, pads)
    elif shifts:
        y = _conv_shifts(x, kernel, tuple(stride), pads)
    else:
        y = _conv(x, kernel, tuple(stride), pads)
    if valid:
        ho = (x.shape[1] - kh) // stride[0] + 1
        wo = (x.shape[2] - kw) // stride[1] + 1
        y = y[:, :ho, :wo, :]
    return y + _as_channels(bias, y)


def linear(x, kernel, bias):
    """`x @ kernel + bias` with `x: [N, D_in]`, `kernel: [D_in, D_out]`, `bias: [D_out]`."""
    y = x @ jnp.asarray(kernel, x.dtype)
    return y + _as_channels(bias, y)


def batch_norm(x, scale, bias, mean, var, *, eps=1e-5):
    """Inference-mode batch norm with running statistics (torch's `BatchNorm2d.eval()`)."""
    inv = lax.rsqrt(jnp.asarray(var, x.dtype) + jnp.asarray(eps, x.dtype))
    return (x - _as_channels(mean, x)) * _as_channels(inv * jnp.asarray(scale, x.dtype), x) + _as_channels(
        bias, x
    )


def _pool_out(size, window, stride):
    return (size - window) // stride + 1


def _window_slices(x, window, stride):
    """Yield the `window[0] * window[1]` strided views whose elementwise reduction is the pooling."""
    _, h, w, _ = x.shape
    ho, wo = _pool_out(h, window[0], stride[0]), _pool_out(w, window[1], stride[1])
    for i in range(window[0]):
        for j in range(window[1]):
            yield x[:, i : i + stride[0] * (ho - 1) + 1 : stride[0], j : j + stride[1] * (wo - 1) + 1 : stride[1], :]


def _tiles(x, window):
    """Non-overlapping windows as two extra axes; floor mode drops the ragged edge like torch."""
    n, h, w, c = x.shape
    ho, wo = h // window[0], w // window[1]
    x = x[:, : ho * window[0], : wo * window[1], :]
    return x.reshape(n, ho, window[0], wo, window[1], c)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def max_pool(x, window=(2, 2), stride=(2, 2)):
    """Max pooling, no padding, floor mode (torch's `MaxPool2d(window, stride)`).

    The derivative routes each window's gradient to its FIRST maximum in row-major order, as torch
    does (Zeiler & Fergus's "switches"). Plain `max` would share it between tied inputs, which
    differs from torch wherever a window holds exact ties: after a ReLU zeroed a whole window (the
    deconvnet rule passes gradients there), or on constant images such as a black baseline. Written
    as a `custom_jvp`, so forward mode, reverse mode and higher derivatives all work. NaN propagates:
    a window holding NaN has a NaN output and a NaN derivative (never -inf, another value of the
    window, or a silent zero).

    Non-overlapping windows use reshape + max, whose gradient XLA computes far faster on CPU than
    `reduce_window`'s select-and-scatter; overlapping ones (AlexNet's 3x3/2) an elementwise max of
    strided views.
    """
    window, stride = tuple(window), tuple(stride)
    if window == stride:
        tiles = _tiles(x, window)
        y, has_nan = tiles.max(axis=(2, 4)), jnp.isnan(tiles).any(axis=(2, 4))
    else:
        slices = list(_window_slices(x, window, stride))
        y = functools.reduce(jnp.maximum, slices)
        has_nan = functools.reduce(jnp.logical_or, [jnp.isnan(s) for s in slices])
    # XLA's CPU max need not propagate NaN (fast min/max lowering is its default, and its YNNPACK
    # reductions return the max of the other values, or -inf): make NaN windows NaN explicitly.
    return jnp.where(has_nan, jnp.nan, y)


def _exclusive_any(m, axis):
    """`out[..., k, ...] = any(m[..., :k, ...])` along `axis` (False at k = 0), for short axes."""
    n = m.shape[axis]
    out = jnp.zeros_like(m)
    for shift in range(1, n):
        pad = [(0, 0)] * m.ndim
        pad[axis] = (shift, 0)
        out = out | lax.slice_in_dim(jnp.pad(m, pad), 0, n, axis=axis)
    return out


@max_pool.defjvp
def _max_pool_jvp(window, stride, primals, tangents):
    # A window holding NaN has a NaN maximum (XLA's max propagates NaN) that equals none of its
    # inputs: its "first maximum" is then its first NaN, and the derivative is multiplied by NaN, so
    # that NaN inputs give NaN derivatives (forward and reverse mode) instead of a silent zero.
    (x,), (t,) = primals, tangents
    window, stride = tuple(window), tuple(stride)
    y = max_pool(x, window, stride)
    nan_factor = jnp.where(jnp.isnan(y), jnp.nan, 1).astype(t.dtype)
    if window == stride:
        tiles = _tiles(x, window)
        is_max = (tiles == y[:, :, None, :, None, :]) | jnp.isnan(tiles)
        # A maximum before this element in its window, in row-major order: one earlier in its row,
        # or one in an earlier row. (Shifted ORs, fused into one elementwise loop; a cumsum lowers to
        # int32 conversions and reduce-windows that cost 6% of a VGG16 gradient at 128 px on CPU.)
        before = _exclusive_any(is_max, 4) | _exclusive_any(jnp.any(is_max, axis=4, keepdims=True), 2)
        first = is_max & ~before
        dy = jnp.sum(jnp.where(first, _tiles(t, window), 0), axis=(2, 4))
        return y, dy * nan_factor
    taken = jnp.zeros(y.shape, bool)
    dy = jnp.zeros(y.shape, t.dtype)
    for xs, ts in zip(_window_slices(x, window, stride), _window_slices(t, window, stride)):
        first = ((xs == y) | jnp.isnan(xs)) & ~taken
        dy = dy + jnp.where(first, ts, 0)
        taken = taken | first
    return y, dy * nan_factor


def avg_pool(x, window=(2, 2), stride=(2, 2)):
    """Average pooling, no padding, floor mode (torch's `AvgPool2d(window, stride)`)."""
    window, stride = tuple(window), tuple(stride)
    if window == stride:
        return _tiles(x, window).mean(axis=(2, 4))
    total = functools.reduce(jnp.add, _window_slices(x, window, stride))
    return total / (window[0] * window[1])


@functools.lru_cache(maxsize=None)
def adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """`[n_out, n_in]` averaging matrix of torch's adaptive average pooling along one axis.

    Output cell `i` averages inputs `floor(i * n_in / n_out)` to `ceil((i + 1) * n_in / n_out)`
    (exclusive), which also covers `n_in < n_out` (cells repeat inputs).
    """
    m = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def pooling_folds(map_size, output_size) -> bool:
    """Whether `pooled_linear` folds adaptive pooling of a `map_size` map into the kernel: when the map
    has fewer cells than the pooled grid (VGG below 224 px, AlexNet below about 220 px)."""
    (h, w), (oh, ow) = tuple(map_size), tuple(output_size)
    return h <= oh and w <= ow and h * w < oh * ow


def pooled_linear(x, kernel, bias, output_size):
    """`linear(adaptive_avg_pool(x, output_size) flattened, kernel, bias)` for `x: [N, h, w, C]` and
    `kernel: [oh * ow * C, D_out]` (rows in (oh, ow, C) order), with the pooling folded into the kernel.

    Pooling and the product are linear, so `pool(x) @ K == x @ (P^T K)` with `P` the `[oh*ow, h*w]`
    pooling matrix; when the map is smaller than the pooled grid (`pooling_folds`) the folded kernel
    has `h*w/(oh*ow)` of the rows: the backward pass of an input gradient then reads that small kernel
    instead of the whole one (VGG16 at 64 px: fc6's 411 MB once instead of twice). Equal up to float
    rounding (the sums are taken in another order); other sizes pool first.
    """
    n, h, w, c = x.shape
    oh, ow = output_size
    if not pooling_folds((h, w), output_size):
        return linear(adaptive_avg_pool(x, output_size).reshape(n, -1), kernel, bias)
    m = np.einsum("ph,qw->hwpq", adaptive_pool_matrix(h, oh), adaptive_pool_matrix(w, ow))
    kernel = jnp.asarray(kernel, x.dtype)
    folded = jnp.asarray(m.reshape(h * w, oh * ow), x.dtype) @ kernel.reshape(oh * ow, -1)
    return linear(x.reshape(n, -1), folded.reshape(h * w * c, -1), bias)


def adaptive_avg_pool(x, output_size):
    """torch's `AdaptiveAvgPool2d(output_size)` on `[N, H, W, C]` -> `[N, oh, ow, C]`.

    Written as two small matrix products, exact for every input size and cheap to differentiate.
    The identity case (224 px input to VGG) is skipped.
    """
    _, h, w, _ = x.shape
    oh, ow = output_size
    if h != oh:
        x = jnp.einsum("ph,nhwc->npwc", jnp.asarray(adaptive_pool_matrix(h, oh), x.dtype), x)
    if w != ow:
        x = jnp.einsum("qw,npwc->npqc", jnp.asarray(adaptive_pool_matrix(w, ow), x.dtype), x)
    return x
