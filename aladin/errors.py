"""Errors that stages report to the user as one clear line and a non-zero exit."""


class AladinError(Exception):
    """Base class: bad input the user can fix (file, field or parameter named in the message)."""


class ConfigError(AladinError):
    """A parameter in params.yaml is missing, unknown or out of range."""


class DataError(AladinError):
    """An input file is missing, corrupt or inconsistent."""
