"""The one base class of the errors a user can cause and fix.

An error of input, settings or the machine's state (a damaged checkpoint, a dataset that cannot be
downloaded, a required compiler that is missing, a job started without its launcher, a diverged loss)
derives from :class:`UserError` besides its usual built-in class (``ValueError``, ``RuntimeError``, ...),
and its message is one paragraph naming the file, argument or setting at fault and the way out. The
``bertpretrain`` command prints such an error as ``error: <message>`` without a traceback; anything
else is a bug and keeps its traceback.

Imports nothing from the rest of the package, so that every package can use it.
"""


class UserError(Exception):
    """An error the user can fix; its message names the file or argument at fault and what to do."""
