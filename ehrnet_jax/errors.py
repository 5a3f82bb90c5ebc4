"""The one exception type for bad user input (files, fields, variants, flags).

Its message names the file/field and says what was expected; the CLI prints it without a
traceback. It is a ValueError so that library users can catch it as one.
"""


class UserError(ValueError):
  """Bad input from the user; the message says what was wrong and what to do next."""
