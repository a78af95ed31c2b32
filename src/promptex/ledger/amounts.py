"""Money columns: exact integers of any size, with their arithmetic done in SQL.

PostgreSQL stores them as NUMERIC(78, 0) (uint256 fits) and computes natively.
SQLite's integers end at 2**63 − 1 — about 9.2 whole 18-decimal tokens — and its
NUMERIC turns larger values into floating point, so on SQLite an amount is a
canonical decimal TEXT and the arithmetic is three SQL functions registered on every
connection (`px_add`, `px_sub`, `px_ge`). Statements are written once with `add`,
`sub` and `ge` and compile to either form, so a conditional UPDATE stays one
statement on both databases.

`non_negative` is the CHECK constraint that keeps an amount column at or above zero on
both: `col >= 0` on PostgreSQL; on SQLite, where the canonical text of a negative
amount — and only of a negative one — starts with a minus sign, `substr(col, 1, 1) <> '-'`
(comparing the text with 0 would compare strings, and the SQL functions above may not
be registered on every connection that writes, e.g. the sqlite3 shell).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, CheckConstraint, ColumnElement, Numeric, Text, literal, literal_column
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator, TypeEngine

AMOUNT_DIGITS = 78


class Amount(TypeDecorator[int]):
    """An int of any size in the asset's smallest unit."""

    impl = Numeric(AMOUNT_DIGITS, 0)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(Text())
        return dialect.type_descriptor(Numeric(AMOUNT_DIGITS, 0))

    def process_bind_param(self, value: int | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if type(value) is not int:
            raise TypeError(f"an amount must be an int, not {type(value).__name__}")
        return str(value) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        return None if value is None else int(value)


Operand = ColumnElement[Any] | int


def _sql(value: Operand) -> ColumnElement[Any]:
    return literal(value, Amount()) if isinstance(value, int) else value


class _AmountOp(FunctionElement[int]):
    type = Amount()
    inherit_cache = True


class _Add(_AmountOp):
    name = "px_add"
    inherit_cache = True


class _Sub(_AmountOp):
    name = "px_sub"
    inherit_cache = True


class _Ge(FunctionElement[bool]):
    name = "px_ge"
    type = Boolean()
    inherit_cache = True


def add(left: Operand, right: Operand) -> ColumnElement[int]:
    return _Add(_sql(left), _sql(right))


def sub(left: Operand, right: Operand) -> ColumnElement[int]:
    return _Sub(_sql(left), _sql(right))


def ge(left: Operand, right: Operand) -> ColumnElement[bool]:
    return _Ge(_sql(left), _sql(right))


class _NonNegative(FunctionElement[bool]):
    name = "px_non_negative"
    type = Boolean()
    inherit_cache = True


def is_non_negative(column: str) -> ColumnElement[bool]:
    """`column` ≥ 0 for an `Amount` column, as either database can check it (see above)."""
    return _NonNegative(literal_column(column))


def non_negative(column: str) -> CheckConstraint:
    """CHECK (`column` ≥ 0), named `<column>_non_negative` (the naming convention makes
    it `ck_<table>_<column>_non_negative`)."""
    return CheckConstraint(is_non_negative(column), name=f"{column}_non_negative")


def _operands(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> tuple[str, str]:
    left, right = element.clauses
    return compiler.process(left, **kw), compiler.process(right, **kw)


@compiles(_Add)
def _add_native(element: _Add, compiler: SQLCompiler, **kw: Any) -> str:
    left, right = _operands(element, compiler, **kw)
    return f"({left} + {right})"


@compiles(_Sub)
def _sub_native(element: _Sub, compiler: SQLCompiler, **kw: Any) -> str:
    left, right = _operands(element, compiler, **kw)
    return f"({left} - {right})"


@compiles(_Ge)
def _ge_native(element: _Ge, compiler: SQLCompiler, **kw: Any) -> str:
    left, right = _operands(element, compiler, **kw)
    return f"({left} >= {right})"


@compiles(_NonNegative)
def _non_negative_native(element: _NonNegative, compiler: SQLCompiler, **kw: Any) -> str:
    (column,) = element.clauses
    return f"{compiler.process(column, **kw)} >= 0"


@compiles(_NonNegative, "sqlite")
def _non_negative_sqlite(element: _NonNegative, compiler: SQLCompiler, **kw: Any) -> str:
    (column,) = element.clauses
    return f"substr({compiler.process(column, **kw)}, 1, 1) <> '-'"


@compiles(_Add, "sqlite")
@compiles(_Sub, "sqlite")
@compiles(_Ge, "sqlite")
def _sqlite_function(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> str:
    left, right = _operands(element, compiler, **kw)
    return f"{element.name}({left}, {right})"


# ─── SQLite functions ────────────────────────────────────────────────────────


def _px_add(left: str | int | None, right: str | int | None) -> str | None:
    return None if left is None or right is None else str(int(left) + int(right))


def _px_sub(left: str | int | None, right: str | int | None) -> str | None:
    return None if left is None or right is None else str(int(left) - int(right))


def _px_ge(left: str | int | None, right: str | int | None) -> int | None:
    return None if left is None or right is None else int(int(left) >= int(right))


def register_sqlite_functions(dbapi_connection: Any) -> None:
    """Make `px_add`, `px_sub` and `px_ge` available on one sqlite3 connection."""
    for name, fn in (("px_add", _px_add), ("px_sub", _px_sub), ("px_ge", _px_ge)):
        dbapi_connection.create_function(name, 2, fn, deterministic=True)
