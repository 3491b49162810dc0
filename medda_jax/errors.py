"""Errors a user can cause. `train.py` turns them into one message and a non-zero exit."""


class MeddaError(Exception):
  """Base class: the message is shown to the user as is, without a traceback."""

  exit_code = 2


class ConfigError(MeddaError):
  """A config field is unknown, of the wrong type or out of range."""


class DataError(MeddaError):
  """Input data is missing, unreadable or not in the published layout."""


class NonFiniteLossError(MeddaError):
  """Training produced a NaN or Inf; the last good checkpoint is kept."""

  exit_code = 3
