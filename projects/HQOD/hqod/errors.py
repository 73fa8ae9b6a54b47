"""The one exception type for bad user input: its message is one line naming the problem and the fix."""


class HQODInputError(ValueError):
    """Bad config, data, weights or CLI input, detected before any long work starts."""
