"""Input checks shared by every public function.

Every message says what was expected and what was received, so a user can fix the call without
reading our source. These helpers work on shapes and dtypes only; they never copy the data.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence

import numpy as np

#: Element types the operators compute in (float16/bfloat16 inputs are promoted by the callers).
FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def is_cupy_array(obj) -> bool:
    """Whether ``obj`` is a CuPy array (by type name: NumPy-only users never import CuPy)."""
    return type(obj).__module__.partition(".")[0] == "cupy" and hasattr(obj, "device")


def host_array(a) -> np.ndarray:
    """``a`` as a NumPy array: CuPy arrays and torch tensors are copied to the host.

    The reference solvers use this so a GPU result can be checked with one call; bfloat16
    tensors (which NumPy lacks) arrive as float32.
    """
    if isinstance(a, np.ndarray):
        return a
    if is_cupy_array(a):
        return a.get()
    if type(a).__module__.partition(".")[0] == "torch":
        a = a.detach().cpu()
        return (a.float() if str(a.dtype) == "torch.bfloat16" else a).numpy()
    return np.asarray(a)


def check_float_dtype(dtype, name: str = "x") -> np.dtype:
    """Return ``dtype`` as a NumPy dtype if it is a real floating type, else raise TypeError."""
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name}: expected a real floating-point dtype (float16, float32 or float64), "
            f"got {dtype}"
        )
    return dtype


def normalize_axis(axis, ndim: int, name: str = "axis") -> int:
    """Return ``axis`` as a non-negative index into ``ndim`` dimensions."""
    if type(axis) is int and -ndim <= axis < ndim:
        return axis % ndim
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"{name}: expected an axis in [{-ndim}, {ndim - 1}] for an array of {ndim} "
            f"dimension(s), got {axis}"
        )
    return int(axis) % ndim


#: The most iterations a solve may run or a backward may replay: counts are int32 on the device
#: (``ProxInfo.n_iter``), so a larger value would wrap around silently.
MAX_ITERATIONS = 2**31 - 2


def method_entry(method, methods: dict, default: str):
    """``methods[method]`` for a method name (``"auto"``: ``default``), else a ValueError that
    lists the names."""
    if method == "auto":
        method = default
    if not isinstance(method, str) or method not in methods:
        raise ValueError(f"method: expected one of {['auto', *methods]}, got {method!r}")
    return methods[method]


def check_max_iter(max_iter, minimum: int = 0) -> int:
    """Return ``max_iter`` as an int in ``[minimum, MAX_ITERATIONS]``, else raise.

    bool is refused (``max_iter=True`` is a typo, not one iteration), and so are floats, which
    ``int()`` would truncate silently.
    """
    if type(max_iter) is int and 0 <= minimum <= max_iter <= MAX_ITERATIONS:
        return max_iter  # the common case, without the ABC checks below (~1 us)
    if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral):
        raise TypeError(f"max_iter: expected an int, got {type(max_iter).__name__}")
    if not minimum <= max_iter <= MAX_ITERATIONS:
        raise ValueError(f"max_iter: expected an int in [{minimum}, 2**31 - 2], got {max_iter}")
    return int(max_iter)


def check_tol(tol) -> float:
    """Return ``tol`` as a float if it is a finite real number >= 0, else raise.

    bool and strings are refused rather than converted (``float("1e-3")`` would pass silently).
    """
    if type(tol) is float and 0.0 <= tol < math.inf:
        return tol  # the common case, without the ABC checks below
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise TypeError(f"tol: expected a real number, got {type(tol).__name__}")
    if not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol: expected a finite number >= 0, got {tol}")
    return float(tol)


def normalize_axes(axes, ndim: int) -> tuple[int, int]:
    """Return two distinct non-negative axes for a 2D operator."""
    if not isinstance(axes, (tuple, list, Sequence)) or len(axes) != 2:
        raise ValueError(f"axes: expected a pair of distinct axes, got {axes!r}")
    if ndim < 2:
        raise ValueError(f"x: expected at least 2 dimensions for a 2D operator, got {ndim}")
    a0 = normalize_axis(axes[0], ndim, "axes[0]")
    a1 = normalize_axis(axes[1], ndim, "axes[1]")
    if a0 == a1:
        raise ValueError(f"axes: expected two distinct axes, got {tuple(axes)} (both are {a0})")
    return a0, a1


def reduced_shape(x_shape: tuple[int, ...], tv_axes) -> tuple[int, ...]:
    """``x_shape`` with each (normalized) axis in ``tv_axes`` reduced to 1: the shape of one
    weight per fiber, slice or volume."""
    reduced = list(x_shape)
    for a in tv_axes:
        reduced[a] = 1
    return tuple(reduced)


def lam_to_array(
    lam,
    x_shape: tuple[int, ...],
    tv_axes: tuple[int, ...],
    name: str = "lam",
    *,
    compute_dtype=None,
    scale: int = 1,
):
    """Check one weight and return it as float64, broadcast to one value per fiber/slice.

    ``lam`` may be a scalar or any array that broadcasts (NumPy rules) against ``x_shape`` with
    the axes in ``tv_axes`` reduced to size 1. The result has exactly that reduced shape (a
    read-only broadcast view: no per-fiber copy). ``compute_dtype``: the dtype the kernels read
    ``scale * lam`` in, when not float64; a value it cannot hold is refused (it would round to
    inf: the taut string then returned NaN and the 2D solver a wrong result for a float32 x and
    lam = 1e39, finite in float64).
    """
    reduced = reduced_shape(x_shape, tv_axes)
    lam_arr = check_weight(lam, x_shape, tv_axes, name, compute_dtype=compute_dtype, scale=scale)
    if isinstance(lam_arr, float):
        # What np.broadcast_to returns, built directly (a third of the per-call cost of a scalar).
        view = np.ndarray(reduced, np.float64, np.array([lam_arr]), 0, (0,) * len(reduced))
        view.flags.writeable = False
        return view
    return np.broadcast_to(lam_arr, reduced)


#: Python and NumPy scalar types a weight may be given as (bool is refused, as in arrays).
_SCALAR_TYPES = (float, int, np.floating, np.integer)


def check_weight(
    lam,
    x_shape: tuple[int, ...],
    tv_axes: tuple[int, ...],
    name: str = "lam",
    *,
    compute_dtype=None,
    scale: int = 1,
):
    """The checks of :func:`lam_to_array`, without the broadcast: a real scalar comes back as a
    Python float, anything else as a float64 NumPy array of its own shape.

    Scalars take a path of plain float comparisons (a per-call cost of about a microsecond,
    where array checks cost ~10 us); a value that fails them goes through the array path, so
    the messages are the same either way.
    """
    if (isinstance(lam, _SCALAR_TYPES) and not isinstance(lam, (bool, np.bool_))) or (
        type(lam) is np.ndarray and lam.ndim == 0 and lam.dtype.kind in "iuf"
    ):  # a 0-d array too: what a torch op's scalar weight arrives as
        value = float(lam)
        limit = math.inf if compute_dtype is None else _max_finite(compute_dtype) / scale
        if 0.0 <= value <= limit and value != math.inf:
            return value
    lam_arr = host_array(lam)
    if lam_arr.dtype.kind not in "iuf":
        raise TypeError(f"{name}: expected a real number or real array, got dtype {lam_arr.dtype}")
    given = lam_arr.dtype.type  # bad values are shown in it: float32 -0.1, not -0.10000000149
    lam_arr = lam_arr.astype(np.float64, copy=False)
    reduced = reduced_shape(x_shape, tv_axes)
    fits = _broadcasts_to(lam_arr.shape, reduced)
    if not fits:
        axes_txt = ", ".join(str(a) for a in tv_axes)
        # An array of one weight per TV axis is the likeliest intent; arrays are never pairs.
        hint = (
            f"; for one weight per axis pass a tuple of {len(tv_axes)} numbers, e.g. "
            f"tuple(lam): an array is always per fiber/slice"
            if len(tv_axes) > 1 and lam_arr.shape == (len(tv_axes),)
            else ""
        )
        raise ValueError(
            f"{name}: expected a scalar or an array broadcastable to {reduced} (x's shape "
            f"{tuple(x_shape)} with TV axis/axes {axes_txt} reduced to 1), got shape "
            f"{lam_arr.shape}{hint}"
        )
    limit = math.inf if compute_dtype is None else _max_finite(compute_dtype) / scale
    # One pass for the common case (NaN fails every comparison); the checks below name the value.
    if lam_arr.size == 0:
        return lam_arr
    if lam_arr.size <= _SMALL_WEIGHT:
        # Per-channel weights: Python floats cost ~0.1 us an entry, a NumPy reduction ~2 us.
        # The sum is NaN or infinite when an entry is (min and max are only meaningful then).
        values = lam_arr.ravel().tolist()
        total = sum(values)
        if total - total == 0.0 and min(values) >= 0.0 and max(values) <= limit:
            return lam_arr
    else:
        high = lam_arr.max()
        if lam_arr.min() >= 0.0 and high <= limit and high != math.inf:
            return lam_arr
    if not np.all(np.isfinite(lam_arr)):
        bad = _first_bad(lam_arr, np.isfinite, given)
        raise ValueError(f"{name}: expected finite values, got {bad}")
    if np.any(lam_arr < 0):
        raise ValueError(
            f"{name}: expected values >= 0, got {_first_bad(lam_arr, lambda v: v >= 0, given)}"
        )
    if compute_dtype is not None and np.any(lam_arr > limit):
        held = f"{scale} * {name}" if scale > 1 else name
        raise ValueError(
            f"{name}: expected values <= {limit:.4g} ({held} must fit in "
            f"{np.dtype(compute_dtype)}, the dtype x is computed in), got "
            f"{_first_bad(lam_arr, lambda v: v <= limit, given)}"
        )
    return lam_arr


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether ``shape`` broadcasts to exactly ``target`` (np.broadcast_shapes, without its
    microseconds: this runs on every call with an array weight)."""
    if len(shape) > len(target):
        return False
    for s, t in zip(reversed(shape), reversed(target), strict=False):
        if s != 1 and s != t:
            return False
    return True


