"""Tokenizer and parser for the JavaScript expression subset of edge conditions and transforms.

The subset: number, string, boolean, ``null``, array and object literals; identifiers; member
access (``a.b``, ``a[k]``, ``a?.b``); unary ``! - + typeof``; binary arithmetic, relational,
equality and logical operators; ``?:``. Anything else is a :class:`JSSyntaxError`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final, NamedTuple

from flowcraft_puller.engine.jsvalues import UNDEFINED, WHITESPACE, normalize_number, to_string

MAX_DEPTH: Final = 100
"""The deepest nesting of brackets, operators and operands a parsed expression may have."""


class JSSyntaxError(Exception):
    """An expression outside the supported subset; the message is a one-line reason."""


def too_deep() -> JSSyntaxError:
    """The error for an expression nested deeper than :data:`MAX_DEPTH`."""
    return JSSyntaxError(f"expression is nested more than {MAX_DEPTH} levels deep")


@dataclass(frozen=True, slots=True)
class Literal:
    value: object


@dataclass(frozen=True, slots=True)
class Identifier:
    name: str


@dataclass(frozen=True, slots=True)
class ArrayLiteral:
    elements: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class ObjectLiteral:
    entries: tuple[tuple[str, Node], ...]


@dataclass(frozen=True, slots=True)
class Member:
    """``obj.key`` (key is a string :class:`Literal`) or ``obj[key]``; ``optional`` for ``?.``."""

    obj: Node
    key: Node
    optional: bool


@dataclass(frozen=True, slots=True)
class OptionalChain:
    """A member chain containing ``?.``: a nullish base short-circuits the whole chain."""

    expression: Node


@dataclass(frozen=True, slots=True)
class Unary:
    op: str
    operand: Node


@dataclass(frozen=True, slots=True)
class Binary:
    op: str
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class Conditional:
    test: Node
    consequent: Node
    alternate: Node


Node = (
    Literal
    | Identifier
    | ArrayLiteral
    | ObjectLiteral
    | Member
    | OptionalChain
    | Unary
    | Binary
    | Conditional
)


class Token(NamedTuple):
    kind: str
    """``number``, ``string``, ``name``, ``punct`` or ``end``."""
    text: str
    value: object
    pos: int


_PUNCTUATORS: Final = frozenset(
    {"===", "!==", "==", "!=", "<=", ">=", "&&", "||", "??", "?.", "++", "--"}
    | set("<>+-*/%!?:()[]{},.")
)
_NUMBER: Final = re.compile(
    r"0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+"
    r"|(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
)
_DIGITS: Final = frozenset("0123456789")
_RADIX: Final = {"x": 16, "o": 8, "b": 2}
_ESCAPES: Final = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v"}
_LINE_CONTINUATIONS: Final = ("\r\n", "\n", "\r", "\u2028", "\u2029")
_HEX4: Final = re.compile(r"[0-9a-fA-F]{4}")
_HEX2: Final = re.compile(r"[0-9a-fA-F]{2}")
_BRACED_HEX: Final = re.compile(r"\{([0-9a-fA-F]+)\}")
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_RESERVED: Final = frozenset(
    {"break", "case", "catch", "class", "const", "continue", "debugger", "default", "delete"}
    | {"do", "else", "enum", "export", "extends", "false", "finally", "for", "function", "if"}
    | {"import", "in", "instanceof", "new", "null", "return", "super", "switch", "this"}
    | {"throw", "true", "try", "typeof", "var", "void", "while", "with"}
)
_PRECEDENCE: Final = {
    **dict.fromkeys(["??", "||"], 1),
    "&&": 2,
    **dict.fromkeys(["==", "!=", "===", "!=="], 3),
    **dict.fromkeys(["<", "<=", ">", ">="], 4),
    **dict.fromkeys(["+", "-"], 5),
    **dict.fromkeys(["*", "/", "%"], 6),
}
_KEYWORD_LITERALS: Final[dict[str, object]] = {"true": True, "false": False, "null": None}
_PREFIX_OPERATORS: Final = frozenset({"!", "-", "+", "typeof"})


def parse(source: str) -> Node:
    """Parse ``source`` as a single expression of the subset; raises :class:`JSSyntaxError`."""
    return _Parser(source).parse()


def _location(source: str, pos: int) -> str:
    line = source.count("\n", 0, pos) + 1
    column = pos - (source.rfind("\n", 0, pos) + 1) + 1
    return f"column {column}" if line == 1 else f"line {line}, column {column}"


def _error(source: str, pos: int, reason: str) -> JSSyntaxError:
    return JSSyntaxError(f"{reason} at {_location(source, pos)}")


def _is_identifier_start(char: str) -> bool:
    return char == "$" or char.isidentifier()


def _is_identifier_part(char: str) -> bool:
    return char == "$" or ("_" + char).isidentifier()


def tokenize(source: str) -> list[Token]:
    """Split ``source`` into tokens ending with an ``end`` token; comments are skipped."""
    tokens: list[Token] = []
    pos, size = 0, len(source)
    while True:
        pos = _skip_blank(source, pos)
        if pos >= size:
            tokens.append(Token("end", "", None, size))
            return tokens
        char = source[pos]
        if number := _NUMBER.match(source, pos):
            token = _read_number(source, number)
        elif char in "'\"":
            token = _read_string(source, pos)
        elif _is_identifier_start(char):
            end = pos + 1
            while end < size and _is_identifier_part(source[end]):
                end += 1
            token = Token("name", source[pos:end], None, pos)
        else:
            token = _read_punctuator(source, pos)
        tokens.append(token)
        pos += len(token.text)


def _skip_blank(source: str, pos: int) -> int:
    while pos < len(source):
        if source[pos] in WHITESPACE:
            pos += 1
        elif source.startswith("//", pos):
            ends = [source.find(t, pos) for t in "\n\r\u2028\u2029"]
            pos = min((e for e in ends if e >= 0), default=len(source))
        elif source.startswith("/*", pos):
            end = source.find("*/", pos + 2)
            if end < 0:
                raise _error(source, pos, "unterminated comment")
            pos = end + 2
        else:
            break
    return pos


def _read_punctuator(source: str, pos: int) -> Token:
    for width in (3, 2, 1):
        text = source[pos : pos + width]
        if text == "?." and source[pos + 2 : pos + 3] in _DIGITS:
            continue
        if len(text) == width and text in _PUNCTUATORS:
            return Token("punct", text, None, pos)
    raise _error(source, pos, f"unexpected character {source[pos]!r}")


def _read_number(source: str, match: re.Match[str]) -> Token:
    text, pos, end = match.group(), match.start(), match.end()
    after = source[end : end + 1]
    if after and (after.isdigit() or _is_identifier_start(after)):
        raise _error(source, pos, f"invalid number {source[pos : end + 1]!r}")
    return Token("number", text, _number_value(text), pos)


def _number_value(text: str) -> int | float:
    radix = _RADIX.get(text[1:2].lower()) if text[:1] == "0" else None
    if radix is not None:
        return _exact_integer(int(text[2:], radix))
    if text.isdigit():
        return _exact_integer(int(text))
    return normalize_number(float(text))


def _exact_integer(value: int) -> int | float:
    """A literal integer as JavaScript holds it: exact up to 2**53, else the nearest double."""
    if value <= 2**53:
        return value
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _read_string(source: str, start: int) -> Token:
    quote = source[start]
    parts: list[str] = []
    pos = start + 1
    while True:
        char = source[pos : pos + 1]
        if char in ("", "\n", "\r"):
            raise _error(source, start, "unterminated string literal")
        if char == quote:
            break
        if char == "\\":
            text, pos = _read_escape(source, pos + 1)
            parts.append(text)
        else:
            parts.append(char)
            pos += 1
    value = "".join(parts)
    if _SURROGATE.search(value):
        value = value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    return Token("string", source[start : pos + 1], value, start)


def _read_escape(source: str, pos: int) -> tuple[str, int]:
    """Decode the escape sequence after a backslash at ``pos``: its text and the next position."""
    char = source[pos : pos + 1]
    if char == "":
        raise _error(source, pos - 1, "unterminated string literal")
    if char in _ESCAPES:
        return _ESCAPES[char], pos + 1
    if char == "0" and source[pos + 1 : pos + 2] not in _DIGITS:
        return "\0", pos + 1
    if char in "123456789":
        raise _error(source, pos - 1, f"octal escape sequence '\\{char}' is not supported")
    if char == "x" and _HEX2.match(source, pos + 1):
        return chr(int(source[pos + 1 : pos + 3], 16)), pos + 3
    if char == "u" and _HEX4.match(source, pos + 1):
        return chr(int(source[pos + 1 : pos + 5], 16)), pos + 5
    braced = _BRACED_HEX.match(source, pos + 1) if char == "u" else None
    if braced and int(braced.group(1), 16) <= 0x10FFFF:
        return chr(int(braced.group(1), 16)), braced.end()
    if char in "xu":
        raise _error(source, pos - 1, f"invalid escape sequence '\\{char}'")
    for terminator in _LINE_CONTINUATIONS:
        if source.startswith(terminator, pos):
            return "", pos + len(terminator)
    return char, pos + 1


class _Parser:
    """Precedence climbing over binary operators, recursive descent for everything else."""

    def __init__(self, source: str) -> None:
        self._source = source
        self._tokens = tokenize(source)
        self._index = 0
        self._depth = 0

    def parse(self) -> Node:
        node = self._conditional()
        token = self._peek()
        if token.kind != "end":
            raise self._unexpected(token)
        return node

    def _peek(self) -> Token:
        return self._tokens[self._index]

    def _advance(self) -> Token:
        token = self._tokens[self._index]
        if token.kind != "end":
            self._index += 1
        return token

    def _at(self, text: str) -> bool:
        token = self._tokens[self._index]
        return token.kind == "punct" and token.text == text

    def _accept(self, text: str) -> bool:
        if self._at(text):
            self._index += 1
            return True
        return False

    def _expect(self, text: str) -> None:
        if not self._accept(text):
            raise self._unexpected(self._peek())

    def _unexpected(self, token: Token, note: str = "") -> JSSyntaxError:
        what = "end of expression" if token.kind == "end" else f"token '{token.text}'"
        error = _error(self._source, token.pos, f"unexpected {what}")
        return JSSyntaxError(f"{error} ({note})") if note else error

    def _conditional(self) -> Node:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise too_deep()
        node, _ = self._binary(1)
        if self._accept("?"):
            consequent = self._conditional()
            self._expect(":")
            node = Conditional(node, consequent, self._conditional())
        self._depth -= 1
        return node

    def _binary(self, min_precedence: int) -> tuple[Node, str | None]:
        """Operators binding at least ``min_precedence``, and the unparenthesized root operator."""
        left: Node = self._unary()
        left_op: str | None = None
        while True:
            token = self._peek()
            precedence = _PRECEDENCE.get(token.text) if token.kind == "punct" else None
            if precedence is None or precedence < min_precedence:
                return left, left_op
            self._advance()
            right, right_op = self._binary(precedence + 1)
            operators = {token.text, left_op, right_op}
            if "??" in operators and ("||" in operators or "&&" in operators):
                raise _error(
                    self._source, token.pos, "cannot mix '??' with '||' or '&&' without parentheses"
                )
            left, left_op = Binary(token.text, left, right), token.text

    def _unary(self) -> Node:
        operators: list[str] = []
        while (token := self._peek()).text in _PREFIX_OPERATORS and token.kind in ("punct", "name"):
            operators.append(self._advance().text)
        node = self._postfix()
        for op in reversed(operators):
            node = Unary(op, node)
        return node

    def _postfix(self) -> Node:
        node = self._primary()
        optional = False
        while True:
            if self._accept("."):
                node = Member(node, Literal(self._property_name()), optional=False)
            elif self._accept("?."):
                optional = True
                if self._accept("["):
                    node = Member(node, self._bracketed_key(), optional=True)
                elif self._at("("):
                    raise self._unexpected(self._peek(), "function calls are not supported")
                else:
                    node = Member(node, Literal(self._property_name()), optional=True)
            elif self._accept("["):
                node = Member(node, self._bracketed_key(), optional=False)
            elif self._at("("):
                raise self._unexpected(self._peek(), "function calls are not supported")
            else:
                return OptionalChain(node) if optional else node

    def _bracketed_key(self) -> Node:
        key = self._conditional()
        self._expect("]")
        return key

    def _property_name(self) -> str:
        token = self._advance()
        if token.kind != "name":
            raise self._unexpected(token)
        return token.text

    def _primary(self) -> Node:
        token = self._advance()
        if token.kind in ("number", "string"):
            return Literal(token.value)
        if token.kind == "name":
            if token.text in _KEYWORD_LITERALS:
                return Literal(_KEYWORD_LITERALS[token.text])
            return self._name(token)
        if token.text == "(" and token.kind == "punct":
            node = self._conditional()
            self._expect(")")
            return node
        if token.text == "[" and token.kind == "punct":
            return self._array()
        if token.text == "{" and token.kind == "punct":
            return self._object()
        raise self._unexpected(token)

    def _name(self, token: Token) -> Identifier:
        if token.text in _RESERVED:
            raise _error(self._source, token.pos, f"unsupported keyword '{token.text}'")
        return Identifier(token.text)

    def _array(self) -> ArrayLiteral:
        elements: list[Node] = []
        while not self._accept("]"):
            if self._accept(","):
                elements.append(Literal(UNDEFINED))
                continue
            elements.append(self._conditional())
            if not self._accept(","):
                self._expect("]")
                break
        return ArrayLiteral(tuple(elements))

    def _object(self) -> ObjectLiteral:
        entries: list[tuple[str, Node]] = []
        while not self._accept("}"):
            token = self._advance()
            if token.kind == "name" and (self._at(",") or self._at("}")):
                entries.append((token.text, self._name(token)))
            elif token.kind in ("name", "string", "number"):
                key = token.text if token.kind == "name" else to_string(token.value)
                if key == "__proto__":
                    raise _error(self._source, token.pos, "'__proto__' keys are not supported")
                self._expect(":")
                entries.append((key, self._conditional()))
            else:
                raise self._unexpected(token)
            if not self._accept(","):
                self._expect("}")
                break
        return ObjectLiteral(tuple(entries))
