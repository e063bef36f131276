"""Errors raised by the data pipeline, each naming the file or argument at fault and what to do."""
from ..errors import UserError


class DataError(UserError, ValueError):
    """A corpus, split file or option cannot produce pretraining data."""


class DownloadError(UserError, RuntimeError):
    """A dataset could not be downloaded or verified from any of its mirrors."""
