"""Cursors: ordered, bidirectional positions in one table of one transaction.

A cursor keeps the path from the root to its leaf. In a write transaction the tree can
change under a cursor; each tree carries a version number, and a cursor whose version is
stale re-seeks to its current key before moving, so it never reads a detached node.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from lamina.engines.btree import tree
from lamina.engines.btree.page import Branch, Leaf, Node, OverflowRef, Ref
from lamina.errors import UsageError

if TYPE_CHECKING:
    from types import TracebackType


def bytes_arg(obj: object, what: str, table: str | None = None) -> bytes:
    """``obj`` as ``bytes``: the one rule for every key, value, bound and prefix the btree
    API takes. Bytes-like objects (``bytes``, ``bytearray``, ``memoryview``) are copied to
    ``bytes``; anything else, ``str`` included, raises UsageError naming the argument
    ``what`` (keys and values are bytes; text must be encoded by the caller)."""
    if isinstance(obj, bytes | bytearray | memoryview):
        return bytes(obj)
    where = "" if table is None else f" (table {table!r})"
    hint = "; encode text first, e.g. s.encode()" if isinstance(obj, str) else ""
    raise UsageError(f"{what} must be bytes, not {type(obj).__name__}{where}{hint}")


class CursorTxn(Protocol):
    """What a cursor uses of its transaction (:class:`~lamina.engines.btree.txn.ReadTxn`
    and ``WriteTxn`` provide it): the node loader, the overflow value reader and the
    "still open" check (TransactionClosedError)."""

    @property
    def _load(self) -> Callable[[Ref], Node]: ...

    def _check_open(self) -> None: ...

    def _read_value(self, ref: OverflowRef) -> bytes: ...


class CursorTable(Protocol):
    """What a cursor uses of its table (:class:`~lamina.engines.btree.txn.Table` provides
    it): the transaction and the tree's state (root, version)."""

    @property
    def _txn(self) -> CursorTxn: ...

    @property
    def _st(self) -> tree.TreeState: ...


class Cursor:
    """A position in a table: use :meth:`first`, :meth:`last` or :meth:`seek` to place it.

    ``next()`` on an unpositioned cursor behaves as ``first()``, ``prev()`` as ``last()``.
    Movement methods return True when the cursor rests on an entry (``valid``). Reading
    ``key()``/``value()`` on an unpositioned cursor raises UsageError; any use after the
    transaction ended raises TransactionClosedError. Not thread-safe.
    """

    __slots__ = ("_i", "_leaf", "_stack", "_table", "_version", "valid")

    def __init__(self, table: CursorTable) -> None:
        self._table = table
        self._stack: list[tuple[Branch, int]] = []
        self._leaf: Leaf | None = None
        self._i = 0
        self._version = -1
        self.valid = False

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Forget the position (the cursor holds no resources)."""
        self._stack = []
        self._leaf = None
        self.valid = False

    # ---------------------------------------------------------------- placement
    def _root(self) -> Node | None:
        t = self._table
        t._txn._check_open()
        self._version = t._st.version
        self._stack = []
        return tree.root_node(t._txn._load, t._st)

    def _down(self, node: Node, leftmost: bool) -> bool:
        load = self._table._txn._load
        while not node.is_leaf:
            assert isinstance(node, Branch)
            i = 0 if leftmost else len(node.kids) - 1
            self._stack.append((node, i))
            node = tree.kid_node(load, node, i)
        assert isinstance(node, Leaf)
        self._leaf = node
        self._i = 0 if leftmost else len(node.keys) - 1
        self.valid = True
        return True

    def first(self) -> bool:
        """Move to the smallest key; False if the table is empty."""
        root = self._root()
        if root is None:
            self.valid = False
            return False
        return self._down(root, True)

    def last(self) -> bool:
        """Move to the largest key; False if the table is empty."""
        root = self._root()
        if root is None:
            self.valid = False
            return False
        return self._down(root, False)

    def seek(self, key: bytes) -> bool:
        """Move to the first key >= ``key``; False (unpositioned) if there is none.
        UsageError if ``key`` is not bytes-like (:func:`bytes_arg`)."""
        if type(key) is not bytes:
            key = bytes_arg(key, "key")
        node = self._root()
        if node is None:
            self.valid = False
            return False
        load = self._table._txn._load
        while not node.is_leaf:
            assert isinstance(node, Branch)
            i = bisect_right(node.keys, key)
            self._stack.append((node, i))
            node = tree.kid_node(load, node, i)
        assert isinstance(node, Leaf)
        self._leaf = node
        self._i = bisect_left(node.keys, key)
        self.valid = True
        if self._i >= len(node.keys):
            return self._next_leaf()
        return True

    def _next_leaf(self) -> bool:
        stack = self._stack
        load = self._table._txn._load
        while stack:
            b, j = stack[-1]
            if j + 1 < len(b.kids):
                stack[-1] = (b, j + 1)
                return self._down(tree.kid_node(load, b, j + 1), True)
            stack.pop()
        self.valid = False
        self._leaf = None
        return False

    def _prev_leaf(self) -> bool:
        stack = self._stack
        load = self._table._txn._load
        while stack:
            b, j = stack[-1]
            if j > 0:
                stack[-1] = (b, j - 1)
                return self._down(tree.kid_node(load, b, j - 1), False)
            stack.pop()
        self.valid = False
        self._leaf = None
        return False

    # ---------------------------------------------------------------- movement
    def next(self) -> bool:
        """Move to the next key; False (unpositioned) past the last one."""
        if not self.valid:
            return self.first()
        t = self._table
        t._txn._check_open()
        if self._version != t._st.version:
            cur = self.key()
            if not self.seek(cur):
                return False
            if self.key() != cur:
                return True  # cur was deleted: the first key after it is already here
        self._i += 1
        assert self._leaf is not None
        if self._i < len(self._leaf.keys):
            return True
        return self._next_leaf()

    def prev(self) -> bool:
        """Move to the previous key; False (unpositioned) before the first one."""
        if not self.valid:
            return self.last()
        t = self._table
        t._txn._check_open()
        if self._version != t._st.version:
            cur = self.key()
            if not self.seek(cur):
                return self.last()
        self._i -= 1
        if self._i >= 0:
            return True
        return self._prev_leaf()

    # ---------------------------------------------------------------- reading
    def key(self) -> bytes:
        """The current key; UsageError if unpositioned."""
        if not self.valid or self._leaf is None:
            raise UsageError("cursor is not positioned on an entry")
        return self._leaf.keys[self._i]

    def value(self) -> bytes:
        """The current value; UsageError if unpositioned."""
        if not self.valid or self._leaf is None:
            raise UsageError("cursor is not positioned on an entry")
        self._table._txn._check_open()
        v = self._leaf.vals[self._i]
        if isinstance(v, OverflowRef):
            return self._table._txn._read_value(v)
        return v

    def item(self) -> tuple[bytes, bytes]:
        """(key, value) of the current entry."""
        return self.key(), self.value()
