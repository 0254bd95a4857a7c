"""User-facing errors: raised for bad input and printed without a traceback by main.py."""


class UserError(ValueError):
  """Bad input (flag, config field, file, data) that the user can fix.

  The message names what is wrong and what would be valid. ``main.py`` prints it
  as one paragraph and exits non-zero instead of showing a traceback.
  """


def check(condition, message):
  """Raises UserError(message) unless ``condition`` holds."""
  if not condition:
    raise UserError(message)
