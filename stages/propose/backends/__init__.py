"""Proposal backends behind one small interface (see :mod:`stages.propose.backends.base`)."""

from stages.propose.backends.base import BACKENDS, ProposalBackend, ProposalBatch, get_backend

__all__ = ["BACKENDS", "ProposalBackend", "ProposalBatch", "get_backend"]