#: Entries up to which a weight's values are checked as Python floats (see check_weight).
_SMALL_WEIGHT = 64

_MAX_FINITE = {np.dtype(t): float(np.finfo(t).max) for t in (np.float16, np.float32, np.float64)}


def _max_finite(dtype) -> float:
    """The largest finite value of a float dtype (np.finfo costs microseconds per call)."""
    found = _MAX_FINITE.get(dtype)
    return float(np.finfo(dtype).max) if found is None else found


def unbroadcast_view(a: np.ndarray) -> np.ndarray:
    """``a`` without its broadcast dimensions (stride 0 becomes length 1): a view holding each
    distinct element once, so a check on a weight broadcast to every fiber costs what the weight
    the caller passed costs, not the number of fibers (a scalar lam's check over 262144 fibers
    took 180 us per call)."""
    index = tuple(slice(0, 1) if st == 0 and n > 1 else slice(None)
                  for st, n in zip(a.strides, a.shape, strict=True))  # fmt: skip
    return a[index]


def split_lam_pair(lam) -> tuple[object, object, bool]:
    """Split a 2D weight into (lam0, lam1, is_pair).

    A tuple or list of exactly two entries is a pair (one weight per axis); anything else is one
    weight used for both axes. NumPy arrays are never treated as pairs, so a per-slice array of
    length 2 keeps its meaning.
    """
    if isinstance(lam, (tuple, list)):
        if len(lam) != 2:
            raise ValueError(
                f"lam: expected a scalar, an array, or a pair (lam0, lam1), got a "
                f"{type(lam).__name__} of length {len(lam)}"
            )
        return lam[0], lam[1], True
    return lam, lam, False


def unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``grad`` over the dimensions that broadcasting added to an array of ``shape``."""
    extra = grad.ndim - len(shape)
    grad = grad.sum(axis=tuple(range(extra))) if extra > 0 else grad
    squeeze = tuple(d for d, s in enumerate(shape) if s == 1 and grad.shape[d] != 1)
    if squeeze:
        grad = grad.sum(axis=squeeze, keepdims=True)
    return grad.reshape(shape)


def _first_bad(values: np.ndarray, ok, dtype=np.float64) -> str:
    """The first value failing ``ok``, printed as the shortest repr in the caller's ``dtype``."""
    return str(dtype(values[~ok(values)].flat[0]))


def check_same_array_kind(a, b, name_a: str, name_b: str) -> None:
    """Raise unless ``a`` and ``b`` are both NumPy arrays or both CuPy arrays on one device."""
    kind_a, kind_b = _array_kind(a), _array_kind(b)
    if kind_a != kind_b:
        raise TypeError(
            f"{name_a}: expected the same kind of array as {name_b} ({kind_b}), got {kind_a}"
        )
    if kind_a == "cupy.ndarray" and a.device != b.device:
        raise ValueError(
            f"{name_a}: expected an array on {name_b}'s device {b.device.id}, got device "
            f"{a.device.id}"
        )


