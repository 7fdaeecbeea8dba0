"""The command line in front of Hydra: compose every job's config and check it before the first job starts.

Hydra reports a bad group option or key in several lines and exits 1, and a multirun meets a bad value only when
that job comes up. ``preflight`` composes the command line's config (every job of a basic-sweeper multirun),
turns composition errors into one line with the valid choices, refuses keys added with ``+`` that nothing reads,
and runs the entry point's own cheap checks; any failure is ``error: ...`` on stderr and exit status 2, before
Hydra creates an output folder.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .errors import ASDTUserError

CONFIG_MODULE = "asdt_lightning.conf"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
# Hydra flags after which there is nothing to check (help, config printing, completion) or no way to (other paths)
_LEAVE_TO_HYDRA = {"-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "-i", "--info", "-sc"}
_LEAVE_TO_HYDRA |= {"--shell-completion", "-cp", "--config-path", "-cd", "--config-dir", "--experimental-rerun"}
_FLAGS_WITH_VALUE = {"-cn", "--config-name", "-p", "--package"}
# groups whose keys may be added with ``+``: they are handed on as keyword arguments that their consumers check
_OPEN_GROUPS = ("hydra", "logger")

ConfigCheck = Callable[[DictConfig], None]


def split_command_line(argv: Sequence[str], config_name: str) -> tuple[list[str], str, bool] | None:
    """(overrides, config name, multirun) of a command line, or None where Hydra alone should handle it."""
    overrides: list[str] = []
    multirun = False
    args = list(argv)
    while args:
        arg = args.pop(0)
        flag, _, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if flag in _LEAVE_TO_HYDRA:
            return None
        if flag in ("-m", "--multirun"):
            multirun = True
        elif flag in _FLAGS_WITH_VALUE:
            value = inline or (args.pop(0) if args else "")
            if flag in ("-cn", "--config-name"):
                config_name = value
        elif arg.startswith("-"):
            return None  # a flag of a newer Hydra: let it speak for itself
        else:
            overrides.append(arg)
    return overrides, config_name, multirun


def composition_error(err: Exception, base: DictConfig | None) -> str:
    """One line for Hydra's and OmegaConf's composition errors (the group's options, the node's keys)."""
    from hydra.errors import MissingConfigException

    text = str(err)
    if isinstance(err, MissingConfigException) and getattr(err, "missing_cfg_file", None):
        group, _, option = str(err.missing_cfg_file).rpartition("/")
        options = sorted(getattr(err, "options", None) or [])
        if group and options:
            return f"{group}={option}: no such option; choose one of: {', '.join(options)}"
    found = re.search(r"Could not override '([^']+)'", text)
    if found:
        return unknown_key_message(found.group(1), base)
    found = re.search(r"Could not find '([^']+)'", text)
    if found:
        return f"no config '{found.group(1)}'"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines[:2]) if lines else type(err).__name__


def unknown_key_message(key: str, base: DictConfig | None, added: bool = False) -> str:
    """``pwm.dutty``: unknown key; what the node holds and the nearest key."""
    parent, _, leaf = key.rpartition(".")
    while parent and base is not None and not isinstance(OmegaConf.select(base, parent), DictConfig):
        parent, _, leaf = parent.rpartition(".")  # e.g. dataset.synthetic.* with dataset=voc: name dataset's keys
    node = OmegaConf.select(base, parent) if (base is not None and parent) else base
    keys = sorted(str(k) for k in node) if isinstance(node, DictConfig) else []
    close = difflib.get_close_matches(leaf, keys, n=1)
    message = f"unknown key {key}{' (added with +)' if added else ''}"
    if keys:
        message += f"; {parent or 'the config'} has: {', '.join(keys)}"
    if close:
        message += f"; did you mean {parent + '.' if parent else ''}{close[0]}?"
    return message


def added_keys(config: Any, reference: Any, prefix: str = "") -> list[str]:
    """Dotted keys of ``config`` that ``reference`` (the same groups, no value overrides) lacks."""
    if not isinstance(config, Mapping) or not isinstance(reference, Mapping):
        return []
    found = []
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if key not in reference:
            found.append(dotted)
        else:
            found += added_keys(value, reference[key], dotted + ".")
    return found


def check_added_keys(job: DictConfig, reference: DictConfig) -> None:
    """Refuse keys added with ``+`` that no part reads (``trainer.*`` must be a ``lightning.Trainer`` argument)."""
    from .checks import unknown_trainer_keys

    plain = OmegaConf.to_container(job, resolve=False)
    base = OmegaConf.to_container(reference, resolve=False)
    for key in added_keys(plain, base):
        top = key.split(".")[0]
        if top in _OPEN_GROUPS or (top == "trainer" and key.count(".") == 1):
            continue
        raise ASDTUserError(unknown_key_message(key, reference, added=True))
    unknown = unknown_trainer_keys(plain.get("trainer", {}))  # type: ignore[union-attr]
    if unknown:
        raise ASDTUserError(
            f"trainer.{unknown[0]} is not an argument of lightning.Trainer; see "
            "https://lightning.ai/docs/pytorch/stable/common/trainer.html#trainer-class-api"
        )


def parse_overrides(overrides: Sequence[str]) -> list[Any]:
    """Hydra's parsed overrides, or one line saying which does not parse."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as err:
        raise ASDTUserError(composition_error(err, None)) from None


