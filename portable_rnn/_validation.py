"""One validation layer for every public function.

Every check reads only static facts (library, dtype, shape, device), so under
``jax.jit`` it runs once at trace time and costs nothing when the compiled
function runs. Messages name the argument, what it got and what was expected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from array_api_compat import array_namespace, device, is_array_api_obj

__all__ = [
    "namespace_of",
    "check_floating",
    "check_shape",
    "check_keys",
    "check_same_device",
    "library_name",
    "check_time_steps",
]


def library_name(xp) -> str:
    """Short name of an array namespace (``numpy``, ``jax``, ``torch``, ...)."""
    name = getattr(xp, "__name__", repr(xp))
    for prefix in ("array_api_compat.", "array_api_strict", "jax.numpy"):
        if name.startswith(prefix):
            if prefix == "jax.numpy":
                return "jax"
            if prefix == "array_api_strict":
                return "array_api_strict"
            return name[len(prefix):].split(".")[0]
    return name.split(".")[0]


def namespace_of(**arrays):
    """Return the array namespace shared by the named arrays.

    ``None`` values are ignored. Raises ``TypeError`` naming the argument that
    is not an array, or the two arguments that come from different libraries.
    """
    first_name, first_xp = None, None
    for name, value in arrays.items():
        if value is None:
            continue
        if not is_array_api_obj(value):
            raise TypeError(
                f"{name} must be an array (numpy, cupy, jax, torch or array_api_strict), "
                f"got {type(value).__name__}"
            )
        xp = array_namespace(value)
        if first_xp is None:
            first_name, first_xp = name, xp
        elif xp is not first_xp:
            raise TypeError(
                f"{first_name} is a {library_name(first_xp)} array but {name} is a "
                f"{library_name(xp)} array; pass arrays from one library"
            )
    if first_xp is None:
        raise TypeError("expected at least one array argument")
    return first_xp


def check_floating(xp, **arrays):
    """Check that the named arrays share one real floating dtype; return it.

    There is no silent promotion: an integer array, or a float32 array beside
    a float64 one, raises ``TypeError`` naming the argument.
    """
    first_name, dtype = None, None
    for name, value in arrays.items():
        if value is None:
            continue
        if not xp.isdtype(value.dtype, "real floating"):
            raise TypeError(
                f"{name} has dtype {value.dtype}; expected a real floating dtype "
                "(float32 or float64). Cast it explicitly, e.g. xp.astype(x, xp.float64)"
            )
        if value.dtype not in (xp.float32, xp.float64):
            # Half precision loses the recurrence within tens of steps, and
            # upcasting silently would hide a 2x memory cost: refuse, say how.
            raise TypeError(
                f"{name} has dtype {value.dtype}; portable_rnn computes in float32 or "
                "float64. Cast it explicitly, e.g. xp.astype(x, xp.float32)"
            )
        if dtype is None:
            first_name, dtype = name, value.dtype
        elif value.dtype != dtype:
            raise TypeError(
                f"{name} has dtype {value.dtype} but {first_name} has dtype {dtype}; "
                "cast them to one floating dtype"
            )
    return dtype


def check_same_device(**arrays):
    """Check that the named arrays live on one device; return it.

    Under ``jax.jit`` devices are unknown (``None``) and the check is skipped.
    """
    first_name, first_device = None, None
    for name, value in arrays.items():
        if value is None:
            continue
        try:
            dev = device(value)
        except Exception:  # tracers without a committed device
            dev = None
        if dev is None:
            continue
        if first_device is None:
            first_name, first_device = name, dev
        elif dev != first_device:
            raise ValueError(
                f"{name} is on device {dev} but {first_name} is on device "
                f"{first_device}; move them to one device"
            )
    return first_device


def _format_shape(expected: Sequence) -> str:
    return "(" + ", ".join("*" if e is None else str(e) for e in expected) + (
        ",)" if len(expected) == 1 else ")"
    )


def check_shape(name: str, value, expected: Sequence, meaning: str = "") -> None:
    """Check ``value.shape`` against ``expected`` (``None`` matches any size).

    Parameters
    ----------
    name : str
        Argument name used in the message.
    value : array
    expected : sequence of int or None
    meaning : str, optional
        What the axes are, e.g. ``"(n_x, m)"``, added to the message.
    """
    shape = tuple(value.shape)
    ok = len(shape) == len(expected) and all(
        e is None or s == e for s, e in zip(shape, expected)
    )
    if not ok:
        what = f" {meaning}" if meaning else ""
        raise ValueError(
            f"{name} has shape {shape}; expected {_format_shape(expected)}{what}"
        )


def check_time_steps(name: str, value, axis: int) -> None:
    """Refuse an empty time axis: a recurrence over zero steps has no output.

    (The batch axis may be empty: that is ordinary, empty work.)
    """
    if value.shape[axis] == 0:
        raise ValueError(
            f"{name} has shape {tuple(value.shape)}; expected at least one time step "
            f"(axis {axis} is time)"
        )


def check_keys(name: str, mapping: Mapping, required: Sequence[str]) -> None:
    """Check that a parameter dict holds every required key."""
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{name} must be a dict of arrays, got {type(mapping).__name__}")
    missing = [k for k in required if k not in mapping]
    if missing:
        raise ValueError(
            f"{name} is missing key(s) {missing}; expected keys {list(required)}, "
            f"got {sorted(mapping)}"
        )