def check_like(a, ref, name: str, ref_name: str = "x") -> None:
    """Raise unless ``a`` is a floating array of ``ref``'s kind, device, shape and dtype (a VJP's
    g, a JVP's x_dot, the 1D VJP's y)."""
    check_same_array_kind(a, ref, name, ref_name)
    check_float_dtype(a.dtype, name)
    if a.shape != ref.shape or a.dtype != ref.dtype:
        raise ValueError(
            f"{name}: expected {ref_name}'s shape and dtype {ref.shape} {ref.dtype}, got "
            f"{a.shape} {a.dtype}"
        )


def _array_kind(a) -> str:
    if isinstance(a, np.ndarray):
        return "numpy.ndarray"
    if is_cupy_array(a):
        return "cupy.ndarray"
    return f"{type(a).__module__}.{type(a).__name__}"


def vjp_arguments(name: str, x, lam, g):
    """``(x, lam, g, legacy)``: a VJP's arguments in cupytv's order, ``(x, lam, g)``.

    Before 0.2 the array API took ``(g, x_or_y, lam)``. Such a call is recognisable, so it keeps
    working for one release with a DeprecationWarning instead of silently computing the gradient
    at the wrong point: read in the new order, its ``lam`` is an array of x's shape (the old x or
    y) while its ``g`` is not (the old lam: a number, a pair or a reduced array). A weight of x's
    full shape is possible only when the TV axes have length 1, and then ``g`` has x's shape too.
    ``legacy`` tells the caller the second argument was the old one (for 1D, the output ``y``).
    """

    def full(a):
        return (isinstance(a, np.ndarray) or is_cupy_array(a)) and a.shape == np.shape(x)

    if x is None or not full(lam) or full(g):
        return x, lam, g, False
    warnings.warn(
        f"{name}(g, ..., lam) is deprecated: every VJP now takes (x, lam, g) in that order "
        f"(the reference's); this call was read in the old order, which stops working in the "
        f"next release",
        DeprecationWarning,
        stacklevel=3,
    )
    return lam, g, x, True


def normalize_tv_axes(axes, ndim: int) -> tuple[int, ...]:
    """The TV axes as distinct non-negative ints, in the order given."""
    if ndim == 0:
        raise ValueError("x: expected an array with at least 1 dimension, got a 0-d array")
    if isinstance(axes, (int, np.integer)) and not isinstance(axes, bool):
        axes = (axes,)
    if not isinstance(axes, Sequence) or isinstance(axes, str):
        raise TypeError(f"axes: expected an int or a sequence of ints, got {axes!r}")
    if len(axes) == 0:
        raise ValueError(f"axes: expected at least one axis, got {tuple(axes)!r}")
    norm = tuple(normalize_axis(a, ndim, f"axes[{k}]") for k, a in enumerate(axes))
    repeated = sorted({a for a in norm if norm.count(a) > 1})
    if repeated:
        raise ValueError(
            f"axes: expected distinct axes, got {tuple(axes)!r} (axis {repeated[0]} repeated)"
        )
    return norm


def lam_per_axis(lam, shape, tv_axes, compute):
    """([lam_i as float64 NumPy, x's shape with the TV axes reduced to 1] * m, per_axis).

    ``lam``: a scalar or an array (one weight for every axis), or a tuple/list of one per axis.
    ``compute``: x's compute dtype. Three or more axes run the 1D prox with weight m * lam_i,
    which must fit in it (None: no limit).
    """
    m = len(tv_axes)
    fit = {"compute_dtype": compute, "scale": m if m >= 3 else 1}
    if isinstance(lam, (tuple, list)):
        if len(lam) != m:
            raise ValueError(
                f"lam: expected a scalar, an array, or one weight per axis ({m} for axes "
                f"{tv_axes}), got a {type(lam).__name__} of length {len(lam)}"
            )
        return [
            lam_to_array(w, shape, tv_axes, f"lam[{i}]", **fit) for i, w in enumerate(lam)
        ], True
    return [lam_to_array(lam, shape, tv_axes, **fit)] * m, False
