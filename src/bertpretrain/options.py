"""Options declared once: each is a dataclass field holding its default, help text and check.

The configuration dataclasses (:class:`~bertpretrain.data.DataConfig`,
:class:`~bertpretrain.model.ModelOptions` and :class:`~bertpretrain.model.BERTConfig`,
:class:`~bertpretrain.train.TrainingConfig`, and the command's
:class:`~bertpretrain.recipe.RunOptions`) declare their fields with :func:`option` and call
:func:`validate` in ``__post_init__``. The command line is generated from the same fields
(:func:`add_arguments`), so an option's default, help and check exist in one place, and a bad
value gets the same message from Python and from the command::

    num_steps (--num-steps) must be an integer >= 1, got 0

Imports nothing from the rest of the package but :mod:`bertpretrain.errors` (``data``, ``model`` and ``train``
all use it).
"""
import dataclasses
import math
import typing

from .errors import UserError

class OptionError(UserError, ValueError):
    """A configuration value is invalid; the message names the option, its flag, what was expected and what
    was given."""


def option(default=dataclasses.MISSING, help="", *, check=None, choices=None, flag=None, cli=True, metavar=None):
    """A dataclass field that is also a command-line option.

    Args:
        default: the value when the option is not given (none: a required field).
        help: what the option does, for ``--help`` and the docs.
        check: a function of the value returning None when it is valid, else what was expected
            (``"an integer >= 1"``); see :func:`integer`, :func:`number`. ``choices`` implies one.
        choices: the allowed values (shown in ``--help``).
        flag: the command-line flag when it is not ``--`` + the field name with dashes (a bool whose
            default is True gets ``--no-<name>``).
        cli: False keeps the field out of the command line (Python-only options).
        metavar: the value's name in ``--help``.
    """
    if choices is not None and check is None:
        check = one_of(*choices)
    metadata = {"help": help, "check": check, "choices": choices, "flag": flag, "cli": cli, "metavar": metavar}
    return dataclasses.field(default=default, metadata=metadata)


# --- checks: each returns None for a valid value, else a phrase saying what was expected ---------------------

def integer(at_least=None, at_most=None, optional=False):
    """A check for an int (not a bool) within ``[at_least, at_most]``; ``optional`` also accepts None."""
    bounds = " and ".join(part for part in (f">= {at_least}" if at_least is not None else "",
                                             f"<= {at_most}" if at_most is not None else "") if part)
    expected = f"an integer {bounds}".strip() + (" or None" if optional else "")

    def check(value):
        if value is None and optional:
            return None
        if (isinstance(value, bool) or not isinstance(value, int) or (at_least is not None and value < at_least)
                or (at_most is not None and value > at_most)):
            return expected
        return None
    return check


def number(greater_than=None, at_least=None, less_than=None, optional=False):
    """A check for a finite real number with the given strict / non-strict bounds; ``optional`` accepts None."""
    parts = [f"> {greater_than}" if greater_than is not None else "", f">= {at_least}" if at_least is not None else "",
             f"< {less_than}" if less_than is not None else ""]
    expected = " ".join(["a finite number", " and ".join(p for p in parts if p)]).strip()
    expected += " or None" if optional else ""

    def check(value):
        if value is None and optional:
            return None
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or (greater_than is not None and value <= greater_than) or (at_least is not None and value < at_least)
                or (less_than is not None and value >= less_than)):
            return expected
        return None
    return check


def one_of(*choices):
    """A check for one of ``choices``."""
    expected = "one of " + ", ".join(repr(c) for c in choices)
    return lambda value: None if value in choices else expected


def boolean(optional=False):
    """A check for True or False (or None when ``optional``)."""
    return lambda value: None if isinstance(value, bool) or (optional and value is None) else (
        "True or False" + (" or None" if optional else ""))


# --- using the fields ---------------------------------------------------------------------------------------

