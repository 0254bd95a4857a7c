"""User-facing errors: raised for bad input and printed without a traceback by main.py."""

# Exit status of a run stopped by SIGTERM after saving a checkpoint (EX_TEMPFAIL): the
# job was asked to stop; rerunning the same command resumes exactly where it stopped.
PREEMPTED_EXIT_STATUS = 75


class UserError(ValueError):
  """Bad input (flag, config field, file, data) that the user can fix.

  The message names what is wrong and what would be valid. ``main.py`` prints it
  as one paragraph and exits non-zero instead of showing a traceback.
  """


class Preempted(Exception):
  """SIGTERM arrived; the run saved a checkpoint at ``step`` and stopped (resumable)."""

  def __init__(self, step, checkpoint, finished=False):
    if finished:  # The signal came after the last loop boundary: the run completed.
      message = (f"stopped by SIGTERM after the run finished at step {step} ({checkpoint} "
                 "written). Rerun the same command to continue with what follows it.")
    else:
      message = (f"stopped by SIGTERM at step {step}; checkpoint {checkpoint} saved. Rerun "
                 "the same command to resume from it.")
    super().__init__(message)
    self.step, self.checkpoint = step, checkpoint
