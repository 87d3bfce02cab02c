"""Flow results as JSON: voluptuous schemas serialised the way Open Peer Power's frontend reads them."""

from __future__ import annotations

from typing import Any, cast

import voluptuous as vol
import voluptuous_serialize

from ..flow import RESULT_TYPE_FORM


def _custom(schema: Any) -> Any:
    """Serialise validators voluptuous-serialize does not know."""
    return voluptuous_serialize.UNSUPPORTED


def serialize_schema(schema: vol.Schema | None) -> list[dict[str, Any]]:
    """A schema as a list of field objects ([] for none)."""
    if schema is None:
        return []
    # Form schemas are mappings, which convert() always turns into a field list.
    return cast("list[dict[str, Any]]", voluptuous_serialize.convert(schema, custom_serializer=_custom))


def prepare_result_json(result: dict[str, Any]) -> dict[str, Any]:
    """A flow result without server-side objects, schema serialised."""
    data = dict(result)
    data.pop("result", None)
    if data.get("type") != RESULT_TYPE_FORM:
        data.pop("data", None)
        return data
    data["data_schema"] = serialize_schema(result.get("data_schema"))
    return data