def group_overrides(overrides: Sequence[str], choices: Mapping[str, Any]) -> list[str]:
    """The overrides that choose a config group option (``dataset=voc``, ``+experiment=x``), not a value."""
    return [o.input_line for o in parse_overrides(overrides) if o.key_or_group in choices]


def without_sweeps(overrides: Sequence[str]) -> list[str]:
    """The overrides that are not sweeps (``pwm.duty=0,0.5`` is one; ``model.cam_scales=[1.0,0.5]`` is not)."""
    return [o.input_line for o in parse_overrides(overrides) if not o.is_sweep_override()]


def job_overrides(base: DictConfig, overrides: Sequence[str]) -> list[list[str]]:
    """Every job of a basic-sweeper multirun (the sweep config's ``hydra.sweeper.params`` and the command
    line's sweeps, as Hydra's basic sweeper expands them); one job with the sweeps dropped for other sweepers."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    if OmegaConf.select(base, "hydra.sweeper._target_") != BASIC_SWEEPER:
        return [without_sweeps(overrides)]
    params = OmegaConf.select(base, "hydra.sweeper.params") or {}
    arguments = [f"{key}={value}" for key, value in params.items()] + list(overrides)
    batches = BasicSweeper.split_arguments(parse_overrides(arguments), None)
    return [list(job) for job in batches[0]] if batches else [list(overrides)]


def preflight(config_name: str, argv: Sequence[str], check: ConfigCheck | None = None) -> int:
    """Compose and check every job of the command line ``argv``; returns the number of jobs checked.

    Raises ASDTUserError (one line) for the first bad job, naming its overrides in a multirun.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    split = split_command_line(argv, config_name)
    if split is None:
        return 0
    overrides, config_name, multirun = split
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        plain_base = _compose(compose, config_name, [], None)
        fixed = without_sweeps(overrides) if multirun else list(overrides)
        fixed_groups = tuple(group_overrides(fixed, plain_base.hydra.runtime.choices))
        groups_base = _compose(compose, config_name, fixed_groups, None)
        base = _compose(compose, config_name, fixed, groups_base)
        jobs = job_overrides(base, overrides) if multirun else [list(overrides)]
        references = {fixed_groups: groups_base}  # jobs of a sweep mostly share their groups
        for job in jobs:
            groups = tuple(group_overrides(job, plain_base.hydra.runtime.choices))
            if groups not in references:
                references[groups] = _compose(compose, config_name, groups, plain_base)
            reference = references[groups]
            cfg = base if not multirun and job == overrides else _compose(compose, config_name, job, reference)
            try:
                check_added_keys(cfg, reference)
                if check is not None:
                    check(cfg)
            except ASDTUserError as err:
                raise ASDTUserError(f"{err} (job: {' '.join(job)})" if multirun else str(err)) from None
    GlobalHydra.instance().clear()
    return len(jobs)


def _compose(compose: Callable[..., DictConfig], name: str, overrides: Sequence[str], base: DictConfig | None):
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = compose(name, overrides=list(overrides), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise ASDTUserError(composition_error(err, base)) from None
    OmegaConf.set_struct(cfg, False)
    return cfg


def run_preflight(config_name: str, check: ConfigCheck | None = None, argv: Sequence[str] | None = None) -> None:
    """``preflight`` for ``python -m asdt_lightning.<entry>``: a failure is one ``error:`` line, exit status 2."""
    from .errors import run_or_exit

    run_or_exit(preflight, config_name, sys.argv[1:] if argv is None else argv, check)
