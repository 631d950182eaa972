"""Compose a command's config before Hydra runs it, and turn composition errors into one line.

Hydra's own messages are several lines long and, in a sweep, appear only when the failing job
starts. Here every swept value is composed up front (cheap: no model is loaded), so a typo in
`promptrl train -m task=sst2,sts5` fails in a second with the options that exist.
"""

from __future__ import annotations

import difflib
import re

from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ValueType
from hydra.errors import MissingConfigException, OverrideParseException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError


def _composition_message(e: Exception, override: str) -> str:
    """One line for a Hydra composition error: the bad value and what would be accepted."""
    cause = e.__cause__
    if isinstance(e, MissingConfigException):
        missing = getattr(e, "missing_cfg_file", None) or ""
        known = [o for o in e.options or [] if not o.endswith("_schema")]
        if "/" in missing:
            group, value = missing.rsplit("/", 1)
            hint = difflib.get_close_matches(value, known, n=1)
            did_you_mean = f" (did you mean {hint[0]}?)" if hint else ""
            return f"{group}={value!r} is not a known option{did_you_mean}; expected one of: {summarize_options(known)}"
        return str(e).splitlines()[0]
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        key = cause.full_key or override.split("=", 1)[0]
        parent, _, name = key.rpartition(".")
        accepted = _keys_at(cause)
        hint = difflib.get_close_matches(name, accepted, n=1)
        did_you_mean = f" (did you mean {parent + '.' if parent else ''}{hint[0]}?)" if hint else ""
        return f"{key!r} is not a setting{did_you_mean}; settings there: {', '.join(accepted)}"
    if isinstance(cause, ValidationError):
        return f"{cause.full_key}: {str(cause).splitlines()[0]}"
    if isinstance(e, OverrideParseException):
        return (f"cannot parse override {override!r}; quote values with spaces or special characters "
                "(see https://hydra.cc/docs/advanced/override_grammar/basic)")
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip())


def summarize_options(options: list[str], family_size: int = 5) -> str:
    """Options, with large families sharing a prefix (ii_*, mmlu_*) folded into one entry."""
    families: dict[str, list[str]] = {}
    for o in options:
        if "_" in o:
            families.setdefault(o.split("_", 1)[0], []).append(o)
    folded = {p for p, members in families.items() if len(members) >= family_size}
    shown, seen = [], set()
    for o in sorted(options):
        prefix = o.split("_", 1)[0] if "_" in o else None
        if prefix in folded:
            if prefix not in seen:
                seen.add(prefix)
                shown.append(f"{prefix}_* ({len(families[prefix])} options)")
        else:
            shown.append(o)
    return ", ".join(shown)


def _keys_at(error) -> list[str]:
    node = getattr(error, "parent_node", None)
    if node is None:
        node = getattr(error, "object", None)
    try:
        return sorted(str(k) for k in node.keys()) if node is not None else []
    except Exception:
        return []


def preflight(conf_dir: str, command: str, args: list[str]) -> str | None:
    """None if every job of this command line composes, else one line saying what is wrong."""
    try:
        ns = get_args_parser().parse_args(args)
    except SystemExit:  # argparse already printed what is wrong with the flags
        return None
    if ns.help or ns.hydra_help or ns.info or ns.shell_completion or ns.config_path or ns.config_name or ns.config_dir:
        return None  # Hydra handles these itself
    overrides = [o for o in ns.overrides if not re.match(r"^[~+]*hydra[./]", o)]
    with initialize_config_dir(conf_dir, version_base="1.3", job_name=command):
        # The config loader lets glob() sweeps expand against the config group's options, as
        # Hydra's sweeper does.
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        try:
            parsed = parser.parse_overrides(overrides)
        except Exception as e:
            bad = next((o for o in overrides if not _parses(o)), overrides[0] if overrides else "")
            return _composition_message(e, bad)
        # One composition with every sweep at its first value, then one per further swept value.
        first, variants = {}, [{}]
        for i, o in enumerate(parsed):
            if ns.multirun and o.is_sweep_override():
                values = list(o.sweep_string_iterator())
                problem = _sweep_problem(o, values, overrides[i])
                if problem:
                    return problem
                first[i] = values[0]
                variants += [{i: v} for v in values[1:]]
        for variant in variants:
            chosen = {**first, **variant}
            job = [f"{o.get_key_element()}={chosen[i]}" if i in chosen else overrides[i] for i, o in enumerate(parsed)]
            try:
                compose(command, overrides=job)  # conf/<command>.yaml
            except Exception as e:
                said = f"{e} {e.__cause__}"
                culprit = next((o for o in job if o.split("=", 1)[0].lstrip("+~") in said), "")
                return _composition_message(e, culprit)
    return None


def _sweep_problem(o, values: list[str], text: str) -> str | None:
    """A sweep over nothing (a glob() that matches no option, an empty range), or a glob that matches a structured-config schema (`*_schema`,
    which the group lists beside its YAML options but is not an option to run)."""
    key = o.get_key_element()
    if not values:
        if o.value_type == ValueType.GLOB_CHOICE_SWEEP:
            return f"{text} matches no option of {key!r}"
        return f"{text} sweeps over no values"
    if o.value_type != ValueType.GLOB_CHOICE_SWEEP:
        return None
    schemas = [v for v in values if v.endswith("_schema")]
    if schemas:
        return (f"{text} matches {', '.join(schemas)}, a schema, not an option; "
                f"add exclude=*_schema to the glob or list the options")
    return None


def _parses(override: str) -> bool:
    try:
        OverridesParser.create().parse_overrides([override])
        return True
    except Exception:
        return False
