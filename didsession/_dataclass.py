"""``dataclass`` for this project: the standard decorator, with its methods made without ``exec``.

Why: every MPyC party imports ~30 of our dataclasses before its first message.  The
standard decorator writes each generated method (``__init__``, ``__repr__``, ``__eq__``,
``__hash__``, and ``__setattr__``/``__delattr__`` when frozen) as source text and compiles
it: ~180 compilations, ~20-25 ms of CPU per party, half of our import time (measured,
README "Start-up").  Three parties sharing two cores pay that three times over.

How: the standard decorator still does everything except those methods (fields,
defaults, ``field()``, ``__match_args__``, ``slots=True``, inheritance), so the result
*is* a dataclass for :func:`dataclasses.fields`, :func:`~dataclasses.replace`,
:func:`~dataclasses.asdict` and ``match``.  The methods are closures over the field
names instead, with the standard semantics (Python 3.11 ``dataclasses``): the same
argument errors, ``FrozenInstanceError``, equality only between instances of one class,
the hash of the compared fields' tuple, ``repr=False`` fields hidden, a user's own method
kept.  ``tests/test_dataclass.py`` checks each against the standard decorator.

Type checkers see the standard decorator (``TYPE_CHECKING``), so mypy checks these classes
exactly as before.  Supported options: ``init``, ``repr``, ``eq``, ``frozen``, ``slots``;
others (``order``, ``unsafe_hash``, ``kw_only``, ``InitVar``) raise ``TypeError`` here
rather than behave differently.

Not for mixing with the standard decorator in one hierarchy: the standard part is run
with ``frozen=False``, so ``__dataclass_params__`` does not record ``frozen``.
"""

from __future__ import annotations

import dataclasses
import reprlib
from collections.abc import Callable
from inspect import Parameter, Signature, signature
from operator import attrgetter
from typing import TYPE_CHECKING, Any, TypeVar

__all__ = ["dataclass"]

_T = TypeVar("_T")
_MISSING: Any = dataclasses.MISSING
_OBJECT_SETATTR = object.__setattr__


class _Factory:
    """Shown as a default made by a factory in signatures, as the standard's marker."""

    def __repr__(self) -> str:
        return "<factory>"


_FACTORY = _Factory()


