"""User-facing errors: raised before expensive work starts, printed as one line by the entry points."""


class ASDTUserError(ValueError):
    """A bad configuration or input that the user can fix; the message says what and how."""


class DatasetError(ASDTUserError):
    """A dataset root, list or sample that is missing or malformed."""
