"""didsession._dataclass against the standard decorator: same classes, no compilation.

Each test builds one class body twice, once with :func:`dataclasses.dataclass` and once
with ours, does the same things to both and compares what it observed (values, reprs,
exception types and messages).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import itertools
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import pytest

from didsession._dataclass import _dataclass as ours
from didsession.session.events import Event, MessageReceived, SessionClosed

standard: Callable[..., Any] = dataclasses.dataclass
OPTIONS = [
    dict(zip(("frozen", "slots", "eq", "repr"), combo, strict=True))
    for combo in itertools.product((True, False), repeat=4)
]


def outcome(fn: Callable[[], Any]) -> Any:
    """What calling ``fn`` gives: its result, or the exception's type and message."""
    try:
        return ("ok", fn())
    except Exception as exc:
        return ("raised", type(exc).__name__, str(exc))


def shown(obj: object) -> str:
    """``repr`` without the address that object's default repr has."""
    return re.sub(r" at 0x[0-9a-f]+", "", repr(obj))


def point_class(decorator: Callable[..., Any], **options: Any) -> Any:
    class Point:
        """A point with a label."""

        x: int
        y: int = 0
        tags: list[str] = dataclasses.field(default_factory=list, compare=False)
        secret: bytes = dataclasses.field(default=b"", repr=False)
        unit: ClassVar[str] = "mm"

    return decorator(**options)(Point)


CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((1,), {}),
    ((1, 2), {}),
    ((1, 2, ["a"], b"k"), {}),
    ((), {"x": 3, "secret": b"s"}),
    ((1,), {"tags": ["b"], "y": 5}),
    ((), {}),
    ((1, 2, [], b"", 5), {}),
    ((1,), {"x": 2}),
    ((1,), {"z": 2}),
    ((), {"y": 1}),
]


def observe(cls: Any) -> list[Any]:
    seen: list[Any] = [
        [f.name for f in dataclasses.fields(cls)],
        cls.__match_args__,
        str(inspect.signature(cls)),
        cls.__doc__,
        hasattr(cls, "__slots__"),
        cls.__hash__ is None,
    ]
    made = []
    for args, kwargs in CALLS:
        result = outcome(lambda args=args, kwargs=kwargs: cls(*args, **kwargs))
        if result[0] == "ok":
            made.append(result[1])
            seen.append(("made", shown(result[1])))
        else:
            seen.append(result)
    a, b, c = cls(1, 2, ["a"]), cls(1, 2, ["b"]), cls(1, 3)
    seen += [a == b, a == c, a != c, a == (1, 2), a.__eq__(object())]
    seen.append(outcome(lambda: hash(a) == hash(b)))
    # The hash of the compared fields' tuple, where there is one (else the identity's).
    seen.append(outcome(lambda: hash(a)) if cls.__hash__ is not object.__hash__ else "id")
    seen.append(outcome(lambda: setattr(a, "x", 9)))
    seen.append(outcome(lambda: delattr(cls(5), "y")))
    other = outcome(lambda: setattr(a, "other", 1))
    # Python 3.11's frozen slotted classes raise TypeError from super() here (their
    # __setattr__ holds the class from before slots were added); ours raises what it means.
    seen.append(
        ("raised", "FrozenInstanceError") if "super(type, obj)" in str(other) else other[:2]
    )
    seen.append(shown(a))
    seen.append(dataclasses.asdict(b))
    seen.append(shown(dataclasses.replace(b, y=7)))
    seen.append(outcome(lambda: dataclasses.replace(b, q=7)))
    for clone in (copy.copy(c), copy.deepcopy(c)):
        seen += [clone == c, shown(clone), clone is not c]
    match c:
        case cls(x, y):
            seen.append(("matched", x, y))
    seen.append(len(made))
    return seen


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(k for k, v in o.items() if v))
def test_a_class_behaves_as_the_standard_decorator_makes_it(options: dict[str, bool]) -> None:
    expected = observe(point_class(standard, **options))
    assert observe(point_class(ours, **options)) == expected
    assert any(item[0] == "raised" for item in expected if isinstance(item, tuple))


def hierarchy(decorator: Callable[..., Any]) -> tuple[Any, Any, Any]:
    @decorator(frozen=True, slots=True)
    class Base:
        """Base of the events."""

    @decorator(frozen=True, slots=True)
    class Moved(Base):
        """Something moved."""

        steps: int
        where: str = "here"

    @decorator(frozen=True, slots=True)
    class Stopped(Base):
        """Something stopped."""

        steps: int

    return Base, Moved, Stopped