def _values(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """A function giving an instance's values of ``names`` as a tuple."""
    if not names:
        return lambda obj: ()
    if len(names) == 1:
        get_one = attrgetter(names[0])
        return lambda obj: (get_one(obj),)
    return attrgetter(*names)  # a tuple for 2+ names


def _listed(names: list[str]) -> str:
    """'a', 'a' and 'b', 'a', 'b', and 'c': as Python's own argument errors."""
    quoted = [repr(name) for name in names]
    if len(quoted) <= 2:
        return " and ".join(quoted)
    return ", ".join(quoted[:-1]) + f", and {quoted[-1]}"


def _make_init(
    cls: type,
    init_fields: list[dataclasses.Field[Any]],
    later: list[dataclasses.Field[Any]],
    frozen: bool,
) -> Callable[..., None]:
    names = tuple(f.name for f in init_fields)
    count = len(names)
    index = {name: i for i, name in enumerate(names)}
    specs: tuple[tuple[str, Any, Any], ...] = tuple(
        (f.name, f.default, f.default_factory) for f in init_fields
    )
    required = sum(
        1 for f in init_fields if f.default is _MISSING and f.default_factory is _MISSING
    )
    # Fields with init=False get their default or factory value, as the standard __init__.
    rest: tuple[tuple[str, Any, Any], ...] = tuple(
        (f.name, f.default, f.default_factory)
        for f in later
        if f.default is not _MISSING or f.default_factory is not _MISSING
    )
    put: Callable[[Any, str, Any], None] = _OBJECT_SETATTR if frozen else setattr
    post_init = hasattr(cls, "__post_init__")
    where = f"{cls.__qualname__}.__init__()"

    def bind(self: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        # Checked in the order Python checks a function's arguments, with its messages.
        given = len(args)
        for name in kwargs:
            if name not in index:
                raise TypeError(f"{where} got an unexpected keyword argument {name!r}")
            if index[name] < given:
                raise TypeError(f"{where} got multiple values for argument {name!r}")
        if given > count:
            takes = (
                f"{count + 1} positional argument{'s' if count else ''}"
                if required == count
                else f"from {required + 1} to {count + 1} positional arguments"
            )
            raise TypeError(f"{where} takes {takes} but {given + 1} were given")
        missing = [name for name in names[given:required] if name not in kwargs]
        if missing:
            s = "s" if len(missing) > 1 else ""
            raise TypeError(
                f"{where} missing {len(missing)} required positional argument{s}: "
                + _listed(missing)
            )
        for name, value in zip(names, args, strict=False):
            put(self, name, value)
        for name, default, factory in specs[given:]:
            if name in kwargs:
                put(self, name, kwargs[name])
            elif default is not _MISSING:
                put(self, name, default)
            else:
                put(self, name, factory())

    def __init__(self: Any, /, *args: Any, **kwargs: Any) -> None:
        if kwargs or len(args) != count:
            bind(self, args, kwargs)
        else:
            for name, value in zip(names, args, strict=False):
                put(self, name, value)
        for name, default, factory in rest:
            put(self, name, default if factory is _MISSING else factory())
        if post_init:
            self.__post_init__()

    # inspect.signature(cls) and help() show the fields, as for a standard dataclass.
    params = [Parameter("self", Parameter.POSITIONAL_OR_KEYWORD)]
    for f in init_fields:
        default = f.default
        if default is _MISSING:
            default = Parameter.empty if f.default_factory is _MISSING else _FACTORY
        params.append(
            Parameter(f.name, Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=f.type)
        )
    __init__.__signature__ = Signature(params, return_annotation=None)  # type: ignore[attr-defined]
    return __init__


def _make_repr(names: tuple[str, ...]) -> Callable[[Any], str]:
    @reprlib.recursive_repr()
    def __repr__(self: Any) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        return f"{self.__class__.__qualname__}({shown})"

    return __repr__


def _make_eq(names: tuple[str, ...]) -> Callable[[Any, object], Any]:
    values = _values(names)

    def __eq__(self: Any, other: object) -> Any:
        if other.__class__ is self.__class__:
            return values(self) == values(other)
        return NotImplemented

    return __eq__


def _make_hash(names: tuple[str, ...]) -> Callable[[Any], int]:
    values = _values(names)

    def __hash__(self: Any) -> int:
        return hash(values(self))

    return __hash__


def _add_frozen(cls: type, names: tuple[str, ...], slots: bool) -> None:
    field_names = frozenset(names)
    owner: Any = cls

    def __setattr__(self: Any, name: str, value: Any) -> None:
        if type(self) is cls or name in field_names:
            raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")
        super(owner, self).__setattr__(name, value)

    def __delattr__(self: Any, name: str) -> None:
        if type(self) is cls or name in field_names:
            raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")
        super(owner, self).__delattr__(name)

    for fn in (__setattr__, __delattr__):
        if fn.__name__ in cls.__dict__:
            raise TypeError(f"Cannot overwrite attribute {fn.__name__} in class {cls.__name__}")
        _set(cls, fn.__name__, fn)
    if slots:
        # Pickling and copy.copy of a frozen slotted instance (the standard's helpers).
        def __getstate__(self: Any) -> list[Any]:
            return [getattr(self, f.name) for f in dataclasses.fields(self)]

        def __setstate__(self: Any, state: list[Any]) -> None:
            for f, value in zip(dataclasses.fields(self), state, strict=True):
                _OBJECT_SETATTR(self, f.name, value)

        _set(cls, "__getstate__", __getstate__)
        _set(cls, "__setstate__", __setstate__)


def _set(cls: type, name: str, fn: Callable[..., Any]) -> None:
    fn.__qualname__ = f"{cls.__qualname__}.{name}"
    fn.__module__ = cls.__module__
    setattr(cls, name, fn)


def _process(
    cls: type[_T], *, init: bool, repr: bool, eq: bool, frozen: bool, slots: bool
) -> type[_T]:
    # Whether the body defines __hash__ (Python sets __hash__ = None when it defines __eq__).
    body_hash = cls.__dict__.get("__hash__", _MISSING)
    explicit_hash = not (body_hash is _MISSING or (body_hash is None and "__eq__" in cls.__dict__))
    # An undocumented class gets its signature as __doc__.  The standard part would take it
    # from object.__init__ (init=False there), which parses a text signature with tokenize
    # (~5 ms of regex compiling at start-up); it is set below from our __init__ instead.
    undocumented = not cls.__doc__
    if undocumented:
        cls.__doc__ = "-"
    done: Any = dataclasses.dataclass(
        cls, init=False, repr=False, eq=False, frozen=False, slots=slots
    )
    field_list = list(dataclasses.fields(done))
    pseudo = [f for f in done.__dataclass_fields__.values() if f not in field_list]
    if any(type(f.type) is dataclasses.InitVar or "InitVar" in str(f.type) for f in pseudo):
        raise TypeError(f"{cls.__qualname__}: InitVar is not supported by didsession's dataclass")
    if any(f.kw_only is True for f in field_list):
        raise TypeError(f"{cls.__qualname__}: kw_only is not supported by didsession's dataclass")
    own = done.__dict__
    if init and "__init__" not in own:
        init_fields = [f for f in field_list if f.init]
        seen_default = False
        for f in init_fields:
            if f.default is not _MISSING or f.default_factory is not _MISSING:
                seen_default = True
            elif seen_default:
                raise TypeError(f"non-default argument {f.name!r} follows default argument")
        later = [f for f in field_list if not f.init]
        _set(done, "__init__", _make_init(done, init_fields, later, frozen))
    if undocumented:
        done.__doc__ = None
        try:
            done.__doc__ = done.__name__ + str(signature(done)).replace(" -> None", "")
        except (TypeError, ValueError):  # as the standard: no signature, no text
            done.__doc__ = done.__name__
    if repr and "__repr__" not in own:
        _set(done, "__repr__", _make_repr(tuple(f.name for f in field_list if f.repr)))
    if eq and "__eq__" not in own:
        _set(done, "__eq__", _make_eq(tuple(f.name for f in field_list if f.compare)))
    if frozen:
        _add_frozen(done, tuple(f.name for f in field_list), slots)
    if eq and not explicit_hash:
        if frozen:
            hashed = tuple(f.name for f in field_list if (f.compare if f.hash is None else f.hash))
            _set(done, "__hash__", _make_hash(hashed))
        else:
            done.__hash__ = None  # mutable and comparable: unhashable, as the standard
    result: type[_T] = done
    return result


def _dataclass(
    cls: type[_T] | None = None,
    /,
    *,
    init: bool = True,
    repr: bool = True,
    eq: bool = True,
    frozen: bool = False,
    slots: bool = False,
    **unsupported: Any,
) -> Any:
    """Make ``cls`` a dataclass, as :func:`dataclasses.dataclass` with the same options."""
    if unsupported:
        raise TypeError(f"didsession's dataclass does not support {', '.join(sorted(unsupported))}")

    def wrap(cls: type[_T]) -> type[_T]:
        return _process(cls, init=init, repr=repr, eq=eq, frozen=frozen, slots=slots)

    return wrap if cls is None else wrap(cls)


if TYPE_CHECKING:
    from dataclasses import dataclass as dataclass
else:
    dataclass = _dataclass
