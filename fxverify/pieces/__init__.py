"""Piecewise-linear nodes (see :mod:`fxverify.pieces.base` for the protocol they share)."""

from .base import Piece, Rows
from .maxpool import MaxPool
from .relu import Relu

__all__ = ["Piece", "Rows", "Relu", "MaxPool"]
