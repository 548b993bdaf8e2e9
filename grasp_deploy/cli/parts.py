"""Command-line options made from the registered methods' and post-steps' settings dataclasses.

Every ``flag(...)`` field becomes one option (a field shared by several parts, such as
``--reconstruct-ridge``, is one option that reaches each of them); every post-step adds its
switch. The registry is read when a command parses or prints its help, so a method registered
at any time before that has its options. An option given for a part that is not in use (a
method not chosen, a post-step not switched on) is a one-line error naming both.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from ..core.errors import GraspError
from ..methods import METHODS, POST_STEPS, Method, PostStep, get_method
from ..methods.base import FLAG, Flag, flag_fields, option_name


@dataclass(frozen=True)
class _Owner:
    """One settings field that an option sets, and the part it belongs to."""

    settings: type
    field: str
    part: str  # "--method gisp" or "--reconstruct": what must be in use


def _param(option: str) -> str:
    return option.lstrip("-").replace("-", "_")


def _click_type(settings: type, f: dataclasses.Field, spec: Flag) -> Any:
    if spec.choices is not None:
        return click.Choice(list(spec.choices))
    hint = typing.get_type_hints(settings)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return {int: int, float: float, Path: click.Path(path_type=Path)}.get(args[0], str)


def _option(settings: type, f: dataclasses.Field, parts: list[str]) -> click.Option:
    """The option of field ``f``; its help starts with the parts it applies to."""
    spec: Flag = f.metadata[FLAG]
    name = option_name(f)
    decls = [name, *([spec.short] if spec.short else []), _param(name)]
    label = ", ".join(p.removeprefix("--method ") for p in parts)
    if f.type in ("bool", bool):
        return click.Option(decls, is_flag=True, default=False, help=f"{label}: {spec.help}")
    shown = spec.default_text or (None if f.default is None else str(f.default))
    suffix = f"  [default: {shown}]" if shown else ""
    return click.Option(decls, default=None, type=_click_type(settings, f, spec),
                        help=f"{label}: {spec.help}{suffix}")


def _parts() -> list[tuple[str, type]]:
    return ([(f"--method {m.name}", m.settings) for m in METHODS.values()]
            + [(s.switch, s.settings) for s in POST_STEPS.values()])


def _owners() -> dict[str, list[_Owner]]:
    """Option parameter name -> the settings fields it sets."""
    owners: dict[str, list[_Owner]] = {}
    for part, settings in _parts():
        for f in flag_fields(settings):
            owners.setdefault(_param(option_name(f)), []).append(_Owner(settings, f.name, part))
    return owners


def settings_params() -> list[click.Option]:
    """--method, then the options of every method's and post-step's settings."""
    method = click.Option(
        ["--method", "method"], default="grasp", show_default=True,
        type=click.Choice(list(METHODS)),
        help="; ".join(f"{m.name}: {m.summary}" for m in METHODS.values()) + ".")
    params: list[click.Option] = [method]
    for step in POST_STEPS.values():
        params.append(click.Option([step.switch, _param(step.switch)], is_flag=True,
                                   help=step.help))
    fields: dict[str, list[tuple[str, type, dataclasses.Field]]] = {}
    for part, settings in _parts():
        for f in flag_fields(settings):
            fields.setdefault(option_name(f), []).append((part, settings, f))
    for name, declared in fields.items():
        _part, settings, f = declared[0]
        if any((g.metadata[FLAG], g.default) != (f.metadata[FLAG], f.default)
               for _, _, g in declared):
            raise GraspError(f"{name} is declared by {len(declared)} settings with different "
                             "meanings; give each its own name or share one Flag and default")
        params.append(_option(settings, f, [part for part, _, _ in declared]))
    return params


class PartsCommand(click.Command):
    """A command whose options include the registered parts' settings (see module doc)."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        help_option = self.get_help_option(ctx)
        own = [p for p in super().get_params(ctx) if p is not help_option]
        return [*own, *settings_params(), *([help_option] if help_option else [])]


def given_options(ctx: click.Context, options: dict[str, Any]) -> dict[str, Any]:
    """The parts' options typed on the command line (not left at their defaults)."""
    names = set(_owners()) | {_param(s.switch) for s in POST_STEPS.values()}
    return {k: v for k, v in options.items() if k in names
            and ctx.get_parameter_source(k) not in (None, ParameterSource.DEFAULT)}


def build_parts(method_name: str, given: dict[str, Any]) -> tuple[Any, tuple[Any, ...]]:
    """(the method's settings, the post-steps' settings) from the options given."""
    method = get_method(method_name)
    steps = [s for s in POST_STEPS.values() if _switched_on(s, given)]
    active = {method.settings: f"--method {method.name}",
              **{s.settings: s.switch for s in steps}}
    values: dict[type, dict[str, Any]] = {t: {} for t in active}
    owners = _owners()
    for param, value in given.items():
        if param not in owners:
            continue  # a post-step's switch
        mine = [o for o in owners[param] if o.settings in active]
        if not mine:
            parts = " or ".join(sorted({o.part for o in owners[param]}))
            raise GraspError(f"--{param.replace('_', '-')} applies to {parts}, not to "
                             f"{_in_use(method, steps)}; drop it or use that instead")
        for o in mine:
            values[o.settings][o.field] = value
    method_settings = method.settings.from_options(**values[method.settings])
    built = [method_settings, *(s.settings(**values[s.settings]) for s in steps)]
    _check_unused(built, given, owners)
    return method_settings, tuple(built[1:])


def _switched_on(step: PostStep, given: dict[str, Any]) -> bool:
    if given.get(_param(step.switch)):
        return True
    return any(f.metadata[FLAG].enables and given.get(_param(option_name(f)))
               for f in flag_fields(step.settings))


def _in_use(method: Method, steps: list[PostStep]) -> str:
    return " with ".join([f"--method {method.name}", *(s.switch for s in steps)])


def _check_unused(built: list[Any], given: dict[str, Any], owners: dict[str, list[_Owner]]) -> None:
    """An option given that every part in use ignores is an error, not a silent no-op."""
    for param in given:
        users = [(s, o.field) for o in owners.get(param, ()) for s in built
                 if type(s) is o.settings]
        if users and all(name in s.unused() for s, name in users):
            s, name = users[0]
            raise GraspError(f"--{param.replace('_', '-')} {s.unused()[name]}")
