"""Model-file state of models made of models (an ensemble's members, a few-shot model's source bank): one
level of dotted keys, as predictor/modelfile.py stores `<attr>.<member>.<member's attr>[.<key>]`."""
from __future__ import annotations


def nest(flat: dict) -> dict:
    """{"0.coef_": a, "0.layers_.w0": b} -> {"0": {"coef_": a, "layers_": {"w0": b}}}: a member's state
    from the flattened keys of a model file (attributes end in '_' and hold no dots)."""
    out: dict = {}
    for key, value in flat.items():
        member, attr = key.split(".", 1)
        if "." in attr:
            attr, sub = attr.split(".", 1)
            out.setdefault(member, {}).setdefault(attr, {})[sub] = value
        else:
            out.setdefault(member, {})[attr] = value
    return out


def flatten(states: dict) -> dict:
    """The inverse of `nest`: {member: state} -> one level of dotted keys for a model file."""
    flat = {}
    for member, state in states.items():
        for attr, value in state.items():
            if isinstance(value, dict):
                flat.update({f"{member}.{attr}.{k}": v for k, v in value.items()})
            else:
                flat[f"{member}.{attr}"] = value
    return flat
