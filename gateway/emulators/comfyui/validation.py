"""``execution.validate_prompt`` of ComfyUI: the checks POST /prompt runs before queueing a workflow.

Same order, error types, messages and ``node_errors`` shape as upstream: unknown or missing class_type ->
``invalid_prompt``; no output node -> ``prompt_no_outputs``; then every output node's inputs are checked
recursively (required_input_missing, bad_linked_input, return_type_mismatch, invalid_input_type,
value_smaller_than_min / value_bigger_than_max, value_not_in_list, custom_validation_failed), and an exception
while validating (a link to a missing node, an output index out of range) becomes ``exception_during_validation``
on the output. A prompt with at least one valid output is accepted (its ``node_errors`` lists the others).
Widget values are converted in place (INT -> int, ...), as upstream does, so the queued prompt holds them.
"""

from __future__ import annotations

import traceback
from typing import Any

from gateway.emulators.comfyui.nodes import Env
from gateway.emulators.comfyui.registry import NodeDef

Errors = list[dict[str, Any]]
Validated = dict[str, tuple[bool, Errors, str]]


def full_type_name(ex: BaseException) -> str:
    module = type(ex).__module__
    return type(ex).__qualname__ if module == "builtins" else f"{module}.{type(ex).__qualname__}"


def _types_match(received: Any, expected: Any) -> bool:
    if isinstance(expected, list):
        return received in ("COMBO", "*")
    if received == "*" or expected == "*":
        return True
    return not {t.strip() for t in str(received).split(",")}.isdisjoint(t.strip() for t in str(expected).split(","))


def _input_info(types: dict[str, dict[str, Any]], name: str) -> tuple[Any, str, dict[str, Any]]:
    for category in ("required", "optional"):
        if name in types.get(category, {}):
            spec = types[category][name]
            return spec[0], category, (spec[1] if len(spec) > 1 else {})
    return None, "", {}


def _validate_inputs(
    prompt: dict[str, Any], item: str, validated: Validated, nodes: dict[str, NodeDef], env: Env
) -> tuple[bool, Errors, str]:
    if item in validated:
        return validated[item]
    inputs = prompt[item]["inputs"]
    node = nodes[prompt[item]["class_type"]]
    types = node.input_types(env)
    names = [*types.get("required", {}), *types.get("optional", {})]
    custom = node.custom_validate[0] if node.custom_validate else None
    errors: Errors = []
    valid = True
    for x in names:
        input_type, category, extra = _input_info(types, x)
        info = [input_type, extra]
        if x not in inputs:
            if category == "required":
                errors.append(
                    {
                        "type": "required_input_missing",
                        "message": "Required input is missing",
                        "details": f"{x}",
                        "extra_info": {"input_name": x},
                    }
                )
            continue
        val = inputs[x]
        if isinstance(val, list):
            if len(val) != 2:
                errors.append(
                    {
                        "type": "bad_linked_input",
                        "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                        "details": f"{x}",
                        "extra_info": {"input_name": x, "input_config": info, "received_value": val},
                    }
                )
                continue
            o_id = val[0]
            received_type = nodes[prompt[o_id]["class_type"]].outputs[val[1]]
            if not _types_match(received_type, input_type):
                errors.append(
                    {
                        "type": "return_type_mismatch",
                        "message": "Return type mismatch between linked nodes",
                        "details": f"{x}, received_type({received_type}) mismatch input_type({input_type})",
                        "extra_info": {
                            "input_name": x,
                            "input_config": info,
                            "received_type": received_type,
                            "linked_node": val,
                        },
                    }
                )
                continue
            if _validate_inputs(prompt, o_id, validated, nodes, env)[0] is False:
                valid = False
            continue
        try:
            if isinstance(val, dict) and "__value__" in val:
                val = inputs[x] = val["__value__"]
            converters = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}
            converter = converters.get(input_type) if isinstance(input_type, str) else None
            if converter is not None:
                val = inputs[x] = converter(val)
        except Exception as ex:
            errors.append(
                {
                    "type": "invalid_input_type",
                    "message": f"Failed to convert an input value to a {input_type} value",
                    "details": f"{x}, {val}, {ex}",
                    "extra_info": {
                        "input_name": x,
                        "input_config": info,
                        "received_value": val,
                        "exception_message": str(ex),
                    },
                }
            )
            continue
        if x == custom:
            continue
        if "min" in extra and val < extra["min"]:
            errors.append(
                {
                    "type": "value_smaller_than_min",
                    "message": f"Value {val} smaller than min of {extra['min']}",
                    "details": f"{x}",
                    "extra_info": {"input_name": x, "input_config": info, "received_value": val},
                }
            )
            continue
        if "max" in extra and val > extra["max"]:
            errors.append(
                {
                    "type": "value_bigger_than_max",
                    "message": f"Value {val} bigger than max of {extra['max']}",
                    "details": f"{x}",
                    "extra_info": {"input_name": x, "input_config": info, "received_value": val},
                }
            )
            continue
        if isinstance(input_type, list) and val not in input_type:
            big = len(input_type) > 20
            list_info = f"(list of length {len(input_type)})" if big else str(input_type)
            errors.append(
                {
                    "type": "value_not_in_list",
                    "message": "Value not in list",
                    "details": f"{x}: '{val}' not in {list_info}",
                    "extra_info": {"input_name": x, "input_config": None if big else info, "received_value": val},
                }
            )
            continue
    if node.custom_validate and custom in inputs and not isinstance(inputs[custom], list):
        result = node.custom_validate[1](env, inputs[custom])
        if result is not True:
            errors.append(
                {
                    "type": "custom_validation_failed",
                    "message": "Custom validation failed for node",
                    "details": f"{custom}" + (f" - {result}" if result is not False else ""),
                    "extra_info": {"input_name": custom},
                }
            )
    ret = (False, errors, item) if errors or not valid else (True, [], item)
    validated[item] = ret
    return ret


