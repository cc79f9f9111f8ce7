"""Any `flax.linen` image classifier as a jaxviz `Model`.

    class Net(nn.Module):
        act: Callable = nn.relu          # held as an attribute: guided backprop can swap it

        @nn.compact
        def __call__(self, x):
            x = self.act(nn.Conv(16, (3, 3))(x))
            x = nn.max_pool(x, (2, 2), (2, 2))
            x = self.act(nn.Conv(32, (3, 3))(x))
            self.sow("intermediates", "features", x)
            return nn.Dense(10)(x.mean(axis=(1, 2)))

    model = from_flax(Net(), input_shape=(32, 32, 3), relu_attr="act")
    variables = model.init(jax.random.key(0))      # the Flax variables dict is the params pytree
    acts = model.apply(variables, images)          # {"Conv_0", "Conv_1", "features", "Dense_0", "logits"}

Activations are the outputs of every submodule's `__call__` (Flax's `capture_intermediates`), named
by module path (`"Conv_0"`, `"Block_1/Conv_0"`; a module called twice gives `"Conv_0"` and
`"Conv_0.1"`), plus every value `sow`n into the `"intermediates"` collection (under its path and
sow name, e.g. `"features"`, `"Block_1/features"`), plus the module's output under `logits`.
Only 4-D `[N, h, w, C]` and 2-D `[N, D]` values are kept. The order is the forward order, read from
the traced computation.

Geometry (for receptive fields): `nn.Conv` layers with integer or symmetric padding (`"SAME"` only
with stride 1 and an odd (dilated) kernel) are kind `"conv"` with their kernel, stride and padding.
Operations between recorded layers that keep the spatial size are assumed pointwise (activations,
normalisation): composite modules, sown values, `nn.BatchNorm`, `nn.Dropout`, `nn.LayerNorm` ... that
keep the size are `"act"`/`"bn"`. Anything else spatial (a size change between recorded layers, such
as `nn.max_pool` written as a function, or a module of unknown type) is `"map"`: receptive fields
after it raise a clear error. A size-preserving spatial operation written as a function between
recorded layers (a stride-1 "SAME" pooling, a raw `lax.conv`) is not visible; describe such layers
with `layer_specs=`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Var

from jaxviz.models import base
from jaxviz.models.base import LayerSpec, Model

# Pointwise (spatially) module types, by class name, and the kind they get.
_POINTWISE = {"BatchNorm": "bn", "Dropout": "act", "Dense": "act", "PReLU": "act", "LayerNorm": "act",
              "RMSNorm": "act"}
_OUTPUT_KEY = "__call__"


def _nn():
    try:
        import flax.linen as nn
    except ImportError as e:  # flax is a dependency of jaxviz; this only guards broken installs
        raise ImportError("jaxviz.models.from_flax needs flax: pip install flax") from e
    return nn


def _strip_intermediates(variables) -> dict:
    """The variables dict without a stale `"intermediates"` collection (plain dict)."""
    return {k: v for k, v in dict(variables).items() if k != "intermediates"}


def _flatten_intermediates(tree: Mapping, prefix: tuple = ()) -> list[tuple[str, int, Any]]:
    """`[(name, occurrence, value)]` from the nested "intermediates" collection.

    Module outputs sit under `path/__call__` and are named by the path; sown values under
    `path/sow_name`. Each entry is a tuple (one element per call / sow).
    """
    out = []
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.extend(_flatten_intermediates(value, prefix + (key,)))
            continue
        if key == _OUTPUT_KEY:
            if not prefix:
                continue  # the top module's own output: reported as `logits`
            name = "/".join(prefix)
        else:
            name = "/".join(prefix + (key,))
        values = value if isinstance(value, tuple) else (value,)
        for i, v in enumerate(values):
            out.append((name if i == 0 else f"{name}.{i}", i, v))
    return out


def _keep(value) -> bool:
    return isinstance(value, (jax.Array, np.ndarray)) and value.ndim in (2, 4)


def _pair(v, default) -> tuple[int, int]:
    if v is None:
        return (default, default)
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(a) for a in v)
    return v if len(v) == 2 else (v[0], v[0]) if len(v) == 1 else None


def _conv_geometry(mdl) -> Optional[tuple[tuple, tuple, tuple]]:
    """`(kernel, stride, padding)` of a 2-D `nn.Conv` with symmetric zero padding, or `None`."""
    from flax.linen.linear import canonicalize_padding

    kernel = _pair(mdl.kernel_size, 1)
    stride = _pair(mdl.strides, 1)
    dil = _pair(mdl.kernel_dilation, 1)
    in_dil = _pair(mdl.input_dilation, 1)
    if kernel is None or stride is None or dil is None or in_dil != (1, 1):
        return None
    # A dilated kernel covers (k - 1) * d + 1 pixels: the receptive-field recurrence and the output
    # size formula hold with that effective kernel.
    eff = tuple((k - 1) * d + 1 for k, d in zip(kernel, dil))
    pad = canonicalize_padding(mdl.padding, 2)
    if pad == "VALID":
        padding = (0, 0)
    elif pad == "SAME":
        if stride != (1, 1) or any(k % 2 == 0 for k in eff):
            return None  # asymmetric or input-size dependent
        padding = tuple((k - 1) // 2 for k in eff)
    elif isinstance(pad, str):
        return None  # CIRCULAR, REFLECT, CAUSAL: not zero padding
    else:
        pad = [tuple(p) for p in pad]
        if len(pad) != 2 or any(lo != hi for lo, hi in pad):
            return None
        padding = (pad[0][0], pad[1][0])
    return eff, stride, padding


@dataclasses.dataclass
class _Call:
    """A submodule `__call__` seen while tracing: the module, its input and output shapes."""

    module: Any
    in_shape: Optional[tuple]
    out_shape: Optional[tuple]
    rank: int


def _swap_activation(module, attr: str, fn: Callable):
    """`module` with `attr = fn` on itself and on every submodule held in a dataclass field
    (directly or in a list/tuple/dict) that has that attribute."""
    nn = _nn()

    def swap_value(v):
        if isinstance(v, nn.Module):
            return swap_module(v)
        if isinstance(v, (list, tuple)):
            new = [swap_value(x) for x in v]
            return type(v)(new) if any(a is not b for a, b in zip(new, v)) else v
        if isinstance(v, dict):
            new = {k: swap_value(x) for k, x in v.items()}
            return new if any(new[k] is not v[k] for k in v) else v
        return v

    def swap_module(m):
        changes = {}
        for f in dataclasses.fields(m):
            if f.name in ("parent", "name"):
                continue
            if f.name == attr:
                changes[attr] = fn
                continue
            value = getattr(m, f.name)
            new = swap_value(value)
            if new is not value:
                changes[f.name] = new
        return m.clone(**changes) if changes else m

    return swap_module(module)


def _field_names(module) -> set:
    return {f.name for f in dataclasses.fields(module)}


def from_flax(
    module,
    input_shape: Optional[Sequence[int]] = None,
    *,
    example=None,
    logits: str = "logits",
    name: Optional[str] = None,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    relu_attr: Optional[str] = None,
    class_names: Optional[Sequence[str]] = None,
    features: Optional[str] = None,
    min_size: Optional[Sequence[int]] = None,
    apply_kwargs: Optional[Mapping[str, Any]] = None,
    layer_specs: Optional[Mapping[str, LayerSpec]] = None,
) -> Model:
    """Wrap a `flax.linen` module taking images `[N, H, W, C]` as a jaxviz `Model`.

    The model's params are the module's Flax variables dict (`model.init(key)` calls
    `module.init`); `model.apply(variables, images)` returns the named activations described in the
    module docstring, in forward order, the module's output last under `logits`.

    Args:
      module: an unbound `flax.linen.Module` whose `__call__(x, **apply_kwargs)` takes preprocessed
        images `[N, H, W, C]` and returns one array (class scores `[N, K]`, or a map).
      input_shape: `(H, W, C)` (or `(N, H, W, C)`) of the images the network was built for; or
      example: an example batch `[N, H, W, C]` (only its shape is used).
      logits: name given to the module's output; it is the model's class-score layer when the output
        is `[N, K]`.
      name: model name (default: the module's class name).
      mean, std: per-channel normalisation applied before the module (default: none).
      relu_attr: name of the dataclass attribute holding the module's activation (e.g. `"act"` for
        `act: Callable = nn.relu` called as `self.act(x)`). With it, `apply(..., relu=f)` runs
        `module.clone(act=f)` (and likewise every submodule held in a field with that attribute;
        submodules created inside `__call__` should be given `act=self.act`). Guided backprop and the
        deconvnet rule need it; without it `apply(relu=...)` raises.
      class_names: one name per class.
      features: embedding layer for nearest neighbours / t-SNE; default the last `[N, D]` layer
        before the output.
      min_size: smallest `(H, W)` the network accepts (checked by `apply`); default `(1, 1)`.
      apply_kwargs: extra keyword arguments for `module.apply`/`module.init`, e.g. `{"train": False}`.
      layer_specs: `{name: LayerSpec}` replacing inferred descriptions, for layers whose geometry the
        adapter cannot read.

    Returns:
      A `Model` (`pool_modes=("max",)`). `until=` is honoured by computing every layer and dropping
      the ones after it; under `jit` XLA removes the unused computation.

    Raises:
      ValueError: no input shape, a bound module, a module output that is not one array, a name
        clash with `logits`, or a `relu_attr` the module does not have or never calls.
    """
    nn = _nn()
    if not isinstance(module, nn.Module):
        raise ValueError(f"from_flax expects a flax.linen.Module; got {type(module).__name__}")
    if module.scope is not None:
        raise ValueError("from_flax expects an unbound module (not one inside apply/bind); pass module.clone()")
    if (input_shape is None) == (example is None):
        raise ValueError("give exactly one of input_shape=(H, W, C) and example=<images [N, H, W, C]>")
    shape = tuple(int(s) for s in (input_shape if input_shape is not None else np.shape(example)))
    if len(shape) == 4:
        shape = shape[1:]
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (H, W, C) or (N, H, W, C); got {shape}")
    H, W, C = shape
    if len(mean) != C or len(std) != C:
        raise ValueError(f"mean and std need one value per channel ({C}); got {len(mean)} and {len(std)}")
    apply_kwargs = dict(apply_kwargs or {})
    if relu_attr is not None and relu_attr not in _field_names(module):
        raise ValueError(
            f"{type(module).__name__} has no attribute {relu_attr!r} to swap the ReLU: declare it as a field, "
            f"e.g. `{relu_attr}: Callable = nn.relu`, and call self.{relu_attr}(x)"
        )

    @jax.jit
    def init_fn(key):
        # Jitted: Flax's initialisers run op by op otherwise, each op compiled on its own (slow).
        return _strip_intermediates(module.init(key, jnp.zeros((1, H, W, C), jnp.float32), **apply_kwargs))

    def run(params, x, relu=None, perturb=None):
        mdl = module if relu is None else _swap_activation(module, relu_attr, relu)

        def call():
            return mdl.apply(
                _strip_intermediates(params), x, capture_intermediates=True, mutable=["intermediates"], **apply_kwargs
            )

        if perturb:
            # Add each delta to its submodule's output as the module returns (Flax method interception),
            # so that everything after it sees the perturbed value.
            seen: dict[str, int] = {}

            def add(next_fun, args, kwargs, ctx):
                out = next_fun(*args, **kwargs)
                if ctx.method_name == _OUTPUT_KEY and ctx.module.path:
                    path = "/".join(ctx.module.path)
                    i = seen.get(path, 0)
                    seen[path] = i + 1
                    key = path if i == 0 else f"{path}.{i}"
                    if key in perturb:
                        out = out + perturb[key]
                return out

            with _nn().intercept_methods(add):
                out, state = call()
        else:
            out, state = call()
        return out, _flatten_intermediates(state.get("intermediates", {}))

    # ---- one abstract trace: names, shapes, module geometry and forward order.
    calls: dict[tuple, list] = {}
    counter = [0]

    def interceptor(next_fun, args, kwargs, ctx):
        out = next_fun(*args, **kwargs)
        if ctx.method_name == _OUTPUT_KEY and ctx.module.path:
            x = args[0] if args else None
            calls.setdefault(tuple(ctx.module.path), []).append(
                _Call(ctx.module, tuple(getattr(x, "shape", ())) or None, tuple(getattr(out, "shape", ())) or None,
                      counter[0])
            )
            counter[0] += 1
        return out

    var_shapes = jax.eval_shape(init_fn, jax.random.key(0))
    meta: dict = {}

    def traced(params, x):
        out, records = run(params, x)
        if not isinstance(out, jax.Array):
            raise ValueError(
                f"from_flax needs a module that returns one array; {type(module).__name__} returned "
                f"{type(out).__name__}"
            )
        kept = [(n, i, v) for n, i, v in records if _keep(v)]
        meta["names"] = [n for n, _, _ in kept]
        meta["occurrence"] = [i for _, i, _ in kept]
        meta["shapes"] = [tuple(v.shape) for _, _, v in kept]
        meta["out_shape"] = tuple(out.shape)
        return [v for _, _, v in kept] + [out]

    with nn.intercept_methods(interceptor):
        closed = jax.make_jaxpr(traced)(var_shapes, jax.ShapeDtypeStruct((1, H, W, C), jnp.float32))
    names, shapes, out_shape = meta["names"], meta["shapes"], meta["out_shape"]
    if logits in names:
        raise ValueError(f"the output name logits={logits!r} is also a layer name; choose another")

    # Forward order: index of the equation computing each value (inputs: -1); ties (the same value
    # under two names, e.g. a block returning its last conv's output) by when the module returned.
    jaxpr = closed.jaxpr
    producer = {}
    for i, eqn in enumerate(jaxpr.eqns):
        for v in eqn.outvars:
            producer[v] = i
    def produced_at(v):
        return producer.get(v, -1) if isinstance(v, Var) else -1

    outvars = jaxpr.outvars
    out_var = outvars[-1]
    records = []
    for k, (nm, occ, shp) in enumerate(zip(names, meta["occurrence"], shapes)):
        path = tuple(nm.split(".")[0].split("/"))
        call_list = calls.get(path, [])
        call = call_list[occ] if occ < len(call_list) else None  # None: a sown value
        rank = call.rank if call is not None else counter[0] + k
        records.append((produced_at(outvars[k]), rank, nm, shp, call, outvars[k] is out_var))
    records.sort(key=lambda r: (r[0], r[1]))
    sown = {r[2] for r in records if r[4] is None}

    has_children = {p[:i] for p in calls for i in range(1, len(p))}
    specs = []
    prev_hw = (H, W)
    seen_flat = False
    for _, _, nm, shp, call, _ in records:
        if len(shp) == 2:
            specs.append(LayerSpec(nm, "fc", shp[-1]))
            seen_flat = True
            continue
        hw = shp[1:3]
        kind, geom = "map", None
        if not seen_flat:
            mdl = call.module if call is not None else None
            if mdl is not None and isinstance(mdl, (nn.Conv, nn.ConvLocal)):
                geom = _conv_geometry(mdl)
                if geom is not None and call.in_shape is not None and tuple(call.in_shape[1:3]) == tuple(prev_hw):
                    (kh, kw), (sh, sw), (ph, pw) = geom
                    expect = ((prev_hw[0] + 2 * ph - kh) // sh + 1, (prev_hw[1] + 2 * pw - kw) // sw + 1)
                    kind = "conv" if expect == tuple(hw) else "map"
            elif tuple(hw) == tuple(prev_hw):
                if mdl is None or tuple(call.module.path) in has_children:
                    kind = "act"  # a sown value or a composite module: its inner modules are recorded
                else:
                    kind = _POINTWISE.get(type(mdl).__name__, "map")
                    if kind != "map" and type(mdl).__name__ in ("LayerNorm", "RMSNorm"):
                        axes = getattr(mdl, "reduction_axes", -1)
                        kind = "act" if axes in (-1, (-1,), 3, (3,)) else "map"
        if kind == "conv":
            specs.append(LayerSpec(nm, "conv", shp[-1], geom[0], geom[1], geom[2]))
        else:
            specs.append(LayerSpec(nm, kind, shp[-1]))
        prev_hw = hw
    if len(out_shape) == 2:
        specs.append(LayerSpec(logits, "fc", out_shape[-1]))
    elif len(out_shape) == 4:
        # The top module is composite too: same-size output after its recorded layers is pointwise.
        same = not seen_flat and tuple(out_shape[1:3]) == tuple(prev_hw)
        specs.append(LayerSpec(logits, "act" if same else "map", out_shape[-1]))
    else:
        raise ValueError(f"the module's output must be [N, K] or [N, h, w, C]; got shape {out_shape}")
    if layer_specs:
        by_name = {s.name: s for s in specs}
        for key, spec in layer_specs.items():
            if key not in by_name:
                raise ValueError(f"layer_specs names {key!r}, which is not a layer; layers: {', '.join(by_name)}")
            if spec.name != key:
                spec = dataclasses.replace(spec, name=key)
            by_name[key] = spec
        specs = [by_name[s.name] for s in specs]
    specs = tuple(specs)
    order = [s.name for s in specs]

    if features is None:
        aliases = {r[2] for r in records if r[5]}
        flat = [r[2] for r in records if len(r[3]) == 2 and r[2] not in aliases]
        features = flat[-1] if flat else None

    # ---- relu_attr: make sure swapping it really reaches the computation.
    if relu_attr is not None:
        seen = []

        def probe(x):
            seen.append(True)
            return jax.nn.relu(x)

        jax.eval_shape(lambda p, x: run(p, x, probe)[0], var_shapes, jax.ShapeDtypeStruct((1, H, W, C), jnp.float32))
        if not seen:
            raise ValueError(
                f"{type(module).__name__} never calls self.{relu_attr}: swapping it would not change the network; "
                f"call self.{relu_attr}(x) instead of nn.relu(x)"
            )

    module_outputs = {s.name for s in specs} - sown - {logits}

    def apply_fn(params, x, *, until=None, relu=base._default_relu, pool="max", perturb=None):
        swap = relu_attr is not None and relu is not base._default_relu
        perturb = dict(perturb or {})
        out_delta = perturb.pop(logits, None)
        bad = [n for n in perturb if n not in module_outputs]
        if bad:
            raise ValueError(
                f"cannot perturb {bad}: only submodule outputs and the model output can be perturbed, not sown values"
            )
        out, recs = run(params, x, relu if swap else None, perturb)
        if out_delta is not None:
            out = out + out_delta
        values = {n: v for n, _, v in recs}
        values[logits] = out
        acts = {}
        for n in order:
            acts[n] = values[n]
            if n == until:
                break
        return acts

    return Model(
        name=name or type(module).__name__,
        layers=specs,
        apply_fn=apply_fn,
        init_fn=init_fn,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        input_size=(H, W),
        min_size=tuple(min_size) if min_size is not None else (1, 1),
        in_channels=C,
        logits=logits if len(out_shape) == 2 else None,
        features=features,
        class_names=None if class_names is None else tuple(class_names),
        swappable_relu=relu_attr is not None,
        pool_modes=("max",),
    )
