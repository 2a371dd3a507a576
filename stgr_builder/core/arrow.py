"""Arrow schemas derived from the row models, so each dataset has ONE fixed schema.

The released Open-o3 Video data broke the Hugging Face viewer because some shards had
columns that others lacked; here the schema comes from the Pydantic model alone, never
from the rows, so every shard (an empty one included) carries exactly the same columns.
Nested records become ``struct``, lists become ``list``; ``dict`` fields are refused
because they would need a ``map`` type, which the viewer cannot show either.

>>> schema_for(KeyFrame)
idx: int64 not null
time: double not null
path: string not null
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Sequence
from enum import Enum
from typing import Annotated, Any, Literal, Union

import pyarrow as pa
from pydantic import BaseModel, TypeAdapter

from stgr_builder.models import CotRow, KeyFrame, Reject, RlRow  # noqa: F401  (KeyFrame: doctest)

#: Dataset folder -> the model of its rows. Every shard index has one file in each folder.
DATASETS: dict[str, type[BaseModel]] = {"stgr_cot": CotRow, "stgr_rl": RlRow, "rejects": Reject}

# Exact types only: ``bool`` is a subclass of ``int`` and must not become int64.
_SCALARS: dict[type, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
}


def arrow_type(annotation: Any) -> tuple[pa.DataType, bool]:
    """The Arrow type of one field annotation, and whether it may be null.

    >>> arrow_type(list[float] | None)
    (ListType(list<item: double not null>), True)
    """
    origin = typing.get_origin(annotation)
    if origin is Annotated:  # e.g. Box = Annotated[list[float], Field(min_length=4, ...)]
        return arrow_type(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return _optional_type(annotation)
    if origin is list:
        item_type, item_nullable = arrow_type(typing.get_args(annotation)[0])
        return pa.list_(pa.field("item", item_type, nullable=item_nullable)), False
    if origin is Literal:
        return _literal_type(annotation), False
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return pa.struct(_fields(annotation)), False
        if issubclass(annotation, Enum):
            return _enum_type(annotation), False
        if annotation in _SCALARS:
            return _SCALARS[annotation], False
    raise TypeError(
        f"no Arrow type for {annotation!r}: use str, int, float, bool, an Enum, a list or a "
        "nested model (dict would need a map type, which the Hugging Face viewer cannot show)"
    )


def _optional_type(annotation: Any) -> tuple[pa.DataType, bool]:
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if len(args) != 1:
        raise TypeError(f"no Arrow type for the union {annotation!r}: only `X | None` is supported")
    return arrow_type(args[0])[0], True


def _literal_type(annotation: Any) -> pa.DataType:
    if all(isinstance(value, str) for value in typing.get_args(annotation)):
        return pa.string()
    raise TypeError(f"no Arrow type for {annotation!r}: only string literals are supported")


def _enum_type(enum: type[Enum]) -> pa.DataType:
    # model_dump(mode="json") writes an Enum as its value; only string values are allowed
    # so the column is a plain string that every reader shows as the task's exact spelling.
    if all(isinstance(member.value, str) for member in enum):
        return pa.string()
    raise TypeError(f"no Arrow type for the enum {enum.__name__}: only string values are supported")


def _fields(model: type[BaseModel]) -> list[pa.Field]:
    fields = []
    for name, info in model.model_fields.items():
        data_type, nullable = arrow_type(info.annotation)
        fields.append(pa.field(name, data_type, nullable=nullable))
    return fields


@functools.cache
def schema_for(model: type[BaseModel]) -> pa.Schema:
    """The one Arrow schema of a model's rows, in the model's field order.

    >>> schema_for(CotRow).field("key_items").type  # doctest: +ELLIPSIS
    ListType(list<item: struct<idx: int64 not null, name: string not null, boxes: list<...>)
    """
    return pa.schema(_fields(model))


def rows_to_table(rows: Sequence[BaseModel], model: type[BaseModel]) -> pa.Table:
    """A table of ``rows`` with exactly ``schema_for(model)``, also when ``rows`` is empty.

    >>> rows_to_table([], CotRow).num_rows
    0
    """
    wrong = {type(row).__name__ for row in rows if type(row) is not model}
    if wrong:
        # from_pylist would silently drop unknown keys and null out missing ones.
        raise TypeError(f"rows for {model.__name__} include {sorted(wrong)}")
    records = rows_adapter(model).dump_python(list(rows), mode="json")
    return pa.Table.from_pylist(records, schema=schema_for(model))


@functools.cache
def rows_adapter(model: type[BaseModel]) -> TypeAdapter[list[Any]]:
    """Dumps a list of ``model`` rows in one call, each as its ``model_dump(mode="json")``:
    the same dicts, without a Python call per row (a shard may hold 100,000 rejects)."""
    return TypeAdapter(list[model])  # type: ignore[valid-type]


def table_to_rows(table: pa.Table, model: type[BaseModel]) -> list[BaseModel]:
    """The inverse of ``rows_to_table``: validated models, in the table's order.

    Any table with the model's column names works (a Parquet shard, a DuckDB result).

    >>> table_to_rows(rows_to_table(rows, RlRow), RlRow) == rows  # doctest: +SKIP
    True
    """
    return [model.model_validate(record) for record in table.to_pylist()]
