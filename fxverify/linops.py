"""Linear operators on flat vectors: dense arrays, sparse matrices and monomial maps.

A network's linear maps are kept in the cheapest exact form: a Gemm's weight is dense, a
convolution is a sparse matrix (its non-zeros are the kernel entries, never a dense Toeplitz
matrix), and transposes, broadcasts, batch norms and elementwise constants are *monomial*
(``y[i] = scale[i] * x[src[i]]``). Products keep the sparse form while it stays sparse.

Nothing beyond :data:`MAX_OPERATOR_BYTES` is ever allocated: sizes are computed first, and a
map that would need more is refused with one line naming its size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .errors import ModelError


def address_space_limit() -> int | None:
    """The process's address-space limit in bytes (``ulimit -v``, ``prlimit --as``; the smaller
    of RLIMIT_AS and RLIMIT_DATA), or None when there is none."""
    try:
        import resource
    except ImportError:  # pragma: no cover - non-POSIX
        return None
    limits = []
    for name in ("RLIMIT_AS", "RLIMIT_DATA"):
        which = getattr(resource, name, None)
        if which is None:
            continue
        try:
            soft, _ = resource.getrlimit(which)
        except (ValueError, OSError):  # pragma: no cover
            continue
        if soft != resource.RLIM_INFINITY and soft >= 0:
            limits.append(int(soft))
    return min(limits) if limits else None


#: What the libraries fxverify loads (numpy, scipy, onnxruntime, solvers) occupy of the address
#: space before any model: not available to operators.
LIBRARY_BYTES = 1 << 30

#: No single operator (dense matrix or sparse non-zeros) may need more memory than this: the
#: smaller of 8 GiB, half the machine's physical memory and, under an address-space limit,
#: a quarter of what the limit leaves beside the libraries (an operator is copied while it
#: is built and multiplied).
try:
    _PHYS = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
    _PHYS = 16 << 30
_LIMIT = address_space_limit()
MAX_OPERATOR_BYTES = int(min(8 << 30, _PHYS // 2,
                             max(_LIMIT - LIBRARY_BYTES, 64 << 20) // 4 if _LIMIT is not None else 8 << 30))

#: The agreement check and the descent hold a few samples of every activation tensor in float64
#: at once: a tensor may hold at most this many values (16.8 M with the 8 GiB limit; a
#: 3 x 1024 x 1024 image is 3.1 M). Checked from the shapes, before anything is allocated.
MAX_TENSOR_VALUES = MAX_OPERATOR_BYTES // (8 * 64)

#: A sparse product denser than this is stored dense (when that fits).
DENSE_FRACTION = 0.25


class TooLarge(ModelError):
    """An operator would need more memory than :data:`MAX_OPERATOR_BYTES`."""


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.3g} GiB"


def require_dense(rows: int, cols: int, what: str) -> None:
    """Refuse (before allocating) a dense rows x cols float64 matrix that is too large."""
    need = 8.0 * rows * cols
    if need > MAX_OPERATOR_BYTES:
        raise TooLarge(f"{what} would need a dense {rows:,} x {cols:,} matrix ({_gib(need)}); the limit is "
                       f"{_gib(MAX_OPERATOR_BYTES)}")


def require_values(count: int, what: str) -> None:
    """Refuse (before allocating) a tensor of ``count`` values that is too large to evaluate."""
    if count > MAX_TENSOR_VALUES:
        raise TooLarge(f"{what} has {count:,} values, more than the {MAX_TENSOR_VALUES:,} fxverify can evaluate "
                       f"in the memory it may use ({_gib(MAX_OPERATOR_BYTES)} per operator)")


def require_sparse(nnz: int, rows: int, what: str) -> None:
    need = 12.0 * nnz + 8.0 * rows
    if need > MAX_OPERATOR_BYTES:
        raise TooLarge(f"{what} would need a sparse matrix with {nnz:,} non-zeros ({_gib(need)}); the limit is "
                       f"{_gib(MAX_OPERATOR_BYTES)}")


def is_sparse(A) -> bool:
    return sp.issparse(A)


def nbytes(A) -> int:
    if sp.issparse(A):
        return int(A.data.nbytes + A.indices.nbytes + A.indptr.nbytes)
    return int(np.asarray(A).nbytes)


def to_dense(A) -> np.ndarray:
    return A.toarray() if sp.issparse(A) else np.asarray(A)


def matmul(A, B, what: str = "a product of linear maps"):
    """A @ B for dense/sparse operands; sparse stays sparse unless dense enough (size-checked)."""
    if sp.issparse(A) and sp.issparse(B):
        # an upper bound on the result's non-zeros before computing it
        A, B = A.tocsr(), B.tocsr()
        pattern = sp.csr_matrix((np.ones(A.nnz), A.indices, A.indptr), shape=A.shape)
        per_row = pattern @ np.diff(B.indptr).astype(np.float64)
        est = int(np.minimum(per_row, B.shape[1]).sum())
        require_sparse(est, A.shape[0], what)
        C = (A @ B).tocsr()
        if C.nnz > DENSE_FRACTION * C.shape[0] * C.shape[1] and 8.0 * C.shape[0] * C.shape[1] <= MAX_OPERATOR_BYTES:
            return C.toarray()
        return C
    require_dense(A.shape[0], B.shape[1], what)
    if sp.issparse(A):
        return np.asarray(A @ B)
    if sp.issparse(B):
        return np.asarray((B.T @ A.T).T)
    return A @ B


def apply(A, X: np.ndarray) -> np.ndarray:
    """Rows of X mapped by A: X @ A.T (X is n x in, result n x out)."""
    if sp.issparse(A):
        return np.asarray((A @ X.T).T)
    return X @ A.T


def scale_rows(A, s: np.ndarray):
    """diag(s) @ A."""
    if sp.issparse(A):
        return sp.diags(s) @ A
    return s[:, None] * A


def take_rows(A, idx: np.ndarray):
    return A[idx]


def row_norms(A) -> np.ndarray:
    if sp.issparse(A):
        return np.sqrt(np.asarray(A.multiply(A).sum(axis=1)).ravel())
    return np.sqrt(np.einsum("ij,ij->i", A, A))


def hstack(blocks):
    if any(sp.issparse(b) for b in blocks):
        return sp.hstack([sp.csr_matrix(b) for b in blocks], format="csr")
    return np.hstack(blocks)


def vstack(blocks):
    if any(sp.issparse(b) for b in blocks):
        return sp.vstack([sp.csr_matrix(b) for b in blocks], format="csr")
    return np.vstack(blocks)


# ----------------------------------------------------------------------------------------
# Affine maps under construction (the importer folds chains of linear ONNX ops into one)
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Map:
    """``y = W x + offset`` with ``x`` of length ``in_dim``.

    Monomial form (``W`` is None): ``y[i] = scale[i] * x[src[i]] + offset[i]`` (``src[i] = -1``
    means no dependence on x). Otherwise ``W`` is a dense array or a CSR matrix.
    """

    in_dim: int
    offset: np.ndarray
    W: object = None
    src: np.ndarray | None = None
    scale: np.ndarray | None = None

    @staticmethod
    def monomial(in_dim, src, scale, offset) -> Map:
        src = np.asarray(src, dtype=np.int64)
        scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), src.shape).ravel().copy()
        offset = np.broadcast_to(np.asarray(offset, dtype=np.float64), src.shape).ravel()
        src = src.ravel()
        scale[src < 0] = 0.0
        return Map(in_dim, offset.copy(), src=src, scale=scale)

    @staticmethod
    def identity(d: int) -> Map:
        return Map.monomial(d, np.arange(d), 1.0, 0.0)

    @property
    def out_dim(self) -> int:
        return self.offset.shape[0]

    @property
    def is_identity(self) -> bool:
        return (self.W is None and self.out_dim == self.in_dim and np.array_equal(self.src, np.arange(self.in_dim))
                and np.all(self.scale == 1.0) and not np.any(self.offset))

    def _sparse_monomial(self) -> sp.csr_matrix:
        ok = self.src >= 0
        return sp.csr_matrix((self.scale[ok], (np.nonzero(ok)[0], self.src[ok])), shape=(self.out_dim, self.in_dim))

    def operator(self, what: str = "a linear map"):
        """The map's matrix: dense when it is small or dense, else CSR."""
        if self.W is not None:
            return self.W
        S = self._sparse_monomial()
        if self.out_dim * self.in_dim <= 1 << 16 or S.nnz > DENSE_FRACTION * self.out_dim * self.in_dim:
            require_dense(self.out_dim, self.in_dim, what)
            return S.toarray()
        return S

    def then(self, nxt: Map, what: str = "a product of linear maps") -> Map:
        """The composition ``nxt(self(x))``."""
        if nxt.W is None:  # gather (and scale) the rows of self
            safe = np.where(nxt.src >= 0, nxt.src, 0)
            off = nxt.scale * self.offset[safe] + nxt.offset
            if self.W is None:
                src = np.where(nxt.src >= 0, self.src[safe], -1)
                return Map.monomial(self.in_dim, src, nxt.scale * self.scale[safe], off)
            if sp.issparse(self.W):
                return Map(self.in_dim, off, W=(sp.diags(nxt.scale) @ self.W[safe]).tocsr())
            require_dense(nxt.out_dim, self.in_dim, what)
            return Map(self.in_dim, off, W=nxt.scale[:, None] * self.W[safe])
        off = apply(nxt.W, self.offset[None, :])[0] + nxt.offset
        left = self.W if self.W is not None else self._sparse_monomial()
        return Map(self.in_dim, off, W=matmul(nxt.W, left, what))

    def plus(self, other: Map) -> Map:
        """x -> self(x) + other(x) (same input)."""
        if self.W is None and other.W is None:
            W = self._sparse_monomial() + other._sparse_monomial()
        else:
            a = self.W if self.W is not None else self._sparse_monomial()
            b = other.W if other.W is not None else other._sparse_monomial()
            W = a + b if (sp.issparse(a) and sp.issparse(b)) else to_dense(a) + to_dense(b)
        W = W.tocsr() if sp.issparse(W) else W
        return Map(self.in_dim, self.offset + other.offset, W=W)
