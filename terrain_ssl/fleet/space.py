"""The parameters `terrain-ssl tune` searches, with ranges read from the nodes' declarations.

Each tuned parameter's range is its declared range (ParamSpec min/max, the descriptor's range)
narrowed to a window around its default: a factor SEARCH_FACTOR either way, on a log scale
where the window spans a decade or more. Parameters with declared choices are searched over
those choices.
"""

from __future__ import annotations

import importlib
import math

import yaml

# Which parameters each objective tunes: the label's own parameters for `consistency` (what a
# label is), the learner's for `prequential` (labels fixed), both against the ground truth.
LABEL_PARAMETERS = ('label.speed_exponent', 'label.min_window_s', 'vibration.band_low_hz',
                    'vibration.band_high_hz', 'vibration.shock_measure')
LEARNER_PARAMETERS = ('learning_rate', 'n_components', 'train_batch_size', 'ensemble_size',
                      'model')
TUNED_PARAMETERS = {'consistency': LABEL_PARAMETERS, 'prequential': LEARNER_PARAMETERS,
                    'truth': LABEL_PARAMETERS + LEARNER_PARAMETERS}
SEARCH_FACTOR = 4.0


def parameter_specs() -> dict:
    """name -> ParamSpec, over the three nodes' declared parameter lists."""
    from terrain_ssl.ros.parameters import ParamSpec
    from terrain_ssl.ros.pipeline import NODE_MODULES

    specs = {}
    for module_name in NODE_MODULES:
        for value in vars(importlib.import_module(module_name)).values():
            if isinstance(value, (list, tuple)) and value \
                    and all(isinstance(item, ParamSpec) for item in value):
                specs.update((spec.name, spec) for spec in value)
    return specs


def distribution(spec):
    """The Optuna distribution of one ParamSpec, inside its declared range."""
    from optuna.distributions import (CategoricalDistribution, FloatDistribution,
                                      IntDistribution)

    if spec.choices:
        return CategoricalDistribution(tuple(spec.choices))
    default = spec.default
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        raise ValueError(f'{spec.name}: only numbers and choices can be tuned')
    lowest = spec.min if spec.min is not None else -math.inf
    highest = spec.max if spec.max is not None else math.inf
    if default > 0:
        low, high = max(lowest, default / SEARCH_FACTOR), min(highest, default * SEARCH_FACTOR)
    else:
        low, high = lowest, highest
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f'{spec.name}: no finite range to search')
    log = low > 0 and high / low >= 10.0
    if isinstance(default, int):
        return IntDistribution(int(math.ceil(low)), int(math.floor(high)), log=log)
    return FloatDistribution(float(low), float(high), log=log)


def search_space(objective: str) -> dict:
    """name -> Optuna distribution for the parameters `objective` tunes."""
    specs = parameter_specs()
    return {name: distribution(specs[name]) for name in TUNED_PARAMETERS[objective]}


def default_values(names) -> dict:
    specs = parameter_specs()
    return {name: specs[name].default for name in names}


def write_parameters_file(base_config: str, values: dict, path) -> None:
    """`base_config` (a ros__parameters YAML file) with `values` {name: value} set in the
    section of the node that declares each name; written to `path`."""
    with open(base_config) as handle:
        config = yaml.safe_load(handle) or {}
    sections = {name: section for section, body in config.items()
                for name in (body or {}).get('ros__parameters', {})}
    for name, value in values.items():
        if name not in sections:
            raise ValueError(f'{name} is in no node section of {base_config}')
        config[sections[name]]['ros__parameters'][name] = value
    text = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    with open(path, 'w') as handle:
        handle.write('# terrain_ssl parameters tuned by `terrain-ssl tune` (every other value '
                     f'as in {base_config}).\n' + text)


def parse_overrides(overrides) -> dict:
    """['name:=value', ...] (as `-p` takes them) -> {name: value}, values read as YAML."""
    values = {}
    for override in overrides:
        name, _, text = override.partition(':=')
        values[name.split(':')[-1]] = yaml.safe_load(text)
    return values
