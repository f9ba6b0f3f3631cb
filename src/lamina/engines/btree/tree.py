"""B+tree algorithms over decoded nodes: lookup, rank, insert, delete, bulk build, serialize.

The functions are engine-internal and work on a :class:`TreeState` (one tree's root as seen
by one transaction). Reading needs only a ``load(ref) -> Node`` function; writing needs a
:class:`WriteCtx` (the write transaction's page space) that copies clean nodes on write and
records the pages this frees.

Invariants kept by every write (and verified by the checker): keys strictly increasing in a
leaf and across leaves; in a branch, kid i holds keys in ``[keys[i-1], keys[i])``; every leaf
at the same depth; no empty leaf except none at all (an empty tree has no root page); every
node fits its page.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from lamina.engines.btree import format as btree_format
from lamina.engines.btree.page import (
    EMPTY_BRANCH_SIZE,
    EMPTY_LEAF_SIZE,
    Branch,
    Leaf,
    Node,
    Ref,
    Value,
    branch_entry_size,
    encode_branch,
    encode_leaf,
    leaf_entry_size,
    page_hash,
)
from lamina.errors import UsageError

Loader = Callable[[Ref], Node]


class WriteCtx(Protocol):
    """What tree writes need from the write transaction."""

    page_size: int
    txnid: int

    def load(self, ref: Ref) -> Node:
        """The node behind a clean reference (committed or written earlier in this txn)."""

    def own(self, ref: Ref) -> Node:
        """A dirty copy of the node behind ``ref``; its page becomes free (copy-on-write)."""

    def release(self, pgno: int, txnid: int) -> None:
        """The page ``pgno`` written by ``txnid`` is no longer referenced."""

    def free_value(self, value: Value) -> None:
        """A stored value is dropped: free its overflow pages, if any."""

    def store_page(self, pgno: int, page: bytes, node: Node | None) -> None:
        """Keep an encoded page of this txn until commit."""


class TreeState:
    """One tree's root as one transaction sees it.

    ``root`` is None (empty tree), a clean reference ``(pgno, txnid)`` whose hash is
    ``root_hash``, or a dirty node owned by the write transaction. ``version`` increases on
    every change so cursors know to re-seek.
    """

    __slots__ = ("count", "depth", "root", "root_hash", "version")

    def __init__(self, desc: btree_format.RootDesc) -> None:
        self.root: Ref | Node | None = None if desc.pgno == 0 else (desc.pgno, desc.txnid)
        self.root_hash = desc.hash
        self.count = desc.count
        self.depth = desc.depth
        self.version = 0

    def is_dirty(self) -> bool:
        """True when the root is a dirty node (the tree changed in this transaction)."""
        return self.root is not None and type(self.root) is not tuple


def root_node(load: Loader, st: TreeState) -> Node | None:
    """The root node, or None for an empty tree."""
    root = st.root
    if root is None:
        return None
    if type(root) is tuple:
        return load(root)
    assert isinstance(root, (Leaf, Branch))
    return root


def kid_node(load: Loader, node: Branch, i: int) -> Node:
    """Child ``i`` of a branch, loaded if clean."""
    kid = node.kids[i]
    if type(kid) is tuple:
        return load(kid)
    assert isinstance(kid, (Leaf, Branch))
    return kid


# ---------------------------------------------------------------------------- reading
def lookup(load: Loader, st: TreeState, key: bytes) -> Value | None:
    """The stored value for ``key`` (bytes or an OverflowRef), or None."""
    node = root_node(load, st)
    if node is None:
        return None
    while not node.is_leaf:
        assert isinstance(node, Branch)
        kid = node.kids[bisect_right(node.keys, key)]
        node = load(kid) if type(kid) is tuple else kid  # type: ignore[assignment]
    assert isinstance(node, Leaf)
    keys = node.keys
    i = bisect_left(keys, key)
    if i < len(keys) and keys[i] == key:
        return node.vals[i]
    return None


def rank(load: Loader, st: TreeState, key: bytes) -> int:
    """Number of keys strictly less than ``key`` (O(depth · fanout))."""
    node = root_node(load, st)
    r = 0
    while node is not None and not node.is_leaf:
        assert isinstance(node, Branch)
        i = bisect_right(node.keys, key)
        r += sum(node.counts[:i])
        node = kid_node(load, node, i)
    if node is None:
        return 0
    assert isinstance(node, Leaf)
    return r + bisect_left(node.keys, key)


def iter_nodes(load: Loader, st: TreeState) -> Iterator[tuple[Node, int]]:
    """Every node (with its depth, root = 1) in pre-order; for the walks of stat/free."""
    root = root_node(load, st)
    if root is None:
        return
    stack: list[tuple[Node, int]] = [(root, 1)]
    while stack:
        node, d = stack.pop()
        yield node, d
        if not node.is_leaf:
            assert isinstance(node, Branch)
            for i in range(len(node.kids) - 1, -1, -1):
                stack.append((kid_node(load, node, i), d + 1))


# ---------------------------------------------------------------------------- writing
def _own_root(ctx: WriteCtx, st: TreeState) -> Node:
    root = st.root
    assert root is not None
    if type(root) is tuple:
        node = ctx.own(root)
        st.root = node
        return node
    assert isinstance(root, (Leaf, Branch))
    return root


def _own_kid(ctx: WriteCtx, parent: Branch, i: int) -> Node:
    kid = parent.kids[i]
    if type(kid) is tuple:
        node = ctx.own(kid)
        parent.kids[i] = node
        parent.hashes[i] = b""
        return node
    assert isinstance(kid, (Leaf, Branch))
    return kid


def shortest_separator(left: bytes, right: bytes) -> bytes:
    """The shortest prefix ``s`` of ``right`` with ``left < s <= right`` (left < right)."""
    for i in range(1, len(right)):
        s = right[:i]
        if s > left:
            return s
    return right


def _split_leaf(node: Leaf, page_size: int, at_end: bool) -> tuple[Leaf, bytes]:
    keys, vals = node.keys, node.vals
    n = len(keys)
    if at_end:
        m = n - 1  # sequential appends: keep the left leaf full
    else:
        half = (node.size - btree_format.HEADER_SIZE) // 2
        acc = 0
        m = 0
        while m < n - 1:
            acc += leaf_entry_size(keys[m], vals[m])
            m += 1
            if acc >= half:
                break
    rsize = EMPTY_LEAF_SIZE + sum(leaf_entry_size(k, v) for k, v in zip(keys[m:], vals[m:]))
    right = Leaf(keys[m:], vals[m:], rsize)
    del keys[m:]
    del vals[m:]
    node.size = node.size - rsize + EMPTY_LEAF_SIZE
    return right, shortest_separator(keys[-1], right.keys[0])


def _split_branch(node: Branch, page_size: int) -> tuple[Branch, bytes]:
    n = len(node.kids)
    half = node.size // 2
    acc = EMPTY_BRANCH_SIZE
    m = 1
    while m < n - 1:
        nxt = acc + branch_entry_size(node.keys[m - 1])
        if nxt > half:
            break
        acc = nxt
        m += 1
    # left keeps kids[:m] and keys[:m-1]; keys[m-1] moves up; right gets the rest.
    sep = node.keys[m - 1]
    rkeys = node.keys[m:]
    right = Branch(rkeys, node.kids[m:], node.counts[m:], node.hashes[m:],
                   EMPTY_BRANCH_SIZE + sum(branch_entry_size(k) for k in rkeys))
    del node.keys[m - 1:]
    del node.kids[m:]
    del node.counts[m:]
    del node.hashes[m:]
    node.size = EMPTY_BRANCH_SIZE + sum(branch_entry_size(k) for k in node.keys)
    return right, sep


def insert(ctx: WriteCtx, st: TreeState, key: bytes, val: Value) -> bool:
    """Put ``key -> val``; returns True if the key is new. Frees a replaced overflow value."""
    ps = ctx.page_size
    st.version += 1
    if st.root is None:
        st.root = Leaf([key], [val], EMPTY_LEAF_SIZE + leaf_entry_size(key, val))
        st.depth = 1
        st.count = 1
        return True
    node = _own_root(ctx, st)
    path: list[tuple[Branch, int]] = []
    rightmost = True
    while not node.is_leaf:
        assert isinstance(node, Branch)
        i = bisect_right(node.keys, key)
        rightmost = rightmost and i == len(node.kids) - 1
        path.append((node, i))
        node = _own_kid(ctx, node, i)
    assert isinstance(node, Leaf)
    keys = node.keys
    i = bisect_left(keys, key)
    if i < len(keys) and keys[i] == key:
        old = node.vals[i]
        if type(old) is not bytes:
            ctx.free_value(old)
        node.size += leaf_entry_size(key, val) - leaf_entry_size(key, old)
        node.vals[i] = val
        added = False
    else:
        keys.insert(i, key)
        node.vals.insert(i, val)
        node.size += leaf_entry_size(key, val)
        for b, j in path:
            b.counts[j] += 1
        st.count += 1
        added = True
    if node.size > ps:
        _split_up(st, path, node, ps, rightmost and added and i == len(keys) - 1)
    return added


def _split_up(st: TreeState, path: list[tuple[Branch, int]], node: Node, ps: int,
              at_end: bool) -> None:
    while node.size > ps:
        right: Node
        if node.is_leaf:
            assert isinstance(node, Leaf)
            right, sep = _split_leaf(node, ps, at_end)
        else:
            assert isinstance(node, Branch)
            right, sep = _split_branch(node, ps)
        if path:
            parent, i = path.pop()
            parent.kids.insert(i + 1, right)
            parent.keys.insert(i, sep)
            parent.counts[i] = node.count()
            parent.counts.insert(i + 1, right.count())
            parent.hashes.insert(i + 1, b"")
            parent.size += branch_entry_size(sep)
            node = parent
        else:
            st.root = Branch([sep], [node, right], [node.count(), right.count()], [b"", b""],
                             EMPTY_BRANCH_SIZE + branch_entry_size(sep))
            st.depth += 1
            return


def delete(ctx: WriteCtx, st: TreeState, key: bytes) -> bool:
    """Remove ``key``; returns False (changing nothing) if it is absent."""
    if lookup(ctx.load, st, key) is None:
        return False
    st.version += 1
    node = _own_root(ctx, st)
    path: list[tuple[Branch, int]] = []
    while not node.is_leaf:
        assert isinstance(node, Branch)
        i = bisect_right(node.keys, key)
        path.append((node, i))
        node = _own_kid(ctx, node, i)
    assert isinstance(node, Leaf)
    i = bisect_left(node.keys, key)
    old = node.vals[i]
    if type(old) is not bytes:
        ctx.free_value(old)
    node.size -= leaf_entry_size(key, old)
    del node.keys[i]
    del node.vals[i]
    for b, j in path:
        b.counts[j] -= 1
    st.count -= 1
    _rebalance(ctx, st, path, node)
    return True


def _is_empty(node: Node) -> bool:
    return not (node.keys if node.is_leaf else node.kids)  # type: ignore[union-attr]


def _remove_kid(parent: Branch, i: int) -> None:
    n = len(parent.kids)
    if n > 1:
        k = i - 1 if i > 0 else 0
        parent.size -= branch_entry_size(parent.keys[k])
        del parent.keys[k]
    else:
        parent.size -= btree_format.CHILD_SIZE
    del parent.kids[i]
    del parent.counts[i]
    del parent.hashes[i]


def _node_size(ctx: WriteCtx, parent: Branch, j: int) -> int:
    kid = parent.kids[j]
    node = ctx.load(kid) if type(kid) is tuple else kid
    assert isinstance(node, (Leaf, Branch))
    return node.size


def _rebalance(ctx: WriteCtx, st: TreeState, path: list[tuple[Branch, int]], node: Node) -> None:
    ps = ctx.page_size
    low = ps // 4
    while path:
        parent, i = path.pop()
        if _is_empty(node):
            _remove_kid(parent, i)
        elif node.size < low and len(parent.kids) > 1:
            j = i - 1 if i > 0 else i + 1
            a, b = min(i, j), max(i, j)
            sep = parent.keys[a]
            extra = (-btree_format.HEADER_SIZE if node.is_leaf
                     else -btree_format.HEADER_SIZE + 2 + len(sep))
            if node.size + _node_size(ctx, parent, j) + extra <= ps:
                left = _own_kid(ctx, parent, a)
                right = _own_kid(ctx, parent, b)
                if left.is_leaf:
                    assert isinstance(left, Leaf) and isinstance(right, Leaf)
                    left.keys += right.keys
                    left.vals += right.vals
                else:
                    assert isinstance(left, Branch) and isinstance(right, Branch)
                    left.keys += [sep, *right.keys]
                    left.kids += right.kids
                    left.counts += right.counts
                    left.hashes += right.hashes
                left.size += right.size + extra
                parent.counts[a] += parent.counts[b]
                _remove_kid(parent, b)
            else:
                return  # nothing above changes size
        else:
            return
        node = parent
    # At the root.
    while True:
        root = st.root
        if root is None or type(root) is tuple:
            return
        assert isinstance(root, (Leaf, Branch))
        if _is_empty(root):
            st.root = None
            st.depth = 0
            return
        if root.is_leaf or len(root.kids) > 1:  # type: ignore[union-attr]
            return
        assert isinstance(root, Branch)
        st.root = root.kids[0]
        st.root_hash = root.hashes[0]
        st.depth -= 1


def free_tree(ctx: WriteCtx, st: TreeState) -> None:
    """Release every page of a tree (and its overflow values), e.g. on drop."""
    stack: list[Ref | Node] = [] if st.root is None else [st.root]
    while stack:
        item = stack.pop()
        if type(item) is tuple:
            node = ctx.load(item)
            ctx.release(item[0], item[1])
        else:
            assert isinstance(item, (Leaf, Branch))
            node = item
        if node.is_leaf:
            assert isinstance(node, Leaf)
            for v in node.vals:
                if type(v) is not bytes:
                    ctx.free_value(v)
        else:
            assert isinstance(node, Branch)
            stack.extend(node.kids)
    st.root = None
    st.root_hash = btree_format.ZERO_HASH
    st.count = 0
    st.depth = 0
    st.version += 1


def count_dirty(st: TreeState) -> int:
    """Number of dirty nodes (pages this tree still has to write)."""
    root = st.root
    if root is None or type(root) is tuple:
        return 0
    n = 0
    stack: list[Node] = [root]  # type: ignore[list-item]
    while stack:
        node = stack.pop()
        n += 1
        if not node.is_leaf:
            assert isinstance(node, Branch)
            stack.extend(k for k in node.kids if type(k) is not tuple)  # type: ignore[misc]
    return n


def serialize(ctx: WriteCtx, st: TreeState, alloc: Callable[[], int]) -> btree_format.RootDesc:
    """Give every dirty node a page (children first), encode it, and return the new root
    descriptor; afterwards the tree is all clean references."""
    root = st.root
    if root is None:
        return btree_format.EMPTY_ROOT
    if type(root) is not tuple:
        assert isinstance(root, (Leaf, Branch))
        st.root, st.root_hash = _serialize_node(ctx, root, alloc)
    ref = st.root
    assert type(ref) is tuple
    return btree_format.RootDesc(ref[0], st.depth, ref[1], st.count, st.root_hash)


def _serialize_node(ctx: WriteCtx, node: Node, alloc: Callable[[], int]) -> tuple[Ref, bytes]:
    txnid, ps = ctx.txnid, ctx.page_size
    if node.is_leaf:
        assert isinstance(node, Leaf)
        pgno = alloc()
        page = encode_leaf(node, pgno, txnid, ps)
    else:
        assert isinstance(node, Branch)
        kids = node.kids
        for i, kid in enumerate(kids):
            if type(kid) is not tuple:
                assert isinstance(kid, (Leaf, Branch))
                kids[i], node.hashes[i] = _serialize_node(ctx, kid, alloc)
        pgno = alloc()
        page = encode_branch(node.keys, kids, node.counts, node.hashes,  # type: ignore[arg-type]
                             pgno, txnid, ps)
    ctx.store_page(pgno, page, node)
    return (pgno, txnid), page_hash(page)


def bulk_build(ctx: WriteCtx, items: Iterable[tuple[bytes, bytes]], alloc: Callable[[], int],
               make_value: Callable[[bytes, bytes], Value]) -> btree_format.RootDesc:
    """Build a tree bottom-up from strictly increasing ``items``, writing full pages.

    One pass: each leaf is stored (``ctx.store_page``) as soon as it is full, and each
    branch as soon as the next child would not fit it, so the builder holds one leaf and,
    per level, the children of one branch: O(tree height) pages, whatever the item count
    (a streaming :class:`WriteCtx` then holds no page at all). The tree is the same as
    grouping every level greedily: full pages, left to right.

    ``make_value(key, value)`` validates sizes and returns what the leaf stores. Raises
    UsageError on unsorted or duplicate keys. Returns the new root descriptor.
    """
    ps, txnid = ctx.page_size, ctx.txnid
    # Per level above the leaves: the children of the branch being filled, each as
    # (ref, hash, count, separator before it), and that branch's encoded size so far.
    groups: list[list[tuple[Ref, bytes, int, bytes]]] = []
    sizes: list[int] = []
    keys: list[bytes] = []
    vals: list[Value] = []
    size = EMPTY_LEAF_SIZE
    prev_last = b""
    last: bytes | None = None

    def add(level: int, child: tuple[Ref, bytes, int, bytes]) -> None:
        if level == len(groups):
            groups.append([])
            sizes.append(EMPTY_BRANCH_SIZE - btree_format.CHILD_SIZE)
        group = groups[level]
        grow = btree_format.CHILD_SIZE + (2 + len(child[3]) if group else 0)
        if group and sizes[level] + grow > ps:
            full = _flush_branch(ctx, group, alloc)
            groups[level] = group = []
            sizes[level] = EMPTY_BRANCH_SIZE - btree_format.CHILD_SIZE
            grow = btree_format.CHILD_SIZE
            add(level + 1, full)
        group.append(child)
        sizes[level] += grow

    def flush_leaf() -> None:
        nonlocal keys, vals, size, prev_last
        leaf = Leaf(keys, vals, size)
        pgno = alloc()
        page = encode_leaf(leaf, pgno, txnid, ps)
        ctx.store_page(pgno, page, leaf)
        sep = shortest_separator(prev_last, keys[0]) if groups else b""
        add(0, ((pgno, txnid), page_hash(page), len(keys), sep))
        prev_last = keys[-1]
        keys, vals, size = [], [], EMPTY_LEAF_SIZE

    for key, value in items:
        if last is not None and key <= last:
            raise UsageError("bulk_load needs strictly increasing keys")
        v = make_value(key, value)
        last = key
        esize = leaf_entry_size(key, v)
        if size + esize > ps:
            flush_leaf()
        keys.append(key)
        vals.append(v)
        size += esize
    if keys:
        flush_leaf()
    if not groups:
        return btree_format.EMPTY_ROOT
    # Close the right edge bottom-up; the root is the one child left at the top level.
    level = 0
    while level < len(groups) - 1 or len(groups[level]) > 1:
        add(level + 1, _flush_branch(ctx, groups[level], alloc))
        groups[level] = []
        level += 1
    ref, digest, count, _sep = groups[level][0]
    return btree_format.RootDesc(ref[0], level + 1, ref[1], count, digest)


def _flush_branch(ctx: WriteCtx, group: list[tuple[Ref, bytes, int, bytes]],
                  alloc: Callable[[], int]) -> tuple[Ref, bytes, int, bytes]:
    """Encode one branch over ``group`` (children with their preceding separators)."""
    kids = [c[0] for c in group]
    counts = [c[2] for c in group]
    hashes = [c[1] for c in group]
    seps = [c[3] for c in group[1:]]
    node = Branch(seps, list(kids), counts, hashes,
                  EMPTY_BRANCH_SIZE + sum(branch_entry_size(k) for k in seps))
    pgno = alloc()
    page = encode_branch(seps, kids, counts, hashes, pgno, ctx.txnid, ctx.page_size)
    ctx.store_page(pgno, page, node)
    return (pgno, ctx.txnid), page_hash(page), sum(counts), group[0][3]


def iter_items(load: Loader, st: TreeState) -> Iterator[tuple[bytes, Value]]:
    """Every (key, stored value) in key order (a simple walk; cursors are faster to resume)."""
    root = root_node(load, st)
    if root is None:
        return
    stack: list[Node] = [root]
    while stack:
        node = stack.pop()
        if node.is_leaf:
            assert isinstance(node, Leaf)
            yield from zip(node.keys, node.vals)
        else:
            assert isinstance(node, Branch)
            for i in range(len(node.kids) - 1, -1, -1):
                stack.append(kid_node(load, node, i))
