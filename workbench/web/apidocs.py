"""The API reference page's content, read from the OpenAPI document (so it cannot drift)."""

from __future__ import annotations

from typing import Any


def _type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(map(str, schema["enum"]))
    if schema.get("type") == "array":
        return f"list of {_type(schema.get('items', {}))}"
    return str(schema.get("type", "object"))


def operations(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per path and method: summary, parameters, body fields, response model."""
    schemas = spec.get("components", {}).get("schemas", {})
    out = []
    for path, methods in spec.get("paths", {}).items():
        for method, op in methods.items():
            body = None
            ref = (op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
                   .get("$ref"))
            if ref:
                name = ref.rsplit("/", 1)[-1]
                model = schemas.get(name, {})
                body = {"name": name, "fields": [
                    {"name": f, "type": _type(s), "required": f in model.get("required", []),
                     "description": s.get("description", "")} for f, s in model.get("properties", {}).items()]}
            resp = (op.get("responses", {}).get("200", {}).get("content", {}).get("application/json", {})
                    .get("schema", {}))
            out.append({"id": op.get("operationId", f"{method}-{path}"), "method": method.upper(), "path": path,
                        "summary": op.get("summary", ""), "description": op.get("description", ""),
                        "params": [{"name": p["name"], "where": p["in"], "type": _type(p.get("schema", {})),
                                    "required": p.get("required", False)} for p in op.get("parameters", [])],
                        "body": body, "response": _type(resp) if resp else None})
    return out