def test_an_event_hierarchy_behaves_as_with_the_standard_decorator() -> None:
    def observe_hierarchy(classes: tuple[Any, Any, Any]) -> list[Any]:
        base, moved, stopped = classes
        m, s = moved(3), stopped(3)
        seen: list[Any] = [m == s, m == moved(3, "here"), base() == base(), repr(m), repr(base())]
        seen += [hash(m) == hash(moved(3)), isinstance(m, base), moved.__match_args__]
        seen.append(outcome(lambda: setattr(m, "steps", 1)))
        seen.append([f.name for f in dataclasses.fields(moved)])
        for event in (m, s):
            match event:
                case moved(steps, where):
                    seen.append(("moved", steps, where))
                case stopped(steps):
                    seen.append(("stopped", steps))
        return seen

    assert observe_hierarchy(hierarchy(ours)) == observe_hierarchy(hierarchy(standard))


def test_post_init_init_false_fields_and_own_methods_are_kept() -> None:
    def make(decorator: Callable[..., Any]) -> Any:
        @decorator(frozen=True, slots=True)
        class Reading:
            """A reading."""

            value: int
            doubled: int = dataclasses.field(init=False, default=0)
            log: list[int] = dataclasses.field(init=False, default_factory=list)

            def __post_init__(self) -> None:
                object.__setattr__(self, "doubled", 2 * self.value)

            def __repr__(self) -> str:
                return f"<reading {self.value}>"

        return Reading

    for decorator in (standard, ours):
        reading = make(decorator)(4)
        assert (reading.doubled, reading.log, repr(reading)) == (8, [], "<reading 4>")
    assert str(inspect.signature(make(ours))) == str(inspect.signature(make(standard)))


def test_an_undocumented_class_gets_its_signature_as_doc() -> None:
    def make(decorator: Callable[..., Any]) -> Any:
        class Undocumented:
            a: int
            b: list[int] = dataclasses.field(default_factory=list)

        return decorator(frozen=True, slots=True)(Undocumented)

    assert make(ours).__doc__ == make(standard).__doc__
    assert make(ours).__doc__.startswith("Undocumented(a: 'int'")


def test_a_class_with_its_own_init_keeps_it() -> None:
    @ours(frozen=True, slots=True, init=False)
    class Reply:
        """A reply."""

        code: int

        def __init__(self, text: str) -> None:
            object.__setattr__(self, "code", int(text))

    assert Reply("42") == Reply("42") and Reply("42").code == 42
    assert hash(Reply("1")) == hash(Reply("1"))


def test_what_the_standard_decorator_refuses_is_refused() -> None:
    def non_default_after_default(decorator: Callable[..., Any]) -> Any:
        class Bad:
            a: int = 1
            b: int

        return outcome(lambda: decorator(frozen=True)(Bad))

    assert non_default_after_default(ours) == non_default_after_default(standard)

    def frozen_with_own_setattr(decorator: Callable[..., Any]) -> Any:
        class Bad:
            a: int

            def __setattr__(self, name: str, value: Any) -> None:
                pass

        return outcome(lambda: decorator(frozen=True)(Bad))

    assert frozen_with_own_setattr(ours) == frozen_with_own_setattr(standard)
    assert frozen_with_own_setattr(ours)[0] == "raised"


def test_options_it_does_not_implement_raise_instead_of_behaving_differently() -> None:
    class Ordered:
        a: int

    with pytest.raises(TypeError, match="does not support order"):
        ours(order=True)(Ordered)

    class KeywordOnly:
        a: int = dataclasses.field(kw_only=True)

    with pytest.raises(TypeError, match="kw_only is not supported"):
        ours(KeywordOnly)


@contextmanager
def compilations() -> Iterator[list[str]]:
    """Collects the audit events of code being compiled while the block runs."""
    seen: list[str] = []
    active = [True]

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if active[0] and event in ("compile", "exec"):
            seen.append(event)

    sys.addaudithook(hook)  # hooks cannot be removed; this one goes quiet after the block
    try:
        yield seen
    finally:
        active[0] = False


def test_ours_compiles_nothing_where_the_standard_one_compiles_each_method() -> None:
    with compilations() as by_standard:
        point_class(standard, frozen=True, slots=True)
    with compilations() as by_ours:
        point_class(ours, frozen=True, slots=True)
    assert len(by_standard) >= 6  # __init__, __repr__, __eq__, __hash__, __setattr__, __delattr__
    assert by_ours == []


def test_the_project_events_are_frozen_slotted_dataclasses() -> None:
    for cls in (Event, MessageReceived, SessionClosed):
        assert dataclasses.is_dataclass(cls) and "__slots__" in cls.__dict__
    event = MessageReceived(b"hi")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.data = b"x"  # type: ignore[misc]
    assert event == MessageReceived(b"hi") and hash(event) == hash(MessageReceived(b"hi"))
    assert repr(event) == "MessageReceived(data=b'hi')"
