"""The one exception a user sees: a problem named together with its fix."""


class Fatal(Exception):
    """Bad input or a failed step. The CLI prints it as one ``FATAL:`` line."""

    code = 1  # the command's exit status

    def __init__(self, problem: str, fix: str = ""):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} ({fix})" if fix else problem)


class UsageError(Fatal):
    """A command line the parser refuses (exit 2, as argparse and getopt users expect)."""

    code = 2
