"""The Piece protocol: piecewise-linear graph nodes, as the collision methods see them.

A piece has one input ``z`` and an output that is linear in ``z`` on each of finitely many
polyhedral *pieces*; a *pattern* (one entry per output unit or window) names the piece. At a
fixed pattern the whole network is affine in the perturbation, which is what the descent and
the exact model work with. A piece says, for a pattern:

* :meth:`Piece.pattern_of`: the pattern of the piece that contains a given input;
* :meth:`Piece.through`: the affine form of its output, given its input's affine form
  ``c + J a`` in the perturbation variables ``a``;
* :meth:`Piece.region`: the linear inequalities ``R a <= h`` that keep the input inside the piece
  (each row tagged with the unit and an auxiliary index, so duals can be read back);
* :meth:`Piece.moves`: from the LP duals of those rows, the neighbouring pattern to try;

and, for the exact mixed-integer model, interval bounds of its output (:meth:`Piece.bounds`)
and a big-M encoding (:meth:`Piece.encode`) whose M come from those bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..ir import Node


@dataclass(frozen=True)
class Rows:
    """Inequalities ``R a <= h`` of one piece for one point. ``unit``/``aux`` identify each row
    (a ReLU row: its unit; a max-pool row: its window and the window entry it compares)."""

    R: object  # dense array or sparse matrix, k x n_vars
    h: np.ndarray
    unit: np.ndarray
    aux: np.ndarray

    @property
    def n(self) -> int:
        return self.h.shape[0]


def rows(R, h, unit, aux=None) -> Rows:
    unit = np.asarray(unit, dtype=np.int64)
    return Rows(R, np.asarray(h, dtype=np.float64), unit,
                np.zeros_like(unit) if aux is None else np.asarray(aux, dtype=np.int64))


@dataclass(frozen=True)
class Piece(Node):
    """Base class of piecewise-linear nodes (one input)."""

    kind: ClassVar[str] = "piece"
    #: the features at a cut that is this piece agree for two points only when both points are
    #: in the same piece of each unit (ReLU): the descent then uses one shared pattern there
    shares_pattern_at_cut: ClassVar[bool] = False

    @property
    def is_piece(self) -> bool:
        return True

    @property
    def n_aux(self) -> int:
        """Largest ``aux`` + 1 of this piece's rows."""
        return 1

    def pattern_of(self, z: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def through(self, pattern: np.ndarray, c: np.ndarray, J):  # pragma: no cover - abstract
        raise NotImplementedError

    def region(self, pattern: np.ndarray, c: np.ndarray, J) -> Rows:  # pragma: no cover - abstract
        raise NotImplementedError

    def moves(self, pattern: np.ndarray, r: Rows, dual: np.ndarray, take: np.ndarray) -> np.ndarray | None:
        """The pattern after the moves the duals suggest, or None when there is none. ``take``
        marks the rows whose duals may be acted on (dual large enough and, unless the method
        is the paper's, the row tight at the current point)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def bounds(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError  # pragma: no cover - abstract

    def encode(self, m, z: list, lo: np.ndarray, hi: np.ndarray, tag: str):
        """Add the big-M encoding of ``out = piece(z)`` to the Pyomo model ``m`` (``z``: input
        expressions, ``lo``/``hi``: their bounds). Returns (output expressions, binaries,
        units fixed because their piece is decided by the bounds)."""
        raise NotImplementedError  # pragma: no cover - abstract