def flag_of(field):
    """The command-line flag of a dataclass field (``--num-steps``; ``--no-fallback`` for a True bool)."""
    if field.metadata.get("flag"):
        return field.metadata["flag"]
    dashed = field.name.replace("_", "-")
    return f"--no-{dashed}" if field.default is True else f"--{dashed}"


def error(instance_or_class, name, expected, value):
    """The :class:`OptionError` of field ``name`` given ``value`` where ``expected`` was wanted."""
    field = {f.name: f for f in dataclasses.fields(instance_or_class)}[name]
    shown = field.metadata.get("cli", False) or field.metadata.get("flag")
    where = f" ({flag_of(field)})" if shown else ""
    return OptionError(f"{name}{where} must be {expected}, got {value!r}")


def validate(instance):
    """Run every field's check on ``instance``; raise the :class:`OptionError` of the first that fails."""
    for field in dataclasses.fields(instance):
        check = field.metadata.get("check")
        if check is not None:
            value = getattr(instance, field.name)
            expected = check(value)
            if expected is not None:
                raise error(instance, field.name, expected, value)


def cli_fields(cls):
    """The fields of dataclass ``cls`` that are command-line options."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", False)]


def _value_type(cls, field):
    """The type argparse converts a value to: the field's annotation, without Optional."""
    hint = typing.get_type_hints(cls)[field.name]
    if typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def _shown(value):
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def add_arguments(parser, cls, presets=None, default_preset=None):
    """Add one argument per command-line field of dataclass ``cls`` to ``parser`` (an argument group).

    The argparse default is the field's default; ``presets`` ({name: {field: value}}) are described in the
    help of the fields they change, ``default_preset`` first (it applies when no ``--preset`` is given).
    """
    names = [default_preset] if default_preset else []
    names += sorted(name for name in presets or {} if name != default_preset)
    for field in cli_fields(cls):
        kind = _value_type(cls, field)
        flag = flag_of(field)
        turned_off = kind is bool and field.default is True  # --no-<name>
        help_text = ("turn off: " if turned_off else "") + field.metadata["help"]
        help_text += f" (default: {'on' if turned_off else _shown(field.default)}"
        help_text += "".join(f"; preset {name}: {_shown(presets[name][field.name])}"
                             for name in names if field.name in presets[name]) + ")"
        metavar = field.metadata.get("metavar") or flag[2:].upper().replace("-", "_")
        if kind is bool and field.default is None:  # three states: --x, --no-x, or neither (None)
            parser.add_argument(flag, dest=field.name, action="store_true", default=None, help=help_text)
            parser.add_argument(f"--no-{flag[2:]}", dest=field.name, action="store_false", default=None,
                                help="the opposite of " + flag)
        elif kind is bool:
            parser.add_argument(flag, dest=field.name, action="store_false" if field.default else "store_true",
                                default=field.default, help=help_text)
        elif kind is list:  # one or more values
            parser.add_argument(flag, dest=field.name, nargs="+", default=field.default, help=help_text,
                                metavar=metavar)
        else:
            parser.add_argument(flag, dest=field.name, type=kind, default=field.default, help=help_text,
                                choices=field.metadata.get("choices"),
                                metavar=None if field.metadata.get("choices") else metavar)
    return parser


def values(cls, namespace):
    """{field name: value} of the command-line fields of ``cls`` found in an argparse ``namespace``."""
    return {f.name: getattr(namespace, f.name) for f in cli_fields(cls) if hasattr(namespace, f.name)}


def split_by_owner(classes, values):
    """Split flat ``values`` ({option name: value}) into one dict per class of ``classes`` (in order), by
    which class declares each name; an unknown name raises :class:`OptionError` listing the known ones."""
    owners, parts = {}, [dict() for _ in classes]
    for i, cls in enumerate(classes):
        for field in dataclasses.fields(cls):
            owners.setdefault(field.name, i)
    for name, value in values.items():
        if name not in owners:
            raise OptionError(f"unknown option {name!r}: the options are {', '.join(sorted(owners))}")
        parts[owners[name]][name] = value
    return parts
