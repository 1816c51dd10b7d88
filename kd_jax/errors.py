"""The one error a user sees as a line, not a traceback (a leaf: imports
nothing of kd_jax, so every layer may raise it)."""


class UserError(ValueError):
  """Bad input from the user: reported as one line, never as a traceback."""
