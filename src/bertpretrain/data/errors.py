"""Errors raised by the data pipeline, each naming the file or argument at fault and what to do."""


class DataError(ValueError):
    """A corpus, split file or option cannot produce pretraining data."""


class DownloadError(RuntimeError):
    """A dataset could not be downloaded or verified from any of its mirrors."""