def validate_prompt(
    prompt: Any, nodes: dict[str, NodeDef], env: Env, partial_execution_targets: list[str] | None = None
) -> tuple[bool, dict[str, Any] | None, list[str], dict[str, Any]]:
    """(valid, error, outputs_to_execute, node_errors), as upstream's validate_prompt."""
    outputs: list[str] = []
    for x in prompt:
        node = prompt[x]
        if not isinstance(node, dict) or "class_type" not in node:
            return (
                False,
                {
                    "type": "invalid_prompt",
                    "message": "Cannot execute because a node is missing the class_type property.",
                    "details": f"Node ID '#{x}'",
                    "extra_info": {},
                },
                [],
                {},
            )
        definition = nodes.get(node["class_type"]) if isinstance(node["class_type"], str) else None
        if definition is None:
            return (
                False,
                {
                    "type": "invalid_prompt",
                    "message": f"Cannot execute because node {node['class_type']} does not exist.",
                    "details": f"Node ID '#{x}'",
                    "extra_info": {},
                },
                [],
                {},
            )
        if definition.output_node and (partial_execution_targets is None or x in partial_execution_targets):
            outputs.append(x)
    if not outputs:
        error = {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "", "extra_info": {}}
        return False, error, [], {}

    good: list[str] = []
    failures: list[tuple[str, Errors]] = []
    node_errors: dict[str, Any] = {}
    validated: Validated = {}
    for o in outputs:
        try:
            valid, reasons, _ = _validate_inputs(prompt, o, validated, nodes, env)
        except Exception as ex:
            valid = False
            reasons = [
                {
                    "type": "exception_during_validation",
                    "message": "Exception when validating node",
                    "details": str(ex),
                    "extra_info": {
                        "exception_type": full_type_name(ex),
                        "traceback": traceback.format_tb(ex.__traceback__),
                    },
                }
            ]
            validated[o] = (False, reasons, o)
        if valid is True:
            good.append(o)
            continue
        failures.append((o, reasons))
        for node_id, (ok, node_reasons, _) in validated.items():
            if ok is not True and node_reasons:
                entry = node_errors.setdefault(
                    node_id,
                    {"errors": node_reasons, "dependent_outputs": [], "class_type": prompt[node_id]["class_type"]},
                )
                entry["dependent_outputs"].append(o)
    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}" for _, errors in failures for e in errors)
        error = {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": details,
            "extra_info": {},
        }
        return False, error, [], node_errors
    return True, None, good, node_errors
